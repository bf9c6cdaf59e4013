"""Grouped cross-validation of detection methods: AUROC with a bootstrap interval over groups, and transfer.

A method is a list of candidates (a feature matrix and a classifier each: one per layer and token
position for the probes). Each outer fold picks its candidate by an inner grouped cross-validation
on its own training rows only, fits it on those rows and scores its test rows; the test rows never
take part in the choice. Folds are grouped (`StratifiedGroupKFold`): a group, by default a question,
is never in both training and test. `split="row"` ignores groups; it exists to show the leak.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

SPLITS = ("group", "row")


@dataclass(frozen=True)
class Candidate:
    """One feature matrix (N, F), dense or scipy-sparse, and the classifier fitted on it."""

    name: str
    features: Callable[[], object]  # called when needed: the matrices of all layers need not be in memory at once
    model: object  # an unfitted sklearn estimator with predict_proba


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    candidates: list[Candidate]


def make_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int,
               split: str = "group") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per fold; with split="group" no group is on both sides."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    dummy = np.zeros(len(labels))
    if split == "group":
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(dummy, labels, groups)
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(dummy, labels)
    return [(train, test) for train, test in folds]


def auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (NaN when a class is absent): the weighted probability that a positive
    scores above a negative, ties counting one half. Equals sklearn's roc_auc_score (tested), without
    its per-call overhead, which dominates the bootstrap."""
    labels = np.asarray(labels)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    _, value_index = np.unique(np.asarray(scores), return_inverse=True)
    n_values = int(value_index.max()) + 1 if len(labels) else 0
    positive_U = np.bincount(value_index, weights * (labels == 1), minlength=n_values)
    negative_U = np.bincount(value_index, weights * (labels != 1), minlength=n_values)
    total_pos, total_neg = positive_U.sum(), negative_U.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    negatives_below_U = np.cumsum(negative_U) - negative_U
    return float((positive_U * (negatives_below_U + 0.5 * negative_U)).sum() / (total_pos * total_neg))


def group_bootstrap_ci(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUROC over resamples of whole groups (with replacement).

    A group drawn c times counts each of its rows c times (sample weights), so rows of one
    question move together: the interval reflects the number of questions, not of rows.
    """
    names, codes = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
        value = auroc(labels, scores, counts[codes].astype(float))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _fit_scores(candidate: Candidate, X, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    model = clone(candidate.model).fit(X[train], labels[train])
    return model.predict_proba(X[test])[:, 1]


def choose_candidate(method: Method, rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                     inner_folds: int, seed: int, split: str = "group") -> tuple[int, float]:
    """(index, inner AUROC) of the best candidate judged on `rows` alone by an inner cross-validation."""
    if len(method.candidates) == 1:
        return 0, float("nan")
    folds = make_folds(labels[rows], groups[rows], inner_folds, seed, split)
    best, best_auc = 0, -np.inf
    for index, candidate in enumerate(method.candidates):
        X = candidate.features()[rows]
        scores = np.zeros(len(rows))
        for train, test in folds:
            scores[test] = _fit_scores(candidate, X, labels[rows], train, test)
        value = auroc(labels[rows], scores)
        if value > best_auc:
            best, best_auc = index, value
    return best, float(best_auc)


def cross_validate(method: Method, labels: np.ndarray, groups: np.ndarray, folds, *, inner_folds: int,
                   seed: int, split: str = "group") -> dict:
    """Out-of-fold scores of `method` (candidate chosen per fold, nested) and what each fold chose."""
    scores = np.full(len(labels), np.nan)
    chosen, fold_aurocs = [], []
    for train, test in folds:
        index, inner = choose_candidate(method, train, labels, groups, inner_folds=inner_folds, seed=seed, split=split)
        candidate = method.candidates[index]
        scores[test] = _fit_scores(candidate, candidate.features(), labels, train, test)
        chosen.append({"candidate": candidate.name, "inner_auroc": inner})
        fold_aurocs.append(auroc(labels[test], scores[test]))
    return {"scores": scores, "chosen": chosen, "fold_aurocs": fold_aurocs}


def _scored(method: Method, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, *, n_boot: int,
            seed: int) -> dict:
    """The record every result shares: the method, its AUROC on these scores and its group-bootstrap CI."""
    return {
        "name": method.name,
        "description": method.description,
        "auroc": auroc(labels, scores),
        "auroc_ci": list(group_bootstrap_ci(labels, scores, groups, n_boot=n_boot, seed=seed)),
        "n_test": int(len(labels)),
        "n_groups": int(len(np.unique(groups))),
    }


def evaluate_method(method: Method, labels: np.ndarray, groups: np.ndarray, *, n_folds: int = 5,
                    inner_folds: int = 3, seed: int = 0, n_boot: int = 1000, split: str = "group",
                    scores_out: dict | None = None) -> dict:
    """In-distribution result of one method: pooled out-of-fold AUROC, its group-bootstrap CI, per-fold AUROCs.
    scores_out, when given, receives the out-of-fold scores under the method's name."""
    folds = make_folds(labels, groups, n_folds, seed, split)
    result = cross_validate(method, labels, groups, folds, inner_folds=inner_folds, seed=seed, split=split)
    scores = result["scores"]
    if scores_out is not None:
        scores_out[method.name] = scores
    fold_aurocs = np.asarray(result["fold_aurocs"])
    return {**_scored(method, labels, scores, groups, n_boot=n_boot, seed=seed),
            "fold_auroc_mean": float(np.nanmean(fold_aurocs)),
            "fold_auroc_sd": float(np.nanstd(fold_aurocs)),
            "chosen": result["chosen"]}


def evaluate_transfer(train_method: Method, test_method: Method, train_labels: np.ndarray, train_groups: np.ndarray,
                      test_labels: np.ndarray, test_groups: np.ndarray, *, inner_folds: int = 3, seed: int = 0,
                      n_boot: int = 1000) -> dict:
    """Fit on all of one source (candidate chosen by grouped CV there), score every row of the other."""
    names = [c.name for c in train_method.candidates], [c.name for c in test_method.candidates]
    if names[0] != names[1]:
        raise ValueError(f"{train_method.name}: the two sources have different candidates {names}")
    all_rows = np.arange(len(train_labels))
    index, inner = choose_candidate(train_method, all_rows, train_labels, train_groups,
                                    inner_folds=inner_folds, seed=seed)
    fitted = train_method.candidates[index]
    model = clone(fitted.model).fit(fitted.features(), train_labels)
    scores = model.predict_proba(test_method.candidates[index].features())[:, 1]
    return {**_scored(train_method, test_labels, scores, test_groups, n_boot=n_boot, seed=seed),
            "chosen": [{"candidate": fitted.name, "inner_auroc": inner}]}
