"""The static HTML feature browser: open `index.html` from disk, no server.

Browsers block `fetch` on file:// pages, so the data travels as JavaScript files that
call `GT.overview(...)` / `GT.part(i, ...)` / `GT.text(i, ...)`: `browser_data/overview.js`
(the layer summary and a few numbers per feature, enough to sort and to search tokens) is
loaded by a <script> tag; `browser_data/features_<i>.js` (examples, quantiles, histograms,
neighbours and logits of PART_SIZE features) is loaded when a feature page opens, and
`browser_data/text_<i>.js` (the texts of each feature's top SEARCH_EXAMPLES contexts) only
when a search runs, so a large dictionary opens as fast as a small one.
All data is inserted into the page with textContent, never parsed as HTML.
"""
from __future__ import annotations

import html
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

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


def overview_payload(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The layer summary plus one compact row per feature (density, max, mean, count, common tokens)."""
    keys = ("layer", "model", "hook", "store", "sae_path", "d_in", "d_sae", "rows_scanned", "rows_skipped_flagged",
            "rows_skipped_outliers", "rows_skipped_positions", "skip_positions", "dead", "dense", "density_histogram",
            "peak_rows", "peak_positions", "peak_hint")
    return {
        **{k: summary.get(k) for k in keys},
        "part_size": PART_SIZE,
        "features": {name: [row[name] for row in rows] for name in ("density", "max", "mean", "count", "tokens")},
    }


def _example(ex: dict[str, Any]) -> list:
    """[activation, position, tokens, token_index, row, per-token activations, doc_start, eos indices]."""
    return [ex["activation"], ex["position"], ex.get("tokens", [ex["text"]]), ex.get("token_index", 0),
            ex.get("row", -1), ex.get("acts"), ex.get("doc_start", False), ex.get("eos", [])]


def part_payload(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per feature: examples (see `_example`), quantile bands [lo, hi, examples], histogram, links, logits."""
    return [{
        "id": r["feature_id"],
        "common": r["common_tokens"],
        "hist": r.get("histogram", {"bin_edges": [], "counts": []}),
        "examples": [_example(ex) for ex in r["top_examples"]],
        "quantiles": [[q["lo"], q["hi"], [_example(ex) for ex in q["examples"]]] for q in r.get("quantiles", [])],
        "neighbors": r.get("neighbors", []),
        "logits": r.get("logits"),
    } for r in records]


def text_payload(records: list[dict[str, Any]]) -> list[list[str]]:
    """Per feature, the texts of its top SEARCH_EXAMPLES contexts (what the text search reads)."""
    return [[ex["text"] for ex in r["top_examples"][:SEARCH_EXAMPLES]] for r in records]


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

    def add(self, records: list[dict[str, Any]]) -> None:
        """Records of the next features (ids must continue where the last call stopped)."""
        for r in records:
            if r["feature_id"] != len(self._rows):
                raise ValueError("BrowserWriter needs the records of every feature, ordered by feature id from 0")
            self._rows.append({"density": r["density"], "max": r["top_activation"], "mean": r["mean_activation"],
                               "count": r["num_activations"],
                               "tokens": [[t, c] for t, c in r["common_tokens"][:SEARCH_TOKENS]]})
            self._waiting.append(r)
            if len(self._waiting) == PART_SIZE:
                self._write_part()

    def _write_part(self) -> None:
        text = _js_call("GT.part", self._parts, part_payload(self._waiting))
        (self._tmp / f"features_{self._parts:04d}.js").write_text(text, encoding="utf-8")
        text = _js_call("GT.text", self._parts, text_payload(self._waiting))
        (self._tmp / f"text_{self._parts:04d}.js").write_text(text, encoding="utf-8")
        self._parts += 1
        self._waiting = []

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write the overview and index.html, swap the new data folder in; returns the index path."""
        if self._waiting:
            self._write_part()
        payload = {**overview_payload(self._rows, summary), "parts": self._parts}
        (self._tmp / "overview.js").write_text(_js_call("GT.overview", payload), encoding="utf-8")
        data = self.directory / DATA_DIR
        shutil.rmtree(data, ignore_errors=True)
        self._tmp.rename(data)
        title = f"GhostTrack features - layer {summary.get('layer')}"
        if summary.get("model"):
            title += f" - {Path(str(summary['model'])).name}"
        template = resources.files("ghosttrack.interpret").joinpath("templates/browser.html").read_text(encoding="utf-8")
        index = self.directory / "index.html"
        index.write_text(template.replace("__TITLE__", html.escape(title)), encoding="utf-8")
        return index


def write_browser(directory: str | Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Write index.html and its data files into `directory` from every feature's record; returns the index."""
    writer = BrowserWriter(directory)
    writer.add(records)
    return writer.finish(summary)
