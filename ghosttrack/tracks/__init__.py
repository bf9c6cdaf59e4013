"""Stage 6, hypothesis tracking: SAE latents matched across layers and followed token by token.

Modules, in the order the data flows:

- `saes`: the per-layer SAE folders of a run (DIR/layer_<i>/), checked from cfg.json.
- `match`: data-free matching (decoder rows after folding thresholds, SAE Match), blocked with a
  running top-N; `coact`: co-activation over the store's held-out rows; `edges`: `ghosttrack match`
  (OUT/layer_<i>_to_<j>.parquet with src, dst, score, ... and summary.json).
- `tracker`: the `Track` dataclass and the vectorised `HypothesisTracker` (`reference`: the same
  rules in plain Python, the oracle of the tests).
- `stats`: per-token and per-example statistics; `pipeline`: text -> one forward pass -> tracks;
  `view`: tracks.json, token_stats.parquet and the HTML view.

For the detection stage, three calls:

    from ghosttrack.tracks import TrackingPipeline, track_statistics

    pipe = TrackingPipeline.open(model, sae_dir, matches_dir, device="cpu")   # checks, then loads once
    tracked = pipe.track_text(question + answer)        # TrackedText: .result, .token_ids, .pieces
    # or: result = pipe.track_ids(torch.tensor([ids]))  # TrackResult for (1, T) token ids
    X, names = track_statistics(results, spans=None)

`track_statistics(results: Sequence[TrackResult], spans: Sequence[tuple[int, int]] | None = None)
-> tuple[np.ndarray, list[str]]`: X has shape (len(results), n_features), float32, one row per
example; spans[e] = (start, stop) picks the tokens of example e that are pooled (e.g. the answer's
tokens; None: every token). The columns (`names`, fixed for a given list of layers, see
`stats.feature_names(layers)`) are, in order:

- `<stat>_layer<L>_mean` for stat in alive, births, splits, deaths, merges and every tracked layer
  L: the mean over the span's tokens of that count at that layer;
- `<stat>_mean`, `<stat>_max` for stat in n_tracks, length_mean, length_max, full_tracks,
  competing_final, dominant_share, dominant_margin, dominant_length (stats.py defines each);
- `n_tokens`: the span's length.

All results must come from the same SAE layers. `stats.token_statistics(result)` gives the
per-token arrays behind these columns.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Track": "ghosttrack.tracks.tracker",
    "TrackResult": "ghosttrack.tracks.tracker",
    "HypothesisTracker": "ghosttrack.tracks.tracker",
    "TrackingPipeline": "ghosttrack.tracks.pipeline",
    "track_statistics": "ghosttrack.tracks.stats",
    "token_statistics": "ghosttrack.tracks.stats",
    "feature_names": "ghosttrack.tracks.stats",
    "run_matching": "ghosttrack.tracks.edges",
    "read_matches": "ghosttrack.tracks.edges",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `import ghosttrack.tracks.<module>` does not pull in the model-loading code.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ghosttrack.tracks' has no attribute {name!r}")
