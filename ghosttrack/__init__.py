"""GhostTrack: residual-stream activations to interpretable sparse-autoencoder features.

The original GhostTrack's names are importable from here; they load on first use so that
`import ghosttrack` (and `ghosttrack --help`) stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "WikipediaCorpus": "ghosttrack.corpus.sources",
    "open_corpus": "ghosttrack.corpus.sources",
    "HiddenStateExtractor": "ghosttrack.extract.extractor",
    "ExtractionPlan": "ghosttrack.extract.extractor",
    "load_model": "ghosttrack.extract.models",
    "SAETrainer": "ghosttrack.train.trainer",
    "train_sae_for_layer": "ghosttrack.train.layers",
    "SparseAutoencoder": "ghosttrack.sae.module",
    "load_sae": "ghosttrack.sae.module",
    "FeatureInterpreter": "ghosttrack.interpret.features",
    "analyze_sae": "ghosttrack.interpret.features",
    "print_feature_summary": "ghosttrack.interpret.features",
    "ActivationStore": "ghosttrack.store.reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ghosttrack' has no attribute {name!r}")
