"""GhostTrack: residual-stream activations to interpretable sparse-autoencoder features.

The original GhostTrack's names are importable from here; they load on first use so that
`import ghosttrack` (and `ghosttrack --help`) stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "WikipediaCorpus": "ghosttrack.corpus",
    "open_corpus": "ghosttrack.corpus",
    "HiddenStateExtractor": "ghosttrack.extractor",
    "ExtractionPlan": "ghosttrack.extractor",
    "load_model": "ghosttrack.models",
    "SAETrainer": "ghosttrack.trainer",
    "train_sae_for_layer": "ghosttrack.train_layers",
    "SparseAutoencoder": "ghosttrack.sae",
    "load_sae": "ghosttrack.sae",
    "FeatureInterpreter": "ghosttrack.interpret",
    "analyze_sae": "ghosttrack.interpret",
    "print_feature_summary": "ghosttrack.interpret",
    "ActivationStore": "ghosttrack.store.reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ghosttrack' has no attribute {name!r}")
