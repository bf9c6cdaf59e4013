"""Feature interpretation from a stored layer: the examples, statistics and links of every feature.

`FeatureInterpreter` runs the streaming pass (scan.py) once. Then, without the model, it builds
each feature's page: the top examples and examples per activation quantile (quantiles.py), each
a window of stored token ids around its row with the feature's activation on every token
(examples.py), the features with the nearest decoder directions (neighbors.py) and, given the
model's files, the tokens the feature promotes and suppresses (unembed.py). `analyze_sae` writes
the per-feature records (the seed's schema plus these), a summary with the dead and dense lists
and the rows that are the top example of many features (hubs.py), and the HTML browser.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.config import FORMATS, InterpretConfig
from ghosttrack.interpret.examples import window_activations, window_rows
from ghosttrack.interpret.hubs import peak_hint, peak_positions, peak_rows
from ghosttrack.interpret.inputs import check_inputs, open_store, sae_layer, sae_skip_positions
from ghosttrack.interpret.outputs import (density_histogram, print_feature_summary, trimmed_histogram,
                                          write_records)
from ghosttrack.interpret.quantiles import quantile_edges, quantile_examples
from ghosttrack.interpret.scan import FeatureStats, LogBins, run_pass
from ghosttrack.interpret.tokens import TokenDecoder, load_store_tokenizer
from ghosttrack.run_config import layer_dir

__all__ = ["FeatureInterpreter", "InterpretConfig", "analyze_sae", "check_inputs", "density_histogram", "open_store",
           "print_feature_summary", "sae_layer", "trimmed_histogram", "write_records"]
@dataclass
class _Pages:
    """What the feature pages show beyond the pass's statistics, built once after it."""

    example_rows: np.ndarray
    """(H, E) store rows of the shown examples: the top-k, then the quantile examples (-1: none)."""
    example_values: np.ndarray
    """(H, E) their activations."""
    window_acts: np.ndarray
    """(H, E, W) the feature's activation on every token of each example's window (NaN: none)."""
    bands: list[list[dict]]
    """Per feature, its quantile bands (quantiles.quantile_examples)."""
    neighbors: tuple[np.ndarray, np.ndarray] | None
    logits: Any | None
    """unembed.LogitEffects, given --model."""


