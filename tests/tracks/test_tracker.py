"""The tracker: births, continuations, splits, merges and deaths on hand-built edges, and the
vectorised tracker equal to the plain-Python reference on random inputs."""
import numpy as np
import pytest

from ghosttrack.tracks.reference import track_reference
from ghosttrack.tracks.tracker import HypothesisTracker
from tracks_helpers import ACTIVE, EDGES, LAYERS, codes_of, edge_table, random_case

@pytest.fixture(params=["vectorised", "reference"])
def hand_built(request):
    if request.param == "reference":
        return track_reference(LAYERS, ACTIVE, EDGES, min_score=0.3)
    tracker = HypothesisTracker(LAYERS, {k: edge_table(v) for k, v in EDGES.items()}, {3: 6, 5: 6, 9: 6},
                                min_score=0.3)
    return tracker.track({layer: codes_of(ACTIVE[k], 6) for k, layer in enumerate(LAYERS)})


def test_hand_built_births_continuations_splits_merges_deaths(hand_built):
    r = hand_built
    assert r.track_token.tolist() == [0, 0, 0, 1, 0, 0, 1]
    assert r.track_birth.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert r.track_end.tolist() == [2, 1, 0, 0, 2, 1, 2]
    assert r.track_split_from.tolist() == [-1, -1, -1, -1, 0, -1, -1]
    assert r.track_merged_into.tolist() == [-1, 4, 1, -1, -1, -1, -1]
    assert r.track_died().tolist() == [False, False, False, True, False, True, False]
    assert [e.tolist() for e in r.entry_track] == [[0, 1, 2, 3], [0, 4, 1, 5], [0, 4, 6]]
    tracks = r.tracks()
    assert tracks[0].chain == [(3, 0, 1.0), (5, 0, 1.5), (9, 0, 2.0)] and tracks[0].death_layer is None
    assert tracks[1].chain == [(3, 1, 2.0), (5, 3, pytest.approx(0.7))] and tracks[1].death_layer == 9 and tracks[1].merged_into == 4
    assert tracks[4].birth_layer == 5 and tracks[4].split_from == 0 and tracks[4].chain[-1] == (9, 4, 1.0)
    assert tracks[5].death_layer == 9 and tracks[5].merged_into is None
    np.testing.assert_allclose(r.track_strength()[:2], [4.5, 2.7])


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_equals_reference(seed):
    layers, sizes, active, edges = random_case(seed)
    want = track_reference(layers, active, edges, min_score=0.4)
    tracker = HypothesisTracker(layers, {k: edge_table(v) for k, v in edges.items()}, sizes, min_score=0.4)
    got = tracker.track({layer: codes_of(active[k], sizes[layer]) for k, layer in enumerate(layers)})
    for name in ("track_token", "track_birth", "track_end", "track_split_from", "track_merged_into"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("entry_token", "entry_feature", "entry_track"):
        for k in range(len(layers)):
            np.testing.assert_array_equal(getattr(got, name)[k], getattr(want, name)[k], err_msg=f"{name}[{k}]")
    for k in range(len(layers)):
        np.testing.assert_allclose(got.entry_activation[k], want.entry_activation[k])


def test_rejects_edges_outside_the_saes():
    with pytest.raises(ValueError, match="outside the SAEs"):
        HypothesisTracker([0, 1], {(0, 1): edge_table([(0, 9, 0.9)])}, {0: 4, 1: 4})
