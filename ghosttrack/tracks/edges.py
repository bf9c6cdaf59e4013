"""`ghosttrack match`: edge lists between consecutive layers' SAEs, as Parquet, plus a summary JSON.

OUT/layer_<i>_to_<j>.parquet has one row per edge: src (latent of layer i), dst (latent of
layer j), score (higher is a better match), rank (0 = src's best), and per-method columns:

- data-free (always): decoder_score, decoder_mse, decoder_cosine (see match.py); without a store
  score = decoder_score;
- with a store: score = the activation correlation over the held-out rows (coact.py), plus
  coact_jaccard and coact_count; candidates are then chosen by co-activation.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.tracks.match import BlockSizes, decoder_pair_columns, folded_decoder, match_decoders
from ghosttrack.tracks.saes import LayerSAEs, find_layer_saes

SUMMARY_FILE = "summary.json"
EDGE_COLUMNS = ("src", "dst", "score")


def edge_file(out: str | Path, src_layer: int, dst_layer: int) -> Path:
    return Path(out) / f"layer_{src_layer}_to_{dst_layer}.parquet"


def write_edges(path: str | Path, edges: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Write an edge table atomically (temporary file + rename); metadata goes into the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.table({k: pa.array(v) for k, v in edges.items()})
    table = table.replace_schema_metadata({"ghosttrack": json.dumps(metadata, default=str)})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_edges(path: str | Path) -> dict[str, np.ndarray]:
    """An edge table as numpy columns; GhostTrackError when it is missing or lacks src/dst/score."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise GhostTrackError(f"cannot read the edge list {path} ({exc}); rerun ghosttrack match") from exc
    missing = [c for c in EDGE_COLUMNS if c not in table.column_names]
    if missing:
        raise GhostTrackError(f"{path} lacks column(s) {', '.join(missing)}; it was not written by ghosttrack "
                              f"match: rerun it")
    return {name: table.column(name).to_numpy() for name in table.column_names}


@dataclass
class HeldOut:
    """Which rows of the store the co-activation uses, and why."""

    chunks: np.ndarray
    skip_flagged: bool
    max_norm_ratio: dict[int, float | None]
    median_norm: dict[int, float | None]


def held_out_rows(store, saes: LayerSAEs) -> HeldOut:
    """The chunks every SAE held out of training (its own 95/5 split) and each layer's row rule."""
    from ghosttrack.store.loader import LoaderConfig, split_chunks

    default = LoaderConfig()
    chunk_sets, ratios, medians, flags = [], {}, {}, set()
    for layer in saes.layers:
        meta = saes.ghosttrack_meta(layer)
        tc = meta.get("trainer_config") or {}
        _, val = split_chunks(store.n_chunks, tc.get("val_fraction", default.val_fraction),
                              tc.get("seed", default.seed))
        chunk_sets.append(set(val.tolist()))
        flags.add(bool(tc.get("skip_flagged", default.skip_flagged)))
        skipped = meta.get("skipped") or {}
        ratios[layer] = skipped.get("max_norm_ratio") if "median_norm" in skipped else None
        medians[layer] = skipped.get("median_norm")
    common = sorted(set.intersection(*chunk_sets))
    if not common:
        raise GhostTrackError(f"the SAEs in {saes.root} hold out no chunk in common (different --seed or "
                              f"--val-fraction); retrain them with the same settings, or match without --store")
    return HeldOut(np.array(common, dtype=np.int64), skip_flagged=True in flags, max_norm_ratio=ratios,
                   median_norm=medians)


def check_store(store, saes: LayerSAEs) -> None:
    missing = [layer for layer in saes.layers if layer not in store.layers]
    if missing:
        raise GhostTrackError(f"store {store.path} lacks layer(s) {', '.join(map(str, missing))} of the SAEs in "
                              f"{saes.root} (it has {', '.join(map(str, store.layers))}); pass the store they were "
                              f"trained on")
    if store.d_model != saes.d_in:
        raise GhostTrackError(f"the SAEs expect d_model={saes.d_in} but store {store.path} holds {store.d_model}; "
                              f"pass the store they were trained on")


def _kept(norms, layer: int, held: HeldOut):
    ratio, median = held.max_norm_ratio[layer], held.median_norm[layer]
    if ratio is None or median is None:
        return torch.ones_like(norms, dtype=torch.bool)
    return norms <= ratio * median