def _rounded(values: np.ndarray) -> list[float | None]:
    """4 significant digits (the page shows 4), None where there is no value."""
    return [None if v != v else float(f"{v:.4g}") for v in values.tolist()]


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
        skip = self.config.skip_positions
        self.skip_positions = tuple(skip) if skip is not None else sae_skip_positions(sae)
        tokenizer = tokenizer if tokenizer is not None else load_store_tokenizer(store)
        if tokenizer is None:
            warnings.warn(f"no tokenizer found for store {store.path}; contexts show token ids", stacklevel=2)
        self.decoder = TokenDecoder(tokenizer)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self._unembedding = None
        if self.config.model:  # read (and checked) before the pass, so a wrong path fails fast
            from ghosttrack.interpret.unembed import load_unembedding

            self._unembedding = load_unembedding(self.config.model, self.config.gguf)
            if self._unembedding.d_model != sae.cfg.d_in:
                raise GhostTrackError(f"--model {self.config.model} has d_model={self._unembedding.d_model} but the "
                                      f"SAE has d_in={sae.cfg.d_in}; pass the model the store was extracted from")
        self._stats: FeatureStats | None = None
        self._pages: _Pages | None = None
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @torch.inference_mode()
    def _encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x_BD)

    def run(self) -> FeatureStats:
        """The streaming pass (once; later calls reuse it)."""
        if self._stats is None:
            cfg = self.config
            self._stats = run_pass(
                self.store, self.layer, self._encode, self.d_sae, top_k=cfg.top_k, batch_size=cfg.batch_size,
                device=cfg.device, skip_flagged=cfg.skip_flagged, max_norm_ratio=cfg.max_norm_ratio,
                skip_positions=self.skip_positions, bins=LogBins(),
                sample_size=cfg.sample_size if cfg.quantile_bands else 0, progress=cfg.progress,
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

    def pages(self) -> _Pages:
        """Quantile examples, per-token activations of every shown window, neighbours, logits (once)."""
        if self._pages is not None:
            return self._pages
        stats, cfg = self.run(), self.config
        n_bands, per = cfg.quantile_bands, cfg.examples_per_band
        q_rows = np.full((self.d_sae, n_bands * per), -1, dtype=np.int64)
        q_vals = np.full((self.d_sae, n_bands * per), np.nan, dtype=np.float32)
        bands: list[list[dict]] = [[] for _ in range(self.d_sae)]
        if n_bands and stats.sample_rows is not None:
            for f in np.flatnonzero(stats.counts):
                top = float(stats.max_values[f])
                edges = quantile_edges(stats.histogram[f], stats.bins, top, n_bands)
                bands[f] = quantile_examples(stats.sample_rows[f], stats.sample_values[f], edges, top, n_bands, per,
                                             shown=stats.top_rows[f])
                for b in bands[f]:
                    at = b["band"] * per
                    q_rows[f, at:at + len(b["rows"])] = b["rows"]
                    q_vals[f, at:at + len(b["rows"])] = b["values"]
        rows = np.concatenate([stats.top_rows, q_rows], axis=1)
        values = np.concatenate([stats.top_values, q_vals], axis=1)
        _, _, seqs = self._token_arrays()
        acts = window_activations(self.store, self.layer, self._encode, rows, seqs, stats.keep_mask,
                                  before=cfg.context_before, after=cfg.context_after, batch_size=cfg.batch_size,
                                  device=cfg.device)
        neighbors = logits = None
        if cfg.neighbors:
            from ghosttrack.interpret.neighbors import nearest_by_decoder

            neighbors = nearest_by_decoder(self.sae.W_dec, cfg.neighbors)
        if self._unembedding is not None:
            from ghosttrack.interpret.unembed import logit_effects

            vocab = len(self.decoder.tokenizer) if self.decoder.tokenizer is not None else None
            logits = logit_effects(self.sae.W_dec, self._unembedding, cfg.logit_tokens, vocab_size=vocab)
        self._pages = _Pages(rows, values, acts, bands, neighbors, logits)
        return self._pages

    def find_top_activating_examples(self, feature_id: int, k: int | None = None) -> list[tuple[float, int]]:
        """(activation, store row) of the feature's strongest rows, best first (at most top_k)."""
        stats = self.run()
        f = self._check_feature(feature_id)
        rows, vals = stats.top_rows[f], stats.top_values[f]
        out = [(float(v), int(r)) for v, r in zip(vals, rows) if r >= 0]
        return out[:k] if k is not None else out

    def contexts(self, rows: np.ndarray, acts_EW: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Readable windows around store rows: text, tokens, index of the row's token, its position,
        where documents start (`doc_start`: the window begins at position 0; `eos`: indices of EOS
        separators) and, with `acts_EW` (E, W), the activation on each token (None where there is none)."""
        tokens, positions, seqs = self._token_arrays()
        before = self.config.context_before
        rows = np.asarray(rows, dtype=np.int64)
        idx_EW, same_EW = window_rows(rows, seqs, before, self.config.context_after)
        ids_EW = tokens[idx_EW]
        self.decoder.pieces(np.unique(ids_EW[same_EW]))  # one batched decode of every distinct id
        windows = [ids_EW[e][same_EW[e]] for e in range(len(rows))]
        texts = self.decoder.texts(windows)
        marked_E = same_EW[:, :before].sum(1)
        out = []
        for e, (ids, i, text, row) in enumerate(zip(windows, marked_E, texts, rows)):
            first = idx_EW[e][same_EW[e]][0] if len(ids) else row
            ctx = {"tokens": self.decoder.pieces(ids), "token_index": int(i), "text": text,
                   "position": int(positions[row]), "row": int(row), "doc_start": bool(positions[first] == 0),
                   "eos": np.flatnonzero(ids == self.eos_id).tolist() if self.eos_id is not None else []}
            if acts_EW is not None:
                ctx["acts"] = _rounded(acts_EW[e][same_EW[e]])
            out.append(ctx)
        return out

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
        stats, pages, k = self.run(), self.pages(), self.config.top_k
        sel = pages.example_rows[feature_ids]
        valid = sel >= 0
        contexts = iter(self.contexts(sel[valid], pages.window_acts[feature_ids][valid]) if valid.any() else ())
        density, means, edges = stats.density, stats.mean_values, stats.bins.edges()
        records = []
        for f, rows_e in zip(feature_ids, sel):
            examples = []
            for v, r in zip(pages.example_values[f], rows_e):
                ctx = next(contexts) if r >= 0 else None
                examples.append(None if ctx is None else {
                    "text": ctx["text"], "position": ctx["position"], "activation": float(v),
                    "token": ctx["tokens"][ctx["token_index"]] if ctx["tokens"] else "",
                    **{key: ctx[key] for key in ("tokens", "token_index", "row", "acts", "doc_start", "eos")}})
            top = [ex for ex in examples[:k] if ex is not None]
            per = self.config.examples_per_band
            count = int(stats.counts[f])
            record = {
                "feature_id": int(f),
                "active": count > 0,
                "num_activations": count,
                "top_activation": float(stats.max_values[f]),
                "mean_activation": float(means[f]),
                "density": float(density[f]),
                "common_tokens": [[t, c] for t, c in self.extract_common_tokens(top)],
                "top_examples": top,
                "histogram": trimmed_histogram(stats.histogram[f], edges, float(stats.max_values[f])),
                "quantiles": [{"band": b["band"], "lo": b["lo"], "hi": b["hi"],
                               "examples": [ex for ex in examples[k + b["band"] * per:k + (b["band"] + 1) * per]
                                            if ex is not None]} for b in pages.bands[f]],
            }
            if pages.neighbors is not None:
                ids, cos = pages.neighbors
                record["neighbors"] = [[int(i), round(float(c), 4)] for i, c in zip(ids[f], cos[f])]
            if pages.logits is not None:
                record["logits"] = pages.logits.record(f, self.decoder.pieces)
            records.append(record)
        return records

    def summary(self) -> dict[str, Any]:
        """Layer-level facts: rows scanned and skipped, dead and dense lists, the density histogram,
        and the rows and positions that are the top example of an unusual share of features."""
        stats = self.run()
        density = stats.density
        dead = np.flatnonzero(stats.counts == 0)
        dense = np.flatnonzero(density > self.config.dense_threshold)
        n = self.d_sae
        _, positions, _ = self._token_arrays()
        top_rows = stats.top_rows[:, 0]
        kept = positions[stats.keep_mask] if stats.keep_mask is not None else positions
        rows = peak_rows(top_rows, stats.max_values, stats.n_rows)
        for peak, ctx in zip(rows, self.contexts(np.array([r["row"] for r in rows], dtype=np.int64))):
            peak.update(position=ctx["position"], text=ctx["text"], tokens=ctx["tokens"],
                        token_index=ctx["token_index"])
        at_positions = peak_positions(top_rows, stats.max_values, positions, kept)
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
            "rows_skipped_positions": stats.skipped_positions,
            "skip_positions": list(self.skip_positions),
            "median_norm": stats.median_norm,
            "config": asdict(self.config),
            "dead": {"count": len(dead), "fraction": len(dead) / n, "features": dead.tolist()},
            "dense": {"count": len(dense), "fraction": len(dense) / n, "threshold": self.config.dense_threshold,
                      "features": [{"feature_id": int(f), "density": float(density[f])} for f in dense]},
            "density_histogram": density_histogram(density[stats.counts > 0], stats.n_rows),
            "peak_rows": rows,
            "peak_positions": at_positions,
            "peak_hint": peak_hint(rows, at_positions),
        }


def analyze_sae(sae_path: str | Path, store_path: str | Path, out: str | Path, *, layer: int | None = None,
                config: InterpretConfig | None = None, access=None) -> dict[str, Any]:
    """Interpret the SAE in `sae_path` on its layer of the store; write everything under out/layer_<i>/.

    Records are built and written a block of features at a time, so a large dictionary never
    sits in memory whole. Returns the layer summary with the written paths under "files".
    """
    from ghosttrack.interpret.browser import BrowserWriter
    from ghosttrack.sae.module import load_sae

    config = config or InterpretConfig()
    sae = load_sae(sae_path, device=config.device)
    store = open_store(store_path, access)  # access: a run_config.StoreAccess (default: checked, finished)
    interpreter = FeatureInterpreter(sae, store, layer, config)
    interpreter.run()
    summary = interpreter.summary()
    summary["sae_path"] = str(sae_path)
    directory = layer_dir(out, interpreter.layer)
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
