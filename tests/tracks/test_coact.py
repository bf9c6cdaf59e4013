"""Co-activation matching: equal to a dense reference on held-out rows, and a planted permutation."""
import json

import numpy as np
import pytest
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.store.loader import split_chunks
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import write_synthetic_store
from ghosttrack.tracks.coact import coactivation_edges
from ghosttrack.tracks.codes import SparseCodes
from ghosttrack.tracks.edges import edge_file, read_edges, run_matching
from tracks_helpers import permuted_sae, random_sae, save_layer, write_rotated_store

D = 24


def dense_coactivation(A: np.ndarray, B: np.ndarray, top: int):
    """Correlation of every pair of columns (float64), pairs that never fire together left out."""
    n = len(A)
    ma, mb = A.mean(0), B.mean(0)
    cov = A.T @ B / n - np.outer(ma, mb)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(A.std(0), B.std(0))
    both = (A > 0).astype(np.float64).T @ (B > 0)
    corr[both == 0] = -np.inf
    idx = np.argsort(-corr, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(corr, idx, 1), idx, both


@pytest.mark.parametrize("budget", [1 << 22, 7, 1])
def test_sparse_coactivation_equals_dense(budget):
    rng = np.random.default_rng(0)
    A = np.where(rng.random((300, 19)) < 0.2, rng.random((300, 19)), 0).astype(np.float32)
    B = np.where(rng.random((300, 23)) < 0.15, rng.random((300, 23)), 0).astype(np.float32)
    B[:, 3] = A[:, 5] * 2  # a perfectly correlated pair
    A[:, 7] = 0  # a dead latent has no candidates
    edges = coactivation_edges(SparseCodes.from_dense(torch.from_numpy(A)), SparseCodes.from_dense(torch.from_numpy(B)),
                               4, pair_budget=budget, progress=False)
    vals, idx, both = dense_coactivation(A.astype(np.float64), B.astype(np.float64), 4)
    for s in range(19):
        mine = edges["src"] == s
        finite = np.isfinite(vals[s])
        assert edges["dst"][mine].tolist() == idx[s][finite].tolist(), s
        np.testing.assert_allclose(edges["score"][mine], vals[s][finite], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(edges["coact_count"][mine], both[s, idx[s][finite]])
    assert not np.any(edges["src"] == 7)
    best5 = (edges["src"] == 5) & (edges["rank"] == 0)
    assert edges["dst"][best5] == [3] and edges["score"][best5] == pytest.approx(1.0, abs=1e-5)


def test_select_rows_and_dense_roundtrip():
    rng = np.random.default_rng(1)
    A = np.where(rng.random((40, 9)) < 0.3, rng.random((40, 9)), 0).astype(np.float32)
    keep = rng.random(40) < 0.5
    codes = SparseCodes.from_dense(torch.from_numpy(A)).select_rows(torch.from_numpy(keep))
    np.testing.assert_array_equal(codes.to_dense().numpy(), A[keep])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A 32-chunk store of layers 2 and 5 and two random ReLU SAEs with the metadata training saves."""
    root = tmp_path_factory.mktemp("coact")
    store_path = write_synthetic_store(root / "store", layers=[2, 5], d_model=D, n_tokens=32 * 48, chunk_tokens=48)
    store = ActivationStore.open(store_path)
    meta = {}
    for layer in (2, 5):
        norms = np.linalg.norm(store.read_rows(layer, 0, store.n_tokens).astype(np.float32), axis=1)
        # A tight ratio so that the outlier rule really drops rows, differently at each layer.
        meta[layer] = {"trainer_config": {"val_fraction": 0.2, "seed": 3, "skip_flagged": True},
                       "skipped": {"median_norm": float(np.median(norms)), "max_norm_ratio": 1.1}}
    saes = {2: random_sae(D, 30, seed=5, bias=-0.5), 5: random_sae(D, 26, seed=6, bias=-0.5)}
    for layer, sae in saes.items():
        save_layer(sae, root / "sae", layer, meta[layer])
    return root, store, saes, meta


def test_store_coactivation_equals_dense_reference(synthetic_run, tmp_path):
    root, store, saes, meta = synthetic_run
    summary = run_matching(root / "sae", tmp_path / "m", store_path=store.path, top=3, progress=False)
    edges = read_edges(edge_file(tmp_path / "m", 2, 5))
    # The reference picks the held-out rows on its own: the split's validation chunks, no position-0 row,
    # and no row whose norm passes 1.1x the median at either layer.
    _, val = split_chunks(store.n_chunks, 0.2, 3)
    rows = np.concatenate([np.arange(*store.chunk_bounds(c)) for c in val])
    rows = rows[store.positions(0, store.n_tokens)[rows] != 0]
    x = {layer: store.read_rows(layer, 0, store.n_tokens)[rows].astype(np.float32) for layer in (2, 5)}
    ok = np.ones(len(rows), bool)
    for layer in (2, 5):
        ok &= np.linalg.norm(x[layer], axis=1) <= 1.1 * meta[layer]["skipped"]["median_norm"]
    assert 0 < ok.sum() < len(rows)
    assert summary["pairs"][0]["rows"] == ok.sum() and summary["method"] == "coactivation"
    A = saes[2].encode(torch.from_numpy(x[2][ok])).double().numpy()
    B = saes[5].encode(torch.from_numpy(x[5][ok])).double().numpy()
    vals, idx, _ = dense_coactivation(A, B, 3)
    fin = np.isfinite(vals)
    src = np.repeat(np.arange(30)[:, None], 3, 1)[fin]
    assert edges["src"].tolist() == src.tolist()
    assert edges["dst"].tolist() == idx[fin].tolist()
    np.testing.assert_allclose(edges["score"], vals[fin], rtol=1e-4, atol=1e-5)
    for col in ("decoder_score", "decoder_cosine", "coact_jaccard"):
        assert col in edges and np.all(np.isfinite(edges[col]))
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["pairs"][0]["edges"] == len(edges["src"])


def test_coactivation_recovers_a_planted_permutation(tmp_path):
    """Layer 1 is layer 0 rotated and its SAE is layer 0's with latents shuffled: every latent's
    activations are reproduced exactly by its image, correlation 1."""
    rng = np.random.default_rng(7)
    R = np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
    store = write_rotated_store(tmp_path / "store", layers=(0, 1), rotation=R, n_tokens=32 * 64, chunk_tokens=64)
    a = random_sae(D, 40, seed=8, bias=-0.4)
    perm = rng.permutation(40)
    b = permuted_sae(a, perm, rotation=torch.from_numpy(R))
    save_layer(a, tmp_path / "sae", 0)
    save_layer(b, tmp_path / "sae", 1)
    run_matching(tmp_path / "sae", tmp_path / "m", store_path=store, top=2, progress=False)
    edges = read_edges(edge_file(tmp_path / "m", 0, 1))
    best = edges["rank"] == 0
    fired = set(edges["src"][best].tolist())
    assert len(fired) >= 30  # latents that never fire on the held-out rows have no edges
    np.testing.assert_array_equal(edges["dst"][best], perm[edges["src"][best]])
    np.testing.assert_allclose(edges["score"][best], 1.0, atol=1e-4)


def test_bad_inputs_are_one_line_errors(synthetic_run, tmp_path):
    root, store, saes, _ = synthetic_run
    with pytest.raises(GhostTrackError, match="at least 2"):
        save_layer(saes[2], tmp_path / "one", 2)
        run_matching(tmp_path / "one", tmp_path / "m")
    save_layer(random_sae(D + 1, 8), tmp_path / "mixed", 3)
    save_layer(saes[2], tmp_path / "mixed", 2)
    with pytest.raises(GhostTrackError, match="different d_model"):
        run_matching(tmp_path / "mixed", tmp_path / "m")
    save_layer(saes[2], tmp_path / "other", 2)
    save_layer(saes[5], tmp_path / "other", 7)
    with pytest.raises(GhostTrackError, match="lacks layer"):
        run_matching(tmp_path / "other", tmp_path / "m", store_path=store.path)