def run_matching(sae_dir: str | Path, out: str | Path, *, store_path: str | Path | None = None, top: int = 8,
                 device: str = "cpu", blocks: BlockSizes = BlockSizes(), batch_size: int = 4096,
                 progress: bool = True, access=None) -> dict[str, Any]:
    """Match every consecutive pair of layers of `sae_dir`, write OUT/*.parquet and the summary; returns it.
    `access` (a ``run_config.StoreAccess``, e.g. the MatchRun): how --store is read (default: checked,
    finished stores only)."""
    if top < 1:
        raise GhostTrackError(f"--top must be >= 1, got {top}")
    saes = find_layer_saes(sae_dir)
    store = held = None
    if store_path is not None:
        from ghosttrack.stores import StoreAccess, open_store_for

        store = open_store_for("match", store_path, access or StoreAccess())
        check_store(store, saes)
        held = held_out_rows(store, saes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    summary: dict[str, Any] = {"sae": str(saes.root), "method": "coactivation" if store else "decoder",
                               "top": top, "layers": saes.layers, "device": str(dev), "pairs": []}
    if store is not None:
        summary["store"] = {"path": str(store.path), "held_out_chunks": len(held.chunks),
                            "skip_flagged": held.skip_flagged, "max_norm_ratio": held.max_norm_ratio,
                            "median_norm": held.median_norm}
    cached: dict[int, Any] = {}  # layer -> (sae, folded decoder, codes, norms); at most two layers live
    for i, j in saes.pairs():
        t0 = time.perf_counter()
        for layer in (i, j):
            if layer not in cached:
                sae = saes.load(layer, dev)
                codes = norms = None
                if store is not None:
                    from ghosttrack.tracks.coact import encode_rows

                    codes, norms = encode_rows(store, layer, sae, held.chunks, skip_flagged=held.skip_flagged,
                                               batch_size=batch_size, device=dev, progress=progress)
                cached[layer] = (folded_decoder(sae), codes, norms)
        (dec_a, codes_a, norms_a), (dec_b, codes_b, norms_b) = cached[i], cached[j]
        info: dict[str, Any] = {"src_layer": i, "dst_layer": j, "file": edge_file(out, i, j).name,
                                "n_src": dec_a.shape[0], "n_dst": dec_b.shape[0]}
        if store is None:
            edges = match_decoders(dec_a, dec_b, top, blocks=blocks, progress=progress, desc=f"match {i}->{j}")
            edges["decoder_score"] = edges["score"]
        else:
            from ghosttrack.tracks.coact import coactivation_edges

            keep = _kept(norms_a, i, held) & _kept(norms_b, j, held)
            info["rows"] = int(keep.sum())
            if info["rows"] == 0:
                raise GhostTrackError(f"no held-out row of store {store.path} is usable for layers {i} and {j}; "
                                      f"extract more tokens, or match without --store")
            edges = coactivation_edges(codes_a.select_rows(keep), codes_b.select_rows(keep), top,
                                       progress=progress, desc=f"co-activation {i}->{j}")
            edges.update(decoder_pair_columns(dec_a, dec_b, edges["src"], edges["dst"]))
        write_edges(edge_file(out, i, j), edges, {"src_layer": i, "dst_layer": j, "method": summary["method"],
                                                  "top": top})
        info.update(_edge_summary(edges, dec_a.shape[0]))
        info["seconds"] = round(time.perf_counter() - t0, 3)
        summary["pairs"].append(info)
        cached.pop(i, None)
    from ghosttrack.sae.files import write_json

    write_json(out / SUMMARY_FILE, summary)
    return summary


def _edge_summary(edges: dict[str, np.ndarray], n_src: int) -> dict[str, Any]:
    best = edges["score"][edges["rank"] == 0]
    q = np.quantile(best, [0.1, 0.5, 0.9]).tolist() if len(best) else [None] * 3
    return {"edges": int(len(edges["src"])), "sources_with_edges": int(len(best)),
            "sources_without_edges": int(n_src - len(best)),
            "best_score_p10_p50_p90": q}


def read_matches(matches: str | Path, layers: list[int]) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """The edge lists of every consecutive pair of `layers`; GhostTrackError naming the missing ones."""
    matches = Path(matches)
    if not matches.is_dir():
        raise GhostTrackError(f"no match folder at {matches}; run ghosttrack match --sae ... --out {matches} first")
    pairs = list(zip(layers[:-1], layers[1:]))
    missing = [edge_file(matches, i, j).name for i, j in pairs if not edge_file(matches, i, j).is_file()]
    if missing:
        raise GhostTrackError(f"{matches} lacks {', '.join(missing)}; rerun ghosttrack match with the same --sae "
                              f"folder")
    return {(i, j): read_edges(edge_file(matches, i, j)) for i, j in pairs}
