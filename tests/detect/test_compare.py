"""Paired comparisons (ghosttrack.detect.compare): intervals over questions, not rows; no difference
claimed where the labels depend on the question alone; a planted answer-side signal in which
features the tracker follows is found by the track bag (and not by the track counts)."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ghosttrack.detect.compare import paired_delta, run_comparisons
from ghosttrack.detect.evaluate import auroc, evaluate_method
from ghosttrack.detect.methods import build_methods

KW = dict(n_folds=3, inner_folds=2, layers=[0], probe_c=(1.0,))


def test_paired_interval_counts_questions_not_rows():
    """Copying every row of every question 8 times adds no questions: the paired interval keeps its
    width. A bootstrap over rows would shrink it about sqrt(8)-fold and exclude 0 here."""
    rng = np.random.default_rng(3)
    n = 120
    labels, groups = rng.integers(0, 2, n), np.arange(n)
    a = labels + rng.normal(scale=1.2, size=(2, n))
    b = labels + rng.normal(scale=1.3, size=(2, n))
    delta, lo, hi = paired_delta(labels, groups, a, b, n_boot=300, seed=0)
    rep = lambda x: np.repeat(x, 8, axis=-1)  # noqa: E731
    delta8, lo8, hi8 = paired_delta(rep(labels), rep(groups), rep(a), rep(b), n_boot=300, seed=0)
    assert delta == pytest.approx(np.mean([auroc(labels, x) - auroc(labels, y) for x, y in zip(a, b)]))
    assert delta8 == pytest.approx(delta)
    assert lo < delta < hi and (hi8 - lo8) == pytest.approx(hi - lo, rel=0.3)
    assert lo8 < 0 < hi8


def _question_only(n_groups=90, per_group=3, seed=0):
    from detect_helpers import question_only_features

    features, labels, groups = question_only_features(n_groups=n_groups, per_group=per_group, seed=seed,
                                                      n_layers=1, d_model=16, d_sae=24)
    rng = np.random.default_rng(seed + 1)
    per_question = rng.random((n_groups, 40)) < 0.15
    features.track_bag = sp.csr_matrix((per_question[groups] & (rng.random((len(groups), 40)) < 0.9)).astype(float))
    features.track_bag_names = [f"m{i}" for i in range(40)]
    features.sae_active = {0: sp.csr_matrix((features.sae_mean[0] > 0).astype(float))}
    answers = [f"word{g} kind{g % 5}" for g in groups]
    return features, labels, groups, answers


def test_question_only_labels_give_no_comparison_an_interval_excluding_zero():
    features, labels, groups, answers = _question_only()
    methods, _ = build_methods(features, probe_c=(1.0,), answers=answers)
    comparisons, oof = run_comparisons(features, methods, labels, groups, seeds=[0, 1], n_boot=200, **KW)
    assert {c["name"] for c in comparisons} == {"resid+tracks vs resid", "resid+tracks vs resid+sae_bag",
                                                "null: resid+shuffled_tracks vs resid", "tracks_bag vs answer_text",
                                                "resid+tracks vs resid+shuffled_tracks",
                                                "resid vs answer_text"}
    for c in comparisons:
        lo, hi = c["ci"]
        assert lo <= 0 <= hi, c
    # One out-of-fold score per row, method and fold seed; folds keep questions whole.
    assert len(oof) == 2 * 6 * len(labels) and not oof["score"].isna().any()
    assert (oof.groupby(["method", "fold_seed", "group"])["fold"].nunique() == 1).all()


def _planted_tracks(n_groups=100, per_group=2, seed=0):
    """Answers of one question get both labels; every answer token has 3 active latents per layer at
    layers 0 and 1 (2 of them random), and one pair that the tracker follows: from the set A (true
    answers) or B (false answers), chosen so that both classes have exactly one followed pair per token
    (the track counts cannot tell them apart)."""
    from detect_helpers import question_only_features
    from ghosttrack.detect.features import add_sae_features, add_track_features
    from ghosttrack.tracks.tracker import HypothesisTracker

    H = 32
    features, _, groups = question_only_features(n_groups=n_groups, per_group=per_group, seed=seed,
                                                 n_layers=1, d_model=16, d_sae=24)
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(per_group) % 2, n_groups)
    features.answer_tokens = rng.integers(2, 5, len(labels))
    perm = rng.permutation(H)
    tracker = HypothesisTracker([0, 1], {(0, 1): {"src": np.arange(H), "dst": perm, "score": np.full(H, 0.9)}},
                                {0: H, 1: H}, min_score=0.3)
    signal = {1: np.arange(0, 4), 0: np.arange(4, 8)}
    acts = {0: torch.zeros(features.answer_tokens.sum(), H), 1: torch.zeros(features.answer_tokens.sum(), H)}
    row = 0
    for label, n_tok in zip(labels, features.answer_tokens):
        for _ in range(n_tok):
            src = rng.choice(signal[label])
            acts[0][row, src], acts[1][row, perm[src]] = 1.0, 1.0
            # Two random latents per layer that never link (their edge targets are kept inactive).
            free = np.setdiff1d(np.arange(8, H), [src])
            a = rng.choice(free, 2, replace=False)
            b = rng.choice(np.setdiff1d(free, np.append(perm[a], perm[src])), 2, replace=False)
            acts[0][row, a], acts[1][row, b] = 1.0, 1.0
            row += 1
    features.sae_active = {}
    add_track_features(features, tracker, acts)
    return features, labels, groups


def test_planted_answer_side_signal_is_found_by_the_track_bag_alone():
    features, labels, groups = _planted_tracks()
    methods, _ = build_methods(features, probe_c=(1.0,))
    by_name = {m.name: m for m in methods}
    kw = dict(n_folds=3, inner_folds=2, n_boot=100, seed=0)
    bag = evaluate_method(by_name["tracks_bag"], labels, groups, **kw)
    assert bag["auroc"] > 0.95 and bag["auroc_ci"][0] > 0.9
    counts = evaluate_method(by_name["tracks"], labels, groups, **kw)
    assert counts["auroc_ci"][0] <= 0.5 <= counts["auroc_ci"][1]  # same counts in both classes (here constant)
    comparisons, _ = run_comparisons(features, methods, labels, groups, seeds=[0, 1], n_boot=200, **KW)
    found = {c["name"]: c for c in comparisons}
    assert found["resid+tracks vs resid"]["ci"][0] > 0.2
    assert found["resid+tracks vs resid+shuffled_tracks"]["ci"][0] > 0.2
    lo, hi = found["null: resid+shuffled_tracks vs resid"]["ci"]
    assert lo <= 0 <= hi
