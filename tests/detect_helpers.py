"""Synthetic detection features for tests of the evaluation (no model run)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ghosttrack.detect.features import FeatureSet


def question_only_features(n_groups: int = 300, per_group: int = 4, seed: int = 0, *, n_layers: int = 3,
                           d_model: int = 64, d_sae: int = 96, n_stats: int = 12):
    """(FeatureSet, labels, groups) where each label is a coin flip per question, shared by its answers,
    and every feature is the question's own random vector plus noise: a method can only learn the
    label by recognising a question it has seen in training."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    labels = rng.integers(0, 2, n_groups)[groups]
    n = len(groups)

    def per_question(width: int, noise: float = 0.3) -> np.ndarray:
        return rng.normal(size=(n_groups, width))[groups] + noise * rng.normal(size=(n, width))

    resid_mean = np.stack([per_question(d_model) for _ in range(n_layers)]).astype(np.float16)
    resid_last = np.stack([per_question(d_model) for _ in range(n_layers)]).astype(np.float16)
    sae = {layer: sp.csr_matrix(np.maximum(per_question(d_sae) - 1.0, 0)) for layer in (0, 1)}
    sae_last = {layer: sp.csr_matrix(np.maximum(per_question(d_sae) - 1.0, 0)) for layer in (0, 1)}
    features = FeatureSet(
        layers=list(range(n_layers)), resid_mean=resid_mean, resid_last=resid_last, sae_layers=[0, 1],
        sae_mean=sae, sae_last=sae_last, answer_logprob=per_question(1)[:, 0],
        answer_tokens=rng.integers(1, 5, n_groups)[groups] + rng.integers(0, 2, n),
        resid_prompt=np.stack([per_question(d_model) for _ in range(n_layers)]).astype(np.float16),
        track_stats=per_question(n_stats), track_names=[f"stat{i}" for i in range(n_stats)],
    )
    return features, labels, groups


def noise_layers_features(n: int = 600, n_layers: int = 40, width: int = 2, seed: int = 0,
                          signal_layer: int | None = None, signal: float = 0.0):
    """(FeatureSet, labels, groups): one row per group; every layer is noise, except `signal_layer`
    whose first column is shifted by `signal` x label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    resid = rng.normal(size=(2, n_layers, n, width))
    if signal_layer is not None:
        resid[0, signal_layer, :, 0] += signal * labels
    features = FeatureSet(
        layers=list(range(n_layers)), resid_mean=resid[0].astype(np.float16), resid_last=resid[1].astype(np.float16),
        sae_layers=[], sae_mean={}, sae_last={}, answer_logprob=rng.normal(size=n),
        answer_tokens=rng.integers(1, 9, n),
    )
    return features, labels, np.arange(n)
