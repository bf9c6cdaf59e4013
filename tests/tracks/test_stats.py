"""Track statistics: the hand-built case by hand, random cases against a loop over Track objects."""
import numpy as np
import pytest

from ghosttrack.tracks.reference import track_reference
from ghosttrack.tracks.stats import PER_LAYER, PER_TOKEN, feature_names, token_statistics, track_statistics
from tracks_helpers import ACTIVE, EDGES, LAYERS, random_case


@pytest.fixture
def hand_built():
    return track_reference(LAYERS, ACTIVE, EDGES, min_score=0.3)


def test_hand_built_statistics(hand_built):
    s = token_statistics(hand_built)
    assert s["alive"].tolist() == [[3, 4, 2], [1, 0, 1]]
    assert s["births"].tolist() == [[3, 1, 0], [1, 0, 1]]
    assert s["splits"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert s["deaths"].tolist() == [[0, 0, 1], [0, 1, 0]]
    assert s["merges"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert s["n_tracks"].tolist() == [5, 2] and s["length_max"].tolist() == [3, 1]
    np.testing.assert_allclose(s["length_mean"], [1.8, 1.0])
    assert s["full_tracks"].tolist() == [1, 0] and s["competing_final"].tolist() == [2, 1]
    np.testing.assert_allclose(s["dominant_share"], [4.5 / 9.9, 0.5], rtol=1e-6)
    np.testing.assert_allclose(s["dominant_margin"], [1.8 / 9.9, 0.0], atol=1e-6)
    assert s["dominant_length"].tolist() == [3, 1]


def test_example_vectors(hand_built):
    X, names = track_statistics([hand_built, hand_built], spans=[(0, 1), (0, 2)])
    assert names == feature_names(LAYERS) and X.shape == (2, len(names)) and X.dtype == np.float32
    col = {n: i for i, n in enumerate(names)}
    assert X[0, col["alive_layer5_mean"]] == 4 and X[1, col["alive_layer5_mean"]] == 2
    assert X[1, col["n_tracks_max"]] == 5 and X[1, col["n_tracks_mean"]] == 3.5 and X[1, col["n_tokens"]] == 2
    with pytest.raises(ValueError, match="empty or outside"):
        track_statistics([hand_built], spans=[(1, 1)])


@pytest.mark.parametrize("seed", range(10))
def test_statistics_equal_a_loop_over_tracks(seed):
    layers, _, active, edges = random_case(seed)
    result = track_reference(layers, active, edges, min_score=0.4)
    s = token_statistics(result)
    T, L = result.n_tokens, len(layers)
    want = {name: np.zeros((T, L)) for name in PER_LAYER}
    per_token: dict[int, list] = {t: [] for t in range(T)}
    for tr in result.tracks():
        k0 = layers.index(tr.birth_layer)
        want["births" if tr.split_from is None else "splits"][tr.token, k0] += 1
        for layer, _, _ in tr.chain:
            want["alive"][tr.token, layers.index(layer)] += 1
        if tr.death_layer is not None:
            want["merges" if tr.merged_into is not None else "deaths"][tr.token, layers.index(tr.death_layer)] += 1
        per_token[tr.token].append(tr)
    for name in PER_LAYER:
        np.testing.assert_array_equal(s[name], want[name], err_msg=name)
    for t, tracks in per_token.items():
        if not tracks:
            assert all(s[name][t] == 0 for name in PER_TOKEN)
            continue
        strengths = sorted((tr.strength for tr in tracks), reverse=True) + [0.0]
        total = sum(strengths)
        assert s["n_tracks"][t] == len(tracks)
        assert s["length_max"][t] == max(len(tr.chain) for tr in tracks)
        assert s["length_mean"][t] == pytest.approx(np.mean([len(tr.chain) for tr in tracks]))
        assert s["dominant_share"][t] == pytest.approx(strengths[0] / total, rel=1e-5)
        assert s["dominant_margin"][t] == pytest.approx((strengths[0] - strengths[1]) / total, rel=1e-5, abs=1e-7)
