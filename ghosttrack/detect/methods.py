"""The detection methods compared side by side, each built from a FeatureSet.

(a) tracks: the hypothesis tracker's per-sequence statistics, standardised, logistic regression;
(b) resid_probe: logistic probe on the residual stream, one candidate per (layer, answer mean or
    last token, regularisation C), chosen inside the training folds;
(c) sae_probe: sparse probe on SAE latents: the k latents with the largest class-mean difference
    (picked on the training rows), then logistic regression; candidates per (SAE layer, position);
(d) logprob: the model's own mean log-probability of the answer;
(e) length: the answer's length in tokens; p_true: the model asked whether the answer is true (ptrue.py);
(f) answer_text: TF-IDF of the answer's words (1-2 grams), logistic: how much the wording alone gives;
(g) tracks_bag: which features the tracker followed (ghosttrack.detect.bags), L1 logistic, C chosen
    inside the training folds;
and a control, question_probe: the residual probe at the last token before the answer, which never
sees the answer. Where it matches the others, they read the question, not the answer.
Baselines (d) and (e) also go through a one-feature logistic fit, so their sign is learned on the
training folds rather than assumed.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_selection import SelectKBest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from ghosttrack.detect.evaluate import Candidate, Method
from ghosttrack.detect.features import FeatureSet

PROBE_C = (0.01, 1.0)  # inverse L2 strength on standardised features; picked per fold
SAE_TOP_K = 32  # latents kept by the sparse probe (Kantamneni et al. 2025 use k in 1..512)
TEXT_C = (0.1, 1.0, 10.0)  # inverse L2 strength of the answer-text probe; picked per fold
BAG_C = (0.03, 0.1, 0.3, 1.0)  # inverse L1 strength of the track-bag probe; picked per fold


def class_mean_difference(X, y):
    """|mean over class 1 - mean over class 0| per column (dense or sparse X): SelectKBest's score."""
    y = np.asarray(y)
    diff = np.asarray(X[y == 1].mean(axis=0)).ravel() - np.asarray(X[y == 0].mean(axis=0)).ravel()
    return np.abs(diff)


def _logistic(C: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=2000)


def dense_classifier(C: float = 1.0):
    return make_pipeline(StandardScaler(), _logistic(C))


class DropConstant(TransformerMixin, BaseEstimator):
    """Drop the columns constant on the fitted rows (dense or sparse). When every column is constant,
    one zero column is left: the classifier then scores every row alike (AUROC 0.5), as it should."""

    def fit(self, X, y=None):
        X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
        top, low = (np.asarray(X.max(axis=0).todense()).ravel(), np.asarray(X.min(axis=0).todense()).ravel()) \
            if sp.issparse(X) else (X.max(axis=0), X.min(axis=0))
        self.keep_ = np.flatnonzero(top > low)
        return self

    def transform(self, X):
        if len(self.keep_):
            return X[:, self.keep_]
        return sp.csr_matrix((X.shape[0], 1)) if sp.issparse(X) else np.zeros((X.shape[0], 1))


def _l1_logistic(C: float) -> LogisticRegression:
    import sklearn

    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8):  # `penalty` deprecated there
        return LogisticRegression(l1_ratio=1.0, solver="liblinear", C=C, max_iter=2000, random_state=0)
    return LogisticRegression(penalty="l1", solver="liblinear", C=C, max_iter=2000, random_state=0)


def text_probe(C: float = 1.0):
    """TF-IDF of the answer's words and word pairs (vocabulary fitted on the training rows), logistic."""
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), _logistic(C))


def bag_probe(C: float):
    """Columns constant on the training rows dropped, scaled to [0, 1], L1 logistic (few features kept)."""
    return make_pipeline(DropConstant(), MaxAbsScaler(), _l1_logistic(C))


def sparse_probe(k: int, C: float = 1.0):
    return make_pipeline(SelectKBest(class_mean_difference, k=k), MaxAbsScaler(), _logistic(C))


def _column(values: np.ndarray):
    return lambda: np.asarray(values, dtype=np.float64).reshape(-1, 1)


