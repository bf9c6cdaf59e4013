"""Question/answer examples for detection: user files (JSONL, CSV, Parquet) and built-in offline sources.

An example is (question, answer, label, group): label 1 = correct/true, 0 = hallucinated/false;
group (default: the question) is the unit every split keeps whole, so that no question is seen in
both training and test. Exact duplicate rows are dropped on loading and counted (notes["duplicates_dropped"]). Built-in sources `sae-probes:<name>` read the datasets shipped in the
`sae-probes` 0.4.2 wheel (`make assets` extracts them under .cache/assets/sae_probes/), each a
zstd-compressed CSV of prompts "Q. ...\\nA. ..." that is split back into question and answer.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ghosttrack.errors import GhostTrackError

REQUIRED_COLUMNS = ("question", "answer", "label")
BUILTIN_PREFIX = "sae-probes:"
SAE_PROBES_DIR = Path("sae_probes") / "data" / "cleaned_data"


@dataclass(frozen=True)
class Examples:
    """Parallel columns of a detection dataset; `groups` are integer codes of `group_names`."""

    questions: list[str]
    answers: list[str]
    labels: np.ndarray  # (N,) int64, 0 or 1
    groups: np.ndarray  # (N,) int64 codes into group_names
    group_names: list[str]
    source: str
    notes: dict = field(default_factory=dict)  # what loading dropped or changed, for the report

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def fingerprint(self) -> str:
        """A hash of the content (not the file name): the feature cache is keyed on it."""
        digest = hashlib.sha256()
        for question, answer, label, group in zip(self.questions, self.answers, self.labels, self.groups):
            digest.update(f"{question}\x1f{answer}\x1f{int(label)}\x1f{self.group_names[group]}\x1e".encode())
        return digest.hexdigest()[:16]

    def subset(self, rows: np.ndarray, note: str | None = None) -> "Examples":
        """The examples at `rows` (group codes renumbered)."""
        rows = np.asarray(rows)
        names, codes = np.unique(np.asarray(self.group_names, dtype=object)[self.groups[rows]], return_inverse=True)
        notes = {**self.notes, **({"subsample": note} if note else {})}
        return Examples([self.questions[i] for i in rows], [self.answers[i] for i in rows], self.labels[rows],
                        codes.astype(np.int64), [str(n) for n in names], self.source, notes)


def _from_frame(frame: pd.DataFrame, source: str, notes: dict | None = None) -> Examples:
    """Validate columns and labels of a table and turn it into Examples (one-line errors)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise GhostTrackError(f"{source} lacks column(s) {', '.join(missing)} (it has: "
                              f"{', '.join(map(str, frame.columns)) or 'none'}); detection data needs "
                              f"{', '.join(REQUIRED_COLUMNS)} and optionally group")
    if len(frame) == 0:
        raise GhostTrackError(f"{source} has no rows; pass a file with question, answer, label rows")
    for column in ("question", "answer"):
        bad = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if bad.any():
            raise GhostTrackError(f"{source} row {int(np.flatnonzero(bad.to_numpy())[0])} has an empty {column}; "
                                  f"every example needs a non-empty question and answer")
    labels = frame["label"]
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    numeric = pd.to_numeric(labels, errors="coerce")
    if numeric.isna().any() or not numeric.isin([0, 1]).all():
        bad = labels[numeric.isna() | ~numeric.isin([0, 1])].iloc[0]
        raise GhostTrackError(f"{source} has label '{bad}'; labels must be 1 (correct/true) or 0 (hallucinated/false)")
    groups = frame["group"] if "group" in frame.columns else frame["question"]
    if groups.isna().any():
        raise GhostTrackError(f"{source} has an empty group; fill the group column or drop it (default: the question)")
    # Exact copies (same question, answer, label and group) would count one example several times
    # in every AUROC and every fit: the first of each is kept, the rest counted in the notes.
    key = pd.DataFrame({"q": frame["question"].astype(str), "a": frame["answer"].astype(str),
                        "y": numeric.astype(np.int64), "g": groups.astype(str)})
    keep = ~key.duplicated(keep="first").to_numpy()
    notes = {**(notes or {}), "duplicates_dropped": int((~keep).sum())}
    frame, numeric, groups = frame[keep], numeric[keep], groups[keep]
    names, codes = np.unique(groups.astype(str).to_numpy(), return_inverse=True)
    notes = {"group_by": "the group column" if "group" in frame.columns else "question", **notes}
    return Examples(frame["question"].astype(str).tolist(), frame["answer"].astype(str).tolist(),
                    numeric.to_numpy(dtype=np.int64), codes.astype(np.int64), [str(n) for n in names], source, notes)


