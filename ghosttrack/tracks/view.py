"""`ghosttrack track`'s outputs: tracks.json, per-token statistics as Parquet, and a static HTML view.

The view (open index.html from disk, no server) shows the text's tokens; for the chosen token,
the layers as columns and its strongest tracks as flows across them, each latent labelled with
its most common activating tokens and linked to its page in the feature browser (`ghosttrack
interpret --out DIR` writes DIR/layer_<i>/index.html, whose feature pages are
index.html#feature=<id>), each step of a flow with the score of the matched edge on hover. As in the feature browser, the data travels
as a JavaScript file (browsers block fetch on file:// pages) and is inserted with textContent.
"""
from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ghosttrack.errors import GhostTrackError
from ghosttrack.tracks.stats import PER_LAYER, PER_TOKEN, token_statistics
from ghosttrack.tracks.tracker import TrackResult

TRACKS_FILE = "tracks.json"
STATS_FILE = "token_stats.parquet"
DATA_FILE = "tracks_data.js"
SHOWN_TRACKS = 8
"""Strongest tracks drawn per token."""
LABEL_TOKENS = 3
"""Common tokens shown on each latent of the flow."""


def browser_links(interp: str | Path | None, layers: list[int], out: str | Path) -> dict[int, str | None]:
    """Per layer, the feature browser's index.html relative to `out` (None where there is none)."""
    if interp is None:
        return {layer: None for layer in layers}
    interp = Path(interp)
    links = {layer: (interp / f"layer_{layer}" / "index.html") for layer in layers}
    if not any(p.is_file() for p in links.values()):
        raise GhostTrackError(f"{interp} holds no feature browser for layers {', '.join(map(str, layers))} "
                              f"(layer_<i>/index.html); pass the --out folder of ghosttrack interpret")
    return {layer: (Path(os.path.relpath(p.resolve(), Path(out).resolve())).as_posix() if p.is_file() else None)
            for layer, p in links.items()}


def latent_labels(interp: str | Path | None, layers: list[int]) -> dict[int, list | None]:
    """Per layer, each latent's most common activating tokens [[token, count], ...] from the feature
    browser that `ghosttrack interpret --out interp` wrote (None for a layer without one)."""
    from ghosttrack.interpret.browser import read_common_tokens

    if interp is None:
        return {layer: None for layer in layers}
    return {layer: read_common_tokens(Path(interp) / f"layer_{layer}") for layer in layers}


def stats_table(result: TrackResult, token_ids: list[int], pieces: list[str]) -> dict[str, np.ndarray]:
    """Per-token statistics as flat columns: token, token_id, piece, PER_TOKEN, then <stat>_layer<i>."""
    stats = token_statistics(result)
    cols: dict[str, Any] = {"token": np.arange(result.n_tokens, dtype=np.int32),
                            "token_id": np.asarray(token_ids, np.int64), "piece": np.asarray(pieces, dtype=object)}
    for name in PER_TOKEN:
        cols[name] = stats[name].astype(np.float32)
    for name in PER_LAYER:
        for k, layer in enumerate(result.layers):
            cols[f"{name}_layer{layer}"] = stats[name][:, k].astype(np.float32)
    return cols


def view_payload(result: TrackResult, pieces: list[str], links: dict[int, str | None], *, title: str,
                 shown: int = SHOWN_TRACKS, labels: dict[int, list | None] | None = None,
                 edge_score: Callable[[int, int, int], float | None] | None = None) -> dict[str, Any]:
    """What the page draws: tokens, layers, links, and per token its strongest tracks and statistics.

    labels[layer][latent]: its common tokens (see `latent_labels`), kept for the drawn latents only;
    edge_score(k, src, dst): the matched edge's score from layers[k-1] to layers[k] (each track step
    gets its `scores`, None where unknown)."""
    stats = token_statistics(result)
    strength = result.track_strength()
    order = np.lexsort((-strength, result.track_token))
    tok_sorted = result.track_token[order]
    starts = np.searchsorted(tok_sorted, np.arange(result.n_tokens))
    stops = np.searchsorted(tok_sorted, np.arange(result.n_tokens), side="right")
    wanted = np.concatenate([order[a:min(b, a + shown)] for a, b in zip(starts, stops)]) if result.n_tokens else []
    tracks = {t.id: t for t in result.tracks(np.asarray(wanted, dtype=np.int64))}
    column = {layer: k for k, layer in enumerate(result.layers)}
    drawn: list[dict[int, list[str]]] = [{} for _ in result.layers]
    per_token = []
    for t in range(result.n_tokens):
        ids = order[starts[t]:min(stops[t], starts[t] + shown)].tolist()
        shown_tracks = []
        for i in ids:
            track = {**tracks[i].to_dict(), "strength": round(float(strength[i]), 4)}
            chain = track["chain"]
            for layer, feat, _ in chain:
                table = (labels or {}).get(layer)
                if table is not None and feat < len(table):
                    drawn[column[layer]][feat] = [tok for tok, _ in table[feat][:LABEL_TOKENS]]
            if edge_score is not None:
                track["scores"] = [edge_score(column[b[0]], a[1], b[1]) for a, b in zip(chain, chain[1:])]
            shown_tracks.append(track)
        per_token.append({
            "stats": {name: round(float(stats[name][t]), 4) for name in PER_TOKEN},
            "alive": stats["alive"][t].astype(int).tolist(),
            "tracks": shown_tracks,
        })
    return {"title": title, "layers": result.layers, "pieces": pieces,
            "links": [links.get(layer) for layer in result.layers], "tokens": per_token,
            "labels": [{str(f): toks for f, toks in d.items()} for d in drawn]}


def _js_call(function: str, payload: Any) -> str:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    return f"{function}({text});\n"


def write_outputs(out: str | Path, result: TrackResult, token_ids: list[int], pieces: list[str], *,
                  meta: dict[str, Any], links: dict[int, str | None], shown: int = SHOWN_TRACKS,
                  labels: dict[int, list | None] | None = None,
                  edge_score: Callable[[int, int, int], float | None] | None = None) -> Path:
    """Write tracks.json, token_stats.parquet, tracks_data.js and index.html into `out`; returns the page.
    `labels` and `edge_score`: see `view_payload`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ghosttrack.sae.files import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / TRACKS_FILE, {**meta, "layers": result.layers, "token_ids": list(map(int, token_ids)),
                                   "pieces": pieces, "n_tracks": result.n_tracks,
                                   "tracks": [t.to_dict() for t in result.tracks()]})
    tmp = out / f".{STATS_FILE}.tmp"
    pq.write_table(pa.table(stats_table(result, token_ids, pieces)), tmp)
    tmp.replace(out / STATS_FILE)
    title = "GhostTrack tracks" + (f" - {Path(str(meta['model'])).name}" if meta.get("model") else "")
    (out / DATA_FILE).write_text(_js_call("GT.tracks", view_payload(result, pieces, links, title=title, shown=shown,
                                                                    labels=labels, edge_score=edge_score)),
                                 encoding="utf-8")
    template = resources.files("ghosttrack.tracks").joinpath("templates/tracks.html").read_text(encoding="utf-8")
    page = out / "index.html"
    page.write_text(template.replace("__TITLE__", html.escape(title)), encoding="utf-8")
    return page
