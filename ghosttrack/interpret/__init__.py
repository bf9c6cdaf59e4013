"""Stage 5, interpretation: one streaming pass over the store, per-feature records, the static HTML browser."""
from ghosttrack.interpret.features import FeatureInterpreter, InterpretConfig, analyze_sae, print_feature_summary

__all__ = ["FeatureInterpreter", "InterpretConfig", "analyze_sae", "print_feature_summary"]