def read_table(path: Path) -> pd.DataFrame:
    """A JSONL, CSV or Parquet file as a DataFrame (strings kept as strings)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise GhostTrackError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    raise GhostTrackError(f"{path}: unknown data format '{suffix}'; pass a .jsonl, .csv or .parquet file")


# --- built-in sources from the sae-probes wheel ----------------------------------------------------

@dataclass(frozen=True)
class _Builtin:
    file: str
    pattern: str  # splits a prompt into question and answer
    labels: dict  # target value -> 1 (correct) / 0 (false)


BUILTINS = {
    "truthqa_tf": _Builtin("41_truthqa_tf.csv.zst", r"Q\. (?P<question>.*)\nA\. (?P<answer>.*)",
                           {"correct": 1, "incorrect": 0}),
    "sciq_tf": _Builtin("36_sciq_tf.csv.zst", r"Q: (?P<question>.*)\nA: (?P<answer>.*)", {"1": 1, "0": 0}),
}


def assets_dir() -> Path:
    """Where `make assets` put the offline data: $GHOSTTRACK_ASSETS, else ./.cache/assets."""
    return Path(os.environ.get("GHOSTTRACK_ASSETS", ".cache/assets"))


def load_builtin(name: str, assets: Path | None = None) -> Examples:
    """`sae-probes:<name>`: the wheel's CSV split into question/answer, grouped by question.

    Rows whose answer is empty (one in truthqa_tf) cannot be scored and are dropped; the count
    goes to `notes`.
    """
    import zstandard

    spec = BUILTINS.get(name)
    if spec is None:
        raise GhostTrackError(f"unknown built-in source '{BUILTIN_PREFIX}{name}'; choose one of "
                              f"{', '.join(BUILTIN_PREFIX + n for n in BUILTINS)} or pass a file")
    path = (assets or assets_dir()) / SAE_PROBES_DIR / spec.file
    if not path.is_file():
        raise GhostTrackError(f"{path} not found; run `make assets` (it fetches the sae-probes wheel) "
                              "or set GHOSTTRACK_ASSETS to the folder holding sae_probes/")
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    frame = pd.read_csv(io.BytesIO(raw), dtype={"target": str})
    parts = frame["prompt"].str.extract(f"^{spec.pattern}$", flags=re.S)
    if parts.isna().any(axis=None):
        row = int(np.flatnonzero(parts.isna().any(axis=1).to_numpy())[0])
        raise GhostTrackError(f"{path} row {row} does not match the expected 'Q/A' prompt format; "
                              "the file is not the sae-probes 0.4.2 one")
    unknown = set(frame["target"]) - set(spec.labels)
    if unknown:
        raise GhostTrackError(f"{path} has unexpected target value(s) {sorted(unknown)}; expected {sorted(spec.labels)}")
    table = pd.DataFrame({"question": parts["question"].str.strip(), "answer": parts["answer"].str.strip(),
                          "label": frame["target"].map(spec.labels)})
    empty = table["answer"] == ""
    notes = {"dropped_empty_answers": int(empty.sum())} if empty.any() else {}
    return _from_frame(table[~empty].reset_index(drop=True), f"{BUILTIN_PREFIX}{name}", notes)


def load_examples(spec: str) -> Examples:
    """`sae-probes:<name>` or a path to a .jsonl/.csv/.parquet file."""
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec[len(BUILTIN_PREFIX):])
    path = Path(spec)
    if not path.is_file():
        raise GhostTrackError(f"--data {spec}: no such file; pass a .jsonl/.csv/.parquet file or one of "
                              f"{', '.join(BUILTIN_PREFIX + n for n in BUILTINS)}")
    return _from_frame(read_table(path), str(path))


def subsample_groups(examples: Examples, max_examples: int, seed: int) -> Examples:
    """Whole groups drawn at random until `max_examples` rows (no group is ever cut in two)."""
    if len(examples) <= max_examples:
        return examples
    order = np.random.default_rng(seed).permutation(examples.n_groups)
    sizes = np.bincount(examples.groups, minlength=examples.n_groups)
    keep = order[: int(np.searchsorted(np.cumsum(sizes[order]), max_examples, side="right"))]
    rows = np.flatnonzero(np.isin(examples.groups, keep))
    return examples.subset(rows, note=f"{len(rows)} of {len(examples)} examples ({len(keep)} whole groups, seed {seed})")


def check_for_cv(examples: Examples, n_folds: int) -> None:
    """Refuse data a grouped K-fold cannot score: one class only, or fewer groups than folds."""
    counts = np.bincount(examples.labels, minlength=2)
    if counts.min() == 0:
        present = "1 (correct)" if counts[1] else "0 (false)"
        raise GhostTrackError(f"{examples.source} has only label {present}; AUROC needs both classes")
    for label in (0, 1):
        n_groups = len(np.unique(examples.groups[examples.labels == label]))
        if n_groups < n_folds:
            raise GhostTrackError(f"{examples.source} has {n_groups} group(s) with label {label}, fewer than "
                                  f"--folds {n_folds}; pass more data or fewer folds")
