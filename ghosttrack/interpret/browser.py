"""The static HTML feature browser: open `index.html` from disk, no server.

Browsers block `fetch` on file:// pages, so the data travels as JavaScript files that call
`GT.overview(...)` / `GT.tokens(...)` / `GT.part(i, ...)` / `GT.text(i, ...)`:
`browser_data/overview.js` (the layer summary and a few numbers per feature, enough to sort and
to search tokens) is loaded by a <script> tag; `tokens.js` (the layer's one token table) and
`features_<i>.js` (examples, quantiles, histograms, neighbours and logits of PART_SIZE features,
packed as pack.py describes: shared windows, uint8 activations) load when a feature page opens,
and `text_<i>.js` (the tokens of each feature's top SEARCH_EXAMPLES contexts) only when a search
runs, so a large dictionary opens as fast as a small one. Numbers are kept to the 4 significant
digits the page shows.
All data is inserted into the page with textContent, never parsed as HTML.
"""
from __future__ import annotations

import html
import json
import shutil
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ghosttrack.interpret.pack import TokenTable, WindowPacker, b64, feature_scale, quantise, round4, trimmed_codes, varints

PART_SIZE = 256
"""Features per data file."""
DATA_DIR = "browser_data"
SEARCH_TOKENS = 5
"""Common tokens per feature kept in the overview for search by token."""
SEARCH_EXAMPLES = 10
"""Top contexts per feature whose text the search reads (24k features x 10 contexts ~ 17 MB, loaded on search)."""


