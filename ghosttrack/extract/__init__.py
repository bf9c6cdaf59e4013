"""Stage 2, extraction: load a model, hook its residual stream, run one forward pass per batch into the store."""
from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor
from ghosttrack.extract.models import LoadedModel, load_model

__all__ = ["ExtractionPlan", "HiddenStateExtractor", "LoadedModel", "load_model"]
