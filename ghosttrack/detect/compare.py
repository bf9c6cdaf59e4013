"""Paired comparisons of detection methods: does adding the tracks to the residual probe help?

Every method here is scored on the same out-of-fold rows, for several fold seeds (each seed its own
grouped folds, the candidate chosen inside each fold as in evaluate.py). A difference between two
methods is paired: one bootstrap resample of *groups* (questions) weights the rows of both methods'
scores alike, and the difference of their AUROCs is averaged over the fold seeds; the 95% interval
is the percentile interval of that average over the resamples. Resampling rows instead would treat
the answers of one question as independent and make every interval too narrow.

The methods (residual candidates: answer-mean residual at the compared layers, each C):

- resid: the residual probe alone;
- resid+tracks: each residual candidate with the track bag beside it (ghosttrack.detect.bags);
- resid+sae_bag: the same with the bag of active SAE latents instead (the features, no tracking);
- resid+shuffled_tracks: the track bag's rows permuted within each outer fold (a null: it keeps the
  block's distribution and loses its link to the rows; its difference from resid is 0 or, as extra
  noise columns under the same C cost a little, slightly below). The tracks' content is judged by
  resid+tracks against this null, which has the same number of columns;
- tracks_bag and answer_text alone (ghosttrack.detect.methods), the text baseline beside the claim.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from ghosttrack.detect.bags import latent_bag
from ghosttrack.detect.evaluate import Candidate, Method, auroc, cross_validate, make_folds
from ghosttrack.detect.features import FeatureSet

COMPARISONS = (
    ("resid+tracks vs resid", "resid+tracks", "resid"),
    ("resid+tracks vs resid+sae_bag", "resid+tracks", "resid+sae_bag"),
    ("null: resid+shuffled_tracks vs resid", "resid+shuffled_tracks", "resid"),
    ("resid+tracks vs resid+shuffled_tracks", "resid+tracks", "resid+shuffled_tracks"),
    ("tracks_bag vs answer_text", "tracks_bag", "answer_text"),
    ("resid vs answer_text", "resid", "answer_text"),
)


class BlockScaler(TransformerMixin, BaseEstimator):
    """The first `n_dense` columns standardised, the rest (a sparse block, values >= 0) divided by their
    maximum; columns constant on the fitted rows become 0. Output: CSR (the block stays sparse)."""

    def __init__(self, n_dense: int):
        self.n_dense = n_dense

    def fit(self, X, y=None):
        X = sp.csr_matrix(X)
        dense = X[:, :self.n_dense].toarray()
        self.mean_, std = dense.mean(0), dense.std(0)
        self.scale_ = np.where(std > 0, 1 / np.where(std > 0, std, 1), 0.0)
        block = X[:, self.n_dense:]
        top, low = block.max(axis=0).toarray().ravel(), block.min(axis=0).toarray().ravel()
        self.block_scale_ = np.where(top > low, 1 / np.where(top > 0, top, 1), 0.0)
        return self

    def transform(self, X):
        X = sp.csr_matrix(X)
        dense = (X[:, :self.n_dense].toarray() - self.mean_) * self.scale_
        return sp.hstack([sp.csr_matrix(dense), X[:, self.n_dense:] @ sp.diags(self.block_scale_)], format="csr")


def with_block(base: Method, name: str, block, description: str) -> Method:
    """Each candidate of `base` (a dense feature matrix and an L2 logistic with its C) with `block` beside it."""
    def stacked(c: Candidate):
        return lambda: sp.hstack([sp.csr_matrix(np.asarray(c.features(), np.float64)), block], format="csr")

    candidates = []
    for c in base.candidates:
        C = c.model.get_params()["logisticregression__C"]
        width = np.asarray(c.features()[:1]).shape[1]
        candidates.append(Candidate(f"{c.name} + {name}", stacked(c),
                                    make_pipeline(BlockScaler(width), LogisticRegression(C=C, max_iter=2000))))
    return Method(f"resid+{name}", description, candidates)


def within_fold_permutation(folds, n: int, rng: np.random.Generator) -> np.ndarray:
    """perm with perm[test rows of a fold] = those rows shuffled: block[perm] is shuffled inside each fold."""
    perm = np.arange(n)
    for _, test in folds:
        perm[test] = rng.permutation(test)
    return perm


def paired_delta(labels: np.ndarray, groups: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(AUROC(a) - AUROC(b) averaged over the fold seeds, and its percentile interval over bootstrap
    resamples of whole groups). scores_*: (n_seeds, N) out-of-fold scores on the same rows."""
    scores_a, scores_b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)

    def delta(weights=None) -> float:
        return float(np.mean([auroc(labels, a, weights) - auroc(labels, b, weights)
                              for a, b in zip(scores_a, scores_b)]))

    names, codes = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
        value = delta(counts[codes].astype(float))
        if not np.isnan(value):
            draws.append(value)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail]) if draws else (np.nan, np.nan)
    return delta(), float(lo), float(hi)


