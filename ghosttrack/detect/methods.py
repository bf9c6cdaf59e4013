"""The detection methods compared side by side, each built from a FeatureSet.

(a) tracks: the hypothesis tracker's per-sequence statistics, standardised, logistic regression;
(b) resid_probe: logistic probe on the residual stream, one candidate per (layer, answer mean or
    last token, regularisation C), chosen inside the training folds;
(c) sae_probe: sparse probe on SAE latents: the k latents with the largest class-mean difference
    (picked on the training rows), then logistic regression; candidates per (SAE layer, position);
(d) logprob: the model's own mean log-probability of the answer;
(e) length: the answer's length in tokens;
and a control, question_probe: the residual probe at the last token before the answer, which never
sees the answer. Where it matches the others, they read the question, not the answer.
Baselines (d) and (e) also go through a one-feature logistic fit, so their sign is learned on the
training folds rather than assumed.
"""
from __future__ import annotations

import numpy as np
from sklearn.feature_selection import SelectKBest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from ghosttrack.detect.evaluate import Candidate, Method
from ghosttrack.detect.features import FeatureSet

PROBE_C = (0.01, 1.0)  # inverse L2 strength on standardised features; picked per fold
SAE_TOP_K = 32  # latents kept by the sparse probe (Kantamneni et al. 2025 use k in 1..512)


def class_mean_difference(X, y):
    """|mean over class 1 - mean over class 0| per column (dense or sparse X): SelectKBest's score."""
    y = np.asarray(y)
    diff = np.asarray(X[y == 1].mean(axis=0)).ravel() - np.asarray(X[y == 0].mean(axis=0)).ravel()
    return np.abs(diff)


def _logistic(C: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=2000)


def dense_classifier(C: float = 1.0):
    return make_pipeline(StandardScaler(), _logistic(C))


def sparse_probe(k: int, C: float = 1.0):
    return make_pipeline(SelectKBest(class_mean_difference, k=k), MaxAbsScaler(), _logistic(C))


def _column(values: np.ndarray):
    return lambda: np.asarray(values, dtype=np.float64).reshape(-1, 1)


def build_methods(features: FeatureSet, *, probe_layers: list[int] | None = None, probe_c: tuple[float, ...] = PROBE_C,
                  sae_top_k: int = SAE_TOP_K) -> tuple[list[Method], list[dict]]:
    """(methods to evaluate, methods skipped with the reason), in the order (a)-(e).

    probe_layers: the layers the residual probe chooses among (default: every layer of `features`)."""
    methods, skipped = [], []
    if features.track_stats is not None and features.track_stats.shape[1] > 0:
        # The span length is baseline (e) on its own: the tracker is not credited with it.
        keep = [i for i, name in enumerate(features.track_names) if name != "n_tokens"]
        stats = features.track_stats[:, keep]
        methods.append(Method("tracks", f"{len(keep)} tracker statistics pooled over the answer's tokens "
                              "(answer length excluded), logistic",
                              [Candidate("track_stats", lambda: np.asarray(stats, np.float64), dense_classifier())]))
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
    if features.resid_prompt is not None:
        prompt = [Candidate(f"layer {layer} C={C:g}", lambda k=k: np.asarray(features.resid_prompt[k], np.float32),
                            dense_classifier(C))
                  for k, layer in enumerate(features.layers) if probe_layers is None or layer in probe_layers
                  for C in probe_c]
        methods.append(Method("question_probe", "control: residual probe at the last token before the answer "
                              "(never sees the answer; layer and C chosen inside the training folds)", prompt))
    return methods, skipped
