"""Stage 6, detection: track statistics and strong baselines scored on question/answer data,
with splits grouped by question, AUROC with bootstrap intervals over groups, and transfer."""
from ghosttrack.detect.data import Examples, load_examples
from ghosttrack.detect.evaluate import evaluate_method, evaluate_transfer, group_bootstrap_ci, make_folds
from ghosttrack.detect.features import FeatureSet, compute_features
from ghosttrack.detect.methods import build_methods
from ghosttrack.detect.pipeline import DetectConfig, run_detection

__all__ = ["DetectConfig", "Examples", "FeatureSet", "build_methods", "compute_features", "evaluate_method",
           "evaluate_transfer", "group_bootstrap_ci", "load_examples", "make_folds", "run_detection"]