def comparison_methods(features: FeatureSet, methods: dict[str, Method], layers: list[int],
                       probe_c: tuple[float, ...], shuffle_perm: np.ndarray | None) -> list[Method]:
    """The methods the comparisons need that `features` can give (see the module doc)."""
    from ghosttrack.detect.methods import dense_classifier

    resid = Method("resid", f"residual probe, answer mean at layer(s) {layers}", [
        Candidate(f"layer {layer} mean C={C:g}", lambda k=features.layers.index(layer): np.asarray(
            features.resid_mean[k], np.float32), dense_classifier(C))
        for layer in layers for C in probe_c])
    out = [resid]
    if features.track_bag is not None:
        out.append(with_block(resid, "tracks", features.track_bag, "residual probe + the track bag"))
        if shuffle_perm is not None:
            out.append(with_block(resid, "shuffled_tracks", features.track_bag[shuffle_perm],
                                  "residual probe + the track bag shuffled within folds (null)"))
    if features.sae_active:
        out.append(with_block(resid, "sae_bag", latent_bag(features.sae_active)[0],
                              "residual probe + the bag of active SAE latents (no tracking)"))
    return out + [methods[name] for name in ("tracks_bag", "answer_text") if name in methods]


def run_comparisons(features: FeatureSet, methods: list[Method], labels: np.ndarray, groups: np.ndarray, *,
                    seeds: list[int], n_folds: int, inner_folds: int, layers: list[int], probe_c: tuple[float, ...],
                    n_boot: int, boot_seed: int = 0) -> tuple[list[dict], pd.DataFrame]:
    """(results.json "comparisons", the out-of-fold scores: method, fold_seed, fold, row, group, label, score)."""
    by_name = {m.name: m for m in methods}
    frames, scores = [], {}
    for seed in seeds:
        folds = make_folds(labels, groups, n_folds, seed)
        fold_of = np.zeros(len(labels), np.int64)
        for f, (_, test) in enumerate(folds):
            fold_of[test] = f
        perm = within_fold_permutation(folds, len(labels), np.random.default_rng([seed, 20]))
        for method in comparison_methods(features, by_name, layers, probe_c, perm):
            oof = cross_validate(method, labels, groups, folds, inner_folds=inner_folds, seed=seed)["scores"]
            scores.setdefault(method.name, []).append(oof)
            frames.append(pd.DataFrame({"method": method.name, "fold_seed": seed, "fold": fold_of,
                                        "row": np.arange(len(labels)), "group": groups, "label": labels,
                                        "score": oof}))
    results = []
    for name, a, b in COMPARISONS:
        if a in scores and b in scores:
            delta, lo, hi = paired_delta(labels, groups, np.stack(scores[a]), np.stack(scores[b]),
                                         n_boot=n_boot, seed=boot_seed)
            results.append({"name": name, "a": a, "b": b, "delta_auroc": delta, "ci": [lo, hi],
                            "auroc_a": float(np.mean([auroc(labels, s) for s in scores[a]])),
                            "auroc_b": float(np.mean([auroc(labels, s) for s in scores[b]])),
                            "fold_seeds": list(seeds)})
    return results, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