def _js_call(function: str, *args: Any) -> str:
    # JSON is valid JavaScript; escaping "</" keeps the file safe even if inlined in a <script> someday.
    payload = ", ".join(json.dumps(a, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/") for a in args)
    return f"{function}({payload});\n"


def overview_payload(rows: list[dict[str, Any]], summary: dict[str, Any], top_k: int = 0) -> dict[str, Any]:
    """The layer summary plus one compact row per feature (density, max, mean, count, common tokens)."""
    keys = ("layer", "model", "hook", "store", "sae_path", "d_in", "d_sae", "rows_scanned", "rows_skipped_flagged",
            "rows_skipped_outliers", "rows_skipped_positions", "skip_positions", "dead", "dense", "density_histogram",
            "peak_rows", "peak_positions", "peak_hint")
    return {
        **{k: summary.get(k) for k in keys},
        "part_size": PART_SIZE,
        "search_examples": SEARCH_EXAMPLES,
        "top_k": (summary.get("config") or {}).get("top_k") or top_k,
        "features": {name: [row[name] for row in rows] for name in ("density", "max", "mean", "count", "tokens")},
    }


def _example(ex: dict[str, Any], windows: WindowPacker, codes: np.ndarray | None) -> list:
    """[activation, position, window key, uint8 activations (pack.trimmed_codes, base64) or None,
    length, token_index, doc_start]; the window key becomes its offset in the data file's token
    stream once all are added (`_finish_example`), and the last three are dropped when they are
    the usual window's."""
    return [round4(ex["activation"]), ex["position"], windows.add(ex),
            b64(trimmed_codes(codes)) if codes is not None else None,
            len(ex.get("tokens", [None])), ex.get("token_index", 0), int(bool(ex.get("doc_start")))]


def _examples(shown: list[dict[str, Any]], windows: WindowPacker, scale: float) -> list[list]:
    """`_example` of each, their activations quantised in one call."""
    with_acts = [ex for ex in shown if ex.get("acts") is not None]
    flat = quantise([a for ex in with_acts for a in ex["acts"]], scale) if with_acts else np.zeros(0, np.uint8)
    at, out = 0, []
    for ex in shown:
        codes = None
        if ex.get("acts") is not None:
            codes, at = flat[at:at + len(ex["acts"])], at + len(ex["acts"])
        out.append(_example(ex, windows, codes))
    return out


def _finish_example(ex: list, windows: WindowPacker, usual: tuple[int, int]) -> None:
    offset, length = windows.locate(ex[2])
    ex[2] = offset
    if (length, ex[5], ex[6]) == (*usual, 0):
        del ex[4:]


def part_payload(records: list[dict[str, Any]], table: TokenTable) -> dict[str, Any]:
    """One data file: the windows' token stream (pack.WindowPacker) and, per feature, its examples
    (see `_example`), quantile bands [lo, hi, examples], histogram, neighbours and logits, tokens as
    indices into the layer's token table. `window`: the usual [length, token_index]."""
    windows = WindowPacker(table)
    features = []
    for r in records:
        shown = r["top_examples"] + [ex for q in r.get("quantiles", []) for ex in q["examples"]]
        scale = feature_scale(shown)
        packed = _examples(shown, windows, scale)
        rest = iter(packed[len(r["top_examples"]):])
        logits = r.get("logits")
        if logits is not None:
            logits = {**logits, **{side: [[table.index(t), v] for t, v in logits[side]]
                                   for side in ("promoted", "suppressed")}}
        hist = r.get("histogram", {"bin_edges": [], "counts": []})
        features.append({
            "id": r["feature_id"],
            "scale": scale,
            "common": [[table.index(t), c] for t, c in r["common_tokens"]],
            "hist": {"bin_edges": [round4(e) for e in hist["bin_edges"]], "counts": hist["counts"]},
            "examples": packed[:len(r["top_examples"])],
            "quantiles": [[round4(q["lo"]), round4(q["hi"]), [next(rest) for _ in q["examples"]]]
                          for q in r.get("quantiles", [])],
            "neighbors": r.get("neighbors", []),
            "logits": logits,
        })
    windows.finish()
    every = [ex for f in features for ex in f["examples"] + [ex for q in f["quantiles"] for ex in q[2]]]
    shapes = Counter((ex[4], ex[5]) for ex in every)
    usual = shapes.most_common(1)[0][0] if shapes else (0, 0)
    for ex in every:
        _finish_example(ex, windows, usual)
    return {**windows.payload(), "window": list(usual), "features": features}


def text_payload(records: list[dict[str, Any]], table: TokenTable) -> dict[str, Any]:
    """What the text search reads: the tokens of each feature's top SEARCH_EXAMPLES contexts, as
    one stream of table indices (base64 varints) holding each distinct context once, and per
    feature flat [offset, length, ...] into it."""
    seen: dict[tuple[int, ...], int] = {}
    stream: list[int] = []
    features = []
    for r in records:
        flat = []
        for ex in r["top_examples"][:SEARCH_EXAMPLES]:
            ids = tuple(table.index(t) for t in ex.get("tokens", [ex["text"]]))
            if ids not in seen:
                seen[ids] = len(stream)
                stream.extend(ids)
            flat += [seen[ids], len(ids)]
        features.append(flat)
    return {"tokens": b64(varints(np.array(stream, dtype=np.int64))), "features": features}


class BrowserWriter:
    """Writes the browser while records arrive in feature-id order, so no layer is held in memory
    whole: `add` writes each full data file, `finish` the overview and index.html."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._tmp = self.directory / (DATA_DIR + ".tmp")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True)
        self._rows: list[dict[str, Any]] = []  # compact per-feature rows for the overview
        self._waiting: list[dict[str, Any]] = []  # records of the data file being filled
        self._parts = 0
        self._table = TokenTable()
        self._top_k = 0  # the most top examples any feature has (when the summary names no top_k)

    def add(self, records: list[dict[str, Any]]) -> None:
        """Records of the next features (ids must continue where the last call stopped)."""
        for r in records:
            if r["feature_id"] != len(self._rows):
                raise ValueError("BrowserWriter needs the records of every feature, ordered by feature id from 0")
            self._rows.append({"density": r["density"], "max": r["top_activation"], "mean": r["mean_activation"],
                               "count": r["num_activations"],
                               "tokens": [[t, c] for t, c in r["common_tokens"][:SEARCH_TOKENS]]})
            self._waiting.append(r)
            self._top_k = max(self._top_k, len(r["top_examples"]))
            if len(self._waiting) == PART_SIZE:
                self._write_part()

    def _write_part(self) -> None:
        text = _js_call("GT.part", self._parts, part_payload(self._waiting, self._table))
        (self._tmp / f"features_{self._parts:04d}.js").write_text(text, encoding="utf-8")
        text = _js_call("GT.text", self._parts, text_payload(self._waiting, self._table))
        (self._tmp / f"text_{self._parts:04d}.js").write_text(text, encoding="utf-8")
        self._parts += 1
        self._waiting = []

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write the overview and index.html, swap the new data folder in; returns the index path."""
        if self._waiting:
            self._write_part()
        payload = {**overview_payload(self._rows, summary, self._top_k), "parts": self._parts}
        (self._tmp / "overview.js").write_text(_js_call("GT.overview", payload), encoding="utf-8")
        (self._tmp / "tokens.js").write_text(_js_call("GT.tokens", self._table.payload()), encoding="utf-8")
        data = self.directory / DATA_DIR
        shutil.rmtree(data, ignore_errors=True)
        self._tmp.rename(data)
        title = f"GhostTrack features - layer {summary.get('layer')}"
        if summary.get("model"):
            title += f" - {Path(str(summary['model'])).name}"
        templates = resources.files("ghosttrack.interpret").joinpath("templates")
        script = "".join(templates.joinpath(name).read_text(encoding="utf-8") for name in ("data.js", "browser.js"))
        assert "</script" not in script.lower(), "the scripts are inlined in a <script> element"
        page = templates.joinpath("browser.html").read_text(encoding="utf-8").replace("__SCRIPT__", script)
        index = self.directory / "index.html"
        index.write_text(page.replace("__TITLE__", html.escape(title)), encoding="utf-8")
        return index


def write_browser(directory: str | Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Write index.html and its data files into `directory` from every feature's record; returns the index."""
    writer = BrowserWriter(directory)
    writer.add(records)
    return writer.finish(summary)


def read_common_tokens(directory: str | Path) -> list[list[list]] | None:
    """Per feature, its SEARCH_TOKENS most common activating tokens [[token, count], ...], read from
    the browser written into `directory` (a layer's interpretation folder); None without one."""
    path = Path(directory) / DATA_DIR / "overview.js"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    prefix = "GT.overview("
    if not (text.startswith(prefix) and text.endswith(");")):
        raise ValueError(f"{path} is not a GhostTrack browser overview; rerun ghosttrack interpret")
    return json.loads(text[len(prefix):-2])["features"]["tokens"]  # JSON reads "<\\/" as "</"
