"""Grouped folds, nested candidate choice, AUROC and its group bootstrap, transfer."""
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from ghosttrack.detect.evaluate import (Candidate, Method, auroc, cross_validate, evaluate_method,
                                        evaluate_transfer, group_bootstrap_ci, make_folds)


@pytest.mark.parametrize("n, n_values", [(1, 1), (7, 3), (200, 5), (513, 1000)])
def test_auroc_equals_sklearn_with_ties_and_weights(n, n_values):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2, n)
    labels[: min(2, n)] = [0, 1][: min(2, n)]
    scores = rng.integers(0, n_values, n).astype(float)  # few distinct values: many ties
    weights = rng.integers(0, 4, n).astype(float)
    weights[: min(2, n)] = 1
    if len(np.unique(labels)) < 2:
        assert np.isnan(auroc(labels, scores))
        return
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc(labels, scores, weights) == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights))
    assert np.isnan(auroc(np.ones(n, int), scores))


def test_grouped_folds_never_share_a_group_and_test_every_row_once():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 97, 1000)  # uneven group sizes
    labels = rng.integers(0, 2, 1000)
    folds = make_folds(labels, groups, 5, seed=3)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(1000))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1000
    # The row split (kept only to show the leak) does share groups; so the check above can fail.
    assert any(set(groups[tr]) & set(groups[te]) for tr, te in make_folds(labels, groups, 5, seed=3, split="row"))


def test_bootstrap_interval_is_over_groups_not_rows():
    """Copying every row of every group 10 times adds no questions: the group bootstrap keeps the
    interval's width; a bootstrap over rows would shrink it about sqrt(10)-fold."""
    rng = np.random.default_rng(1)
    groups = np.arange(150)
    labels = rng.integers(0, 2, 150)
    scores = labels + rng.normal(scale=1.5, size=150)
    lo, hi = group_bootstrap_ci(labels, scores, groups, n_boot=400, seed=0)
    lo10, hi10 = group_bootstrap_ci(np.repeat(labels, 10), np.repeat(scores, 10), np.repeat(groups, 10),
                                    n_boot=400, seed=0)
    assert lo < auroc(labels, scores) < hi
    assert (hi10 - lo10) == pytest.approx(hi - lo, rel=0.25)
    assert hi - lo > 0.1


class RowRecorder(BaseEstimator, ClassifierMixin):
    """Scores rows by column 1 and records the row ids (column 0) of every fit."""

    log: list = []

    def fit(self, X, y):
        RowRecorder.log.append(set(X[:, 0].astype(int).tolist()))
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-X[:, 1]))
        return np.stack([1 - p, p], axis=1)


def _spy_method(n: int, n_candidates: int, rng) -> Method:
    ids = np.arange(n, dtype=float)[:, None]
    matrices = [np.hstack([ids, rng.normal(size=(n, 1))]) for _ in range(n_candidates)]
    return Method("spy", "records its fits", [Candidate(f"c{i}", lambda m=m: m, RowRecorder())
                                              for i, m in enumerate(matrices)])


def test_candidate_is_chosen_on_the_training_rows_of_each_fold_only():
    rng = np.random.default_rng(2)
    n = 120
    labels, groups = rng.integers(0, 2, n), rng.integers(0, 40, n)
    folds = make_folds(labels, groups, 4, seed=0)
    RowRecorder.log = []
    cross_validate(_spy_method(n, 3, rng), labels, groups, folds, inner_folds=2, seed=0)
    fits_per_fold = 3 * 2 + 1  # every candidate on every inner fold, then the chosen one on all training rows
    assert len(RowRecorder.log) == 4 * fits_per_fold
    for k, (train, test) in enumerate(folds):
        fits = RowRecorder.log[k * fits_per_fold:(k + 1) * fits_per_fold]
        assert fits[-1] == set(train.tolist())
        assert all(not (rows & set(test.tolist())) for rows in fits), f"fold {k}: a fit saw its test rows"


def test_transfer_fits_on_the_training_source_only():
    rng = np.random.default_rng(3)
    train_method, test_method = _spy_method(60, 2, rng), _spy_method(50, 2, rng)
    RowRecorder.log = []
    result = evaluate_transfer(train_method, test_method, rng.integers(0, 2, 60), np.arange(60) // 2,
                               rng.integers(0, 2, 50), np.arange(50) // 2, inner_folds=2, n_boot=20)
    assert RowRecorder.log[-1] == set(range(60)) and result["n_test"] == 50 and result["n_groups"] == 25


def test_probe_finds_the_one_layer_with_signal():
    """Positive control for the nested choice: a label signal in layer 5 only is found in every fold."""
    from detect_helpers import noise_layers_features
    from ghosttrack.detect.methods import build_methods

    features, labels, groups = noise_layers_features(n=200, n_layers=8, signal_layer=5, signal=2.0)
    methods, _ = build_methods(features, probe_c=(1.0,))
    probe = next(m for m in methods if m.name == "resid_probe")
    result = evaluate_method(probe, labels, groups, n_folds=3, inner_folds=2, n_boot=50)
    assert {c["candidate"] for c in result["chosen"]} == {"layer 5 mean C=1"}
    assert result["auroc"] > 0.8


def test_question_only_labels_score_chance_under_the_grouped_split_and_not_under_the_row_split():
    """The leak guard: each question's answers share a random label and every feature identifies
    the question. Kept apart by group, every method is at chance; split by row, the probes learn
    to recognise questions seen in training and score far above it (the original's 98.5%)."""
    from detect_helpers import question_only_features
    from ghosttrack.detect.methods import build_methods

    features, labels, groups = question_only_features(n_groups=200, per_group=3, n_layers=2, d_model=128, d_sae=128)
    methods, skipped = build_methods(features, probe_c=(1.0,))
    assert [m.name for m in methods] == ["tracks", "resid_probe", "sae_probe", "logprob", "length",
                                         "question_probe"] and not skipped
    kwargs = dict(n_folds=4, inner_folds=2, n_boot=50, seed=0)
    grouped = {m.name: evaluate_method(m, labels, groups, **kwargs)["auroc"] for m in methods}
    by_row = {m.name: evaluate_method(m, labels, groups, split="row", **kwargs)["auroc"] for m in methods
              if m.name in ("resid_probe", "sae_probe", "question_probe")}
    assert all(abs(value - 0.5) < 0.12 for value in grouped.values()), grouped
    assert by_row["resid_probe"] > 0.75 and by_row["question_probe"] > 0.75 and by_row["sae_probe"] > 0.6, by_row


def test_methods_without_tracker_or_sae_are_reported_as_skipped_with_the_reason():
    from detect_helpers import noise_layers_features
    from ghosttrack.detect.methods import build_methods

    features, _, _ = noise_layers_features(n=20, n_layers=2)
    features.info["tracks_missing"] = "no --matches given"
    methods, skipped = build_methods(features)
    assert [m.name for m in methods] == ["resid_probe", "logprob", "length"]
    assert skipped == [{"name": "tracks", "reason": "no --matches given"}, {"name": "sae_probe", "reason": "no SAE given"}]
