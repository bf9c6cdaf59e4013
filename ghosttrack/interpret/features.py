"""Feature interpretation from a stored layer: top examples, common tokens, dead and dense features.

`FeatureInterpreter` runs the streaming pass of `interpret_pass` once, then rebuilds a
readable context for every top example from the store's token ids (a window around
the row inside its own sequence, the token itself marked), so the model never runs.
`analyze_sae` writes the per-feature records (the seed's schema plus density and a
histogram), a summary with the dead and dense lists, and the HTML feature browser.
"""
from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.scan import FeatureStats, LogBins, run_pass
from ghosttrack.interpret.tokens import TokenDecoder, load_store_tokenizer

FORMATS = ("auto", "json", "jsonl")


@dataclass
class InterpretConfig:
    """How one layer is interpreted."""

    top_k: int = 20
    """Top-activating examples kept per feature."""
    batch_size: int = 4096
    """Rows per encoder call."""
    context_before: int = 12
    """Tokens of context shown before the activating token (never crossing into another sequence)."""
    context_after: int = 4
    """Tokens of context shown after it."""
    skip_flagged: bool = True
    """Skip rows flagged by the store (position 0: attention sinks), as training does."""
    max_norm_ratio: float | None = 3.0
    """Skip rows whose norm exceeds this x the layer's median norm (the loader's rule); None keeps all."""
    dense_threshold: float = 0.1
    """A feature active on more than this fraction of rows is listed as dense."""
    device: str = "cpu"
    """Device of the encoder pass and the top-k merge."""
    output_format: str = "auto"
    """'json' (one list), 'jsonl' (one feature per line), or 'auto': jsonl above `jsonl_above` features."""
    jsonl_above: int = 16_384
    """Dictionaries larger than this are written as JSON Lines with output_format='auto'."""
    html: bool = True
    """Write the static HTML feature browser next to the JSON."""
    progress: bool = True
    """Show a tqdm progress bar during the pass."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise GhostTrackError(f"top_k must be >= 1, got {self.top_k}; pass --top-k 1 or more")
        if self.batch_size < 1 or self.context_before < 0 or self.context_after < 0:
            raise GhostTrackError("batch size must be >= 1 and context windows >= 0")
        if self.max_norm_ratio is not None and self.max_norm_ratio <= 0:
            raise GhostTrackError(f"max_norm_ratio must be > 0 (or None to keep all rows), got {self.max_norm_ratio}")
        if not 0 < self.dense_threshold <= 1:
            raise GhostTrackError(f"dense_threshold must be in (0, 1], got {self.dense_threshold}")
        if self.output_format not in FORMATS:
            raise GhostTrackError(f"unknown output format '{self.output_format}'; choose one of {', '.join(FORMATS)}")


def check_inputs(sae, store, layer: int) -> None:
    """The errors a user can fix before any work starts."""
    if layer not in store.layers:
        have = ", ".join(str(x) for x in store.layers)
        raise GhostTrackError(f"layer {layer} is not in store {store.path} (it has layers {have}); "
                              f"extract it with ghosttrack extract --layers {layer}, or pass --layer")
    if sae.cfg.d_in != store.d_model:
        raise GhostTrackError(f"the SAE expects d_in={sae.cfg.d_in} but store {store.path} holds d_model="
                              f"{store.d_model} rows; pass the SAE trained on this store's model and layer")
    if store.n_tokens == 0:
        raise GhostTrackError(f"store {store.path} has no committed rows; extract (or --resume) it first")
    hook_name = str((getattr(sae, "metadata", {}) or {}).get("hook_name") or "")
    other = {"resid_post": "resid_pre", "resid_pre": "resid_post"}.get(store.hook)
    if other and other in hook_name:
        warnings.warn(f"the SAE was trained on {hook_name} but store {store.path} holds {store.hook} rows",
                      stacklevel=3)
    try:
        tokens = np.asarray(store.tokens(0, min(store.n_tokens, store.chunk_tokens)))
    except Exception as exc:  # noqa: BLE001 - any failure means there are no usable ids
        raise GhostTrackError(f"store {store.path} has no readable token ids, so contexts cannot be rebuilt; "
                              "re-extract it with ghosttrack extract") from exc
    if len(tokens) > 1 and not tokens.any():
        # Never-written token chunks read as zarr's fill value: a store saved without its ids.
        raise GhostTrackError(f"store {store.path} has no token ids (they read as all zero), so contexts "
                              "cannot be rebuilt; re-extract it with ghosttrack extract")


def open_store(path):
    """ActivationStore.open, with a store that lacks its token-id array named as such."""
    from ghosttrack.store.errors import StoreError
    from ghosttrack.store.reader import ActivationStore

    try:
        return ActivationStore.open(path)
    except StoreError:
        if (Path(path) / "zarr.json").is_file() and not (Path(path) / "tokens").exists():
            raise GhostTrackError(f"store {path} has no token ids, so contexts cannot be rebuilt; "
                                  "re-extract it with ghosttrack extract") from None
        raise


def sae_layer(sae) -> int | None:
    """The layer an SAE was trained on, from its metadata (hook_layer, or the hook name's block index)."""
    meta = getattr(sae, "metadata", {}) or {}
    if meta.get("hook_layer") is not None:
        return int(meta["hook_layer"])
    match = re.search(r"(\d+)", str(meta.get("hook_name", "")))
    return int(match.group(1)) if match else None


class FeatureInterpreter:
    """Interprets every feature of `sae` on layer `layer` of an ActivationStore, in one pass."""

    def __init__(self, sae, store, layer: int | None = None, config: InterpretConfig | None = None, tokenizer=None):
        self.config = config or InterpretConfig()
        self.layer = sae_layer(sae) if layer is None else int(layer)
        if self.layer is None:
            raise GhostTrackError("the SAE's metadata names no layer; pass --layer")
        check_inputs(sae, store, self.layer)
        self.sae = sae.to(self.config.device).eval()
        self.store = store
        tokenizer = tokenizer if tokenizer is not None else load_store_tokenizer(store)
        if tokenizer is None:
            warnings.warn(f"no tokenizer found for store {store.path}; contexts show token ids", stacklevel=2)
        self.decoder = TokenDecoder(tokenizer)
        self._stats: FeatureStats | None = None
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def run(self) -> FeatureStats:
        """The streaming pass (once; later calls reuse it)."""
        if self._stats is None:
            cfg = self.config

            @torch.inference_mode()
            def encode(x_BD: torch.Tensor) -> torch.Tensor:
                return self.sae.encode(x_BD)

            self._stats = run_pass(
                self.store, self.layer, encode, self.d_sae, top_k=cfg.top_k, batch_size=cfg.batch_size,
                device=cfg.device, skip_flagged=cfg.skip_flagged, max_norm_ratio=cfg.max_norm_ratio,
                bins=LogBins(), progress=cfg.progress,
            )
        return self._stats

    def _token_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            s = self.store
            self._arrays = (np.asarray(s.tokens()), np.asarray(s.positions()), np.asarray(s.sequence_ids()))
        return self._arrays

    def _check_feature(self, feature_id: int) -> int:
        if not 0 <= int(feature_id) < self.d_sae:
            raise GhostTrackError(f"feature {feature_id} does not exist: the SAE has features 0-{self.d_sae - 1}")
        return int(feature_id)

    def find_top_activating_examples(self, feature_id: int, k: int | None = None) -> list[tuple[float, int]]:
        """(activation, store row) of the feature's strongest rows, best first (at most top_k)."""
        stats = self.run()
        f = self._check_feature(feature_id)
        rows, vals = stats.top_rows[f], stats.top_values[f]
        out = [(float(v), int(r)) for v, r in zip(vals, rows) if r >= 0]
        return out[:k] if k is not None else out

    def contexts(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Readable windows around store rows: text, tokens, index of the row's token, its position."""
        tokens, positions, seqs = self._token_arrays()
        before, after = self.config.context_before, self.config.context_after
        rows = np.asarray(rows, dtype=np.int64)
        idx_EW = rows[:, None] + np.arange(-before, after + 1)[None, :]
        inside_EW = (idx_EW >= 0) & (idx_EW < len(tokens))
        idx_EW = np.clip(idx_EW, 0, len(tokens) - 1)
        same_EW = inside_EW & (seqs[idx_EW] == seqs[rows][:, None])
        ids_EW = tokens[idx_EW]
        self.decoder.pieces(np.unique(ids_EW[same_EW]))  # one batched decode of every distinct id
        windows = [ids_EW[e][same_EW[e]] for e in range(len(rows))]
        texts = self.decoder.texts(windows)
        marked_E = same_EW[:, :before].sum(1)
        return [{"tokens": self.decoder.pieces(ids), "token_index": int(i), "text": text,
                 "position": int(positions[row]), "row": int(row)}
                for ids, i, text, row in zip(windows, marked_E, texts, rows)]

    @staticmethod
    def extract_common_tokens(examples: list[dict[str, Any]], top_n: int = 10) -> list[tuple[str, int]]:
        """(token, count) of the activating token across `examples`, most common first."""
        counts = Counter(ex["tokens"][ex["token_index"]] for ex in examples if ex["tokens"])
        return counts.most_common(top_n)

    def interpret_feature(self, feature_id: int) -> dict[str, Any]:
        """One feature in the seed's schema, plus density, its histogram and richer examples."""
        return self.records([self._check_feature(feature_id)])[0]

    def interpret_all_features(self, save_path: str | Path | None = None) -> dict[int, dict[str, Any]]:
        """Every feature, keyed by id; with `save_path`, also written as JSON."""
        records = self.records(list(range(self.d_sae)))
        if save_path is not None:
            Path(save_path).parent.mkdir(parents=True, exist_ok=True)
            Path(save_path).write_text(json.dumps(records, indent=1) + "\n")
        return {r["feature_id"]: r for r in records}

    def iter_records(self, block: int = 1024) -> Iterator[list[dict[str, Any]]]:
        """Every feature's record, in id order, `block` features at a time."""
        for start in range(0, self.d_sae, block):
            yield self.records(list(range(start, min(start + block, self.d_sae))))

    def records(self, feature_ids: list[int]) -> list[dict[str, Any]]:
        """The records of these features (their contexts rebuilt in one batch)."""
        stats = self.run()
        sel = stats.top_rows[feature_ids]
        rows = sel[sel >= 0]
        contexts = iter(self.contexts(rows)) if len(rows) else iter(())
        density, means, edges = stats.density, stats.mean_values, stats.bins.edges()
        records = []
        for f, rows_k in zip(feature_ids, sel):
            examples = []
            for v, r in zip(stats.top_values[f], rows_k):
                if r >= 0:
                    ctx = next(contexts)
                    examples.append({
                        "text": ctx["text"], "position": ctx["position"], "activation": float(v),
                        "token": ctx["tokens"][ctx["token_index"]] if ctx["tokens"] else "",
                        "tokens": ctx["tokens"], "token_index": ctx["token_index"], "row": ctx["row"],
                    })
            count = int(stats.counts[f])
            records.append({
                "feature_id": int(f),
                "active": count > 0,
                "num_activations": count,
                "top_activation": float(stats.max_values[f]),
                "mean_activation": float(means[f]),
                "density": float(density[f]),
                "common_tokens": [[t, c] for t, c in self.extract_common_tokens(examples)],
                "top_examples": examples,
                "histogram": trimmed_histogram(stats.histogram[f], edges, float(stats.max_values[f])),
            })
        return records

    def summary(self) -> dict[str, Any]:
        """Layer-level facts: rows scanned and skipped, dead and dense lists, the density histogram."""
        stats = self.run()
        density = stats.density
        dead = np.flatnonzero(stats.counts == 0)
        dense = np.flatnonzero(density > self.config.dense_threshold)
        n = self.d_sae
        return {
            "layer": self.layer,
            "store": str(self.store.path),
            "model": self.store.attrs.get("model"),
            "hook": self.store.attrs.get("hook"),
            "sae": {k: v for k, v in (getattr(self.sae, "metadata", {}) or {}).items()
                    if isinstance(v, (str, int, float, bool, type(None)))},
            "d_in": int(self.sae.cfg.d_in),
            "d_sae": n,
            "rows_scanned": stats.n_rows,
            "rows_skipped_flagged": stats.skipped_flagged,
            "rows_skipped_outliers": stats.skipped_outliers,
            "median_norm": stats.median_norm,
            "config": asdict(self.config),
            "dead": {"count": len(dead), "fraction": len(dead) / n, "features": dead.tolist()},
            "dense": {"count": len(dense), "fraction": len(dense) / n, "threshold": self.config.dense_threshold,
                      "features": [{"feature_id": int(f), "density": float(density[f])} for f in dense]},
            "density_histogram": density_histogram(density[stats.counts > 0], stats.n_rows),
        }


def trimmed_histogram(counts: np.ndarray, edges: np.ndarray, top: float) -> dict[str, list]:
    """The nonempty span of a feature's log-bin histogram; outer edges made finite (0 and the max)."""
    nz = np.flatnonzero(counts)
    if len(nz) == 0:
        return {"bin_edges": [], "counts": []}
    lo, hi = int(nz[0]), int(nz[-1])
    full = np.concatenate([[0.0], edges, [max(top, float(edges[-1]))]])
    bin_edges = full[lo:hi + 2].astype(float)
    bin_edges[-1] = min(bin_edges[-1], max(top, bin_edges[-2]))  # the last bin ends at the max seen
    return {"bin_edges": [float(x) for x in bin_edges], "counts": counts[lo:hi + 1].astype(int).tolist()}


def density_histogram(density: np.ndarray, n_rows: int, per_decade: int = 4) -> dict[str, list]:
    """Counts of live features per log10(density) bin, from 1/n_rows up to 1."""
    lowest = np.floor(np.log10(1.0 / max(n_rows, 1)))
    edges = np.linspace(lowest, 0.0, int(-lowest * per_decade) + 1) if lowest < 0 else np.array([-1.0, 0.0])
    counts, _ = np.histogram(np.log10(density[density > 0]), bins=edges)
    return {"log10_edges": [float(e) for e in edges], "counts": counts.astype(int).tolist()}


def print_feature_summary(interpretation: dict[str, Any], file: TextIO | None = None, max_examples: int = 5) -> None:
    """One feature, readable in a terminal: stats, common tokens, top examples with the token in [[ ]]."""
    out = file or sys.stdout
    it = interpretation
    state = "active" if it["active"] else "DEAD"
    print(f"Feature {it['feature_id']} ({state})", file=out)
    density = f", density {it['density']:.3%}" if "density" in it else ""
    print(f"  activations: {it['num_activations']:,}{density}, max {it['top_activation']:.4g}, "
          f"mean {it['mean_activation']:.4g}", file=out)
    if it["common_tokens"]:
        tokens = ", ".join(f"{tok!r} x{count}" for tok, count in it["common_tokens"][:8])
        print(f"  common tokens: {tokens}", file=out)
    for ex in it["top_examples"][:max_examples]:
        if "tokens" in ex:
            i = ex["token_index"]
            text = "".join(ex["tokens"][:i]) + "[[" + ex["tokens"][i] + "]]" + "".join(ex["tokens"][i + 1:])
        else:
            text = ex["text"]
        print(f"  {ex['activation']:8.4g}  pos {ex['position']:>4}  {text!r}", file=out)


def write_records(blocks: Iterable[list[dict[str, Any]]], directory: Path, *, jsonl: bool) -> Path:
    """Stream record blocks to features.json (one list) or features.jsonl (one feature per line)."""
    path = directory / ("features.jsonl" if jsonl else "features.json")
    other = directory / ("features.json" if jsonl else "features.jsonl")
    other.unlink(missing_ok=True)  # a rerun in the other format must not leave a stale file behind
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write("" if jsonl else "[")
        first = True
        for block in blocks:
            for rec in block:
                fh.write(json.dumps(rec) + "\n" if jsonl else ("" if first else ",\n") + json.dumps(rec))
                first = False
        fh.write("" if jsonl else "]\n")
    tmp.replace(path)
    return path


def analyze_sae(sae_path: str | Path, store_path: str | Path, out: str | Path, *, layer: int | None = None,
                config: InterpretConfig | None = None) -> dict[str, Any]:
    """Interpret the SAE in `sae_path` on its layer of the store; write everything under out/layer_<i>/.

    Records are built and written a block of features at a time, so a large dictionary never
    sits in memory whole. Returns the layer summary with the written paths under "files".
    """
    from ghosttrack.interpret.browser import BrowserWriter
    from ghosttrack.sae.module import load_sae

    config = config or InterpretConfig()
    sae = load_sae(sae_path, device=config.device)
    store = open_store(store_path)
    interpreter = FeatureInterpreter(sae, store, layer, config)
    interpreter.run()
    summary = interpreter.summary()
    summary["sae_path"] = str(sae_path)
    directory = Path(out) / f"layer_{interpreter.layer}"
    directory.mkdir(parents=True, exist_ok=True)
    browser = BrowserWriter(directory) if config.html else None

    def blocks() -> Iterator[list[dict[str, Any]]]:
        for block in interpreter.iter_records():
            if browser is not None:
                browser.add(block)
            yield block

    jsonl = config.output_format == "jsonl" or (config.output_format == "auto"
                                                and interpreter.d_sae > config.jsonl_above)
    files = {"features": str(write_records(blocks(), directory, jsonl=jsonl))}
    if browser is not None:
        files["html"] = str(browser.finish(summary))
    files["summary"] = str(directory / "summary.json")
    summary["files"] = files
    (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