def build_methods(features: FeatureSet, *, probe_layers: list[int] | None = None, probe_c: tuple[float, ...] = PROBE_C,
                  sae_top_k: int = SAE_TOP_K, answers: list[str] | None = None) -> tuple[list[Method], list[dict]]:
    """(methods to evaluate, methods skipped with the reason), in the order (a)-(g).

    probe_layers: the layers the residual probe chooses among (default: every layer of `features`);
    answers: the answers' text, for (f)."""
    methods, skipped = [], []
    if features.track_stats is not None and features.track_stats.shape[1] > 0:
        # The span length is baseline (e) on its own: the tracker is not credited with it. Columns that
        # are constant (with TopK several are, by construction) are dropped on the training rows.
        keep = [i for i, name in enumerate(features.track_names) if name != "n_tokens"]
        stats = features.track_stats[:, keep]
        methods.append(Method("tracks", f"{len(keep)} tracker statistics pooled over the answer's tokens "
                              "(answer length and constant columns excluded), logistic",
                              [Candidate("track_stats", lambda: np.asarray(stats, np.float64),
                                         make_pipeline(DropConstant(), dense_classifier()))]))
        if features.track_bag is not None and features.track_bag.shape[1] > 0:
            methods.append(Method("tracks_bag", f"which features the tracker followed ({features.track_bag.shape[1]:,} "
                                  "memberships and edges, share of answer tokens), L1 logistic (C chosen inside "
                                  "the training folds)",
                                  [Candidate(f"bag C={C:g}", lambda: features.track_bag, bag_probe(C)) for C in BAG_C]))
    else:
        skipped.append({"name": "tracks", "reason": features.info.get(
            "tracks_missing", "no tracker statistics were computed (no --matches given)")})

    resid = []
    for k, layer in enumerate(features.layers):
        if probe_layers is not None and layer not in probe_layers:
            continue
        for position, array in (("mean", features.resid_mean), ("last", features.resid_last)):
            for C in probe_c:
                resid.append(Candidate(f"layer {layer} {position} C={C:g}",
                                       lambda a=array, k=k: np.asarray(a[k], np.float32), dense_classifier(C)))
    if resid:
        methods.append(Method("resid_probe", "logistic probe on the residual stream (layer, answer mean/last "
                              "token and C chosen inside the training folds)", resid))

    sae = []
    for layer in features.sae_layers:
        for position, matrices in (("mean", features.sae_mean), ("last", features.sae_last)):
            k = min(sae_top_k, matrices[layer].shape[1])
            sae.append(Candidate(f"layer {layer} {position} top-{k}", lambda m=matrices[layer]: m, sparse_probe(k)))
    if sae:
        methods.append(Method("sae_probe", f"top-{sae_top_k} SAE latents by class-mean difference, logistic "
                              "(SAE layer and position chosen inside the training folds)", sae))
    else:
        skipped.append({"name": "sae_probe", "reason": "no SAE given"})

    methods.append(Method("logprob", "the model's mean log-probability of the answer tokens",
                          [Candidate("answer_logprob", _column(features.answer_logprob), dense_classifier())]))
    methods.append(Method("length", "the answer's length in tokens",
                          [Candidate("answer_tokens", _column(features.answer_tokens), dense_classifier())]))
    if features.p_true is not None:
        methods.append(Method("p_true", "P(True): log p(Yes) - log p(No) when the model is asked whether the "
                              "answer is true", [Candidate("p_true", _column(features.p_true), dense_classifier())]))
    elif "p_true_missing" in features.info:
        skipped.append({"name": "p_true", "reason": features.info["p_true_missing"]})
    if answers is not None:
        text = np.asarray(answers, dtype=object)
        methods.append(Method("answer_text", "TF-IDF of the answer's words and word pairs, logistic (C chosen "
                              "inside the training folds): the wording alone",
                              [Candidate(f"tfidf C={C:g}", lambda: text, text_probe(C)) for C in TEXT_C]))
    if features.resid_prompt is not None:
        prompt = [Candidate(f"layer {layer} C={C:g}", lambda k=k: np.asarray(features.resid_prompt[k], np.float32),
                            dense_classifier(C))
                  for k, layer in enumerate(features.layers) if probe_layers is None or layer in probe_layers
                  for C in probe_c]
        methods.append(Method("question_probe", "control: residual probe at the last token before the answer "
                              "(never sees the answer; layer and C chosen inside the training folds)", prompt))
    return methods, skipped
