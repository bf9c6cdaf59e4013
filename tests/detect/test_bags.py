"""Tracks as features by identity (ghosttrack.detect.bags): exact values on a hand-built example."""
import numpy as np
import scipy.sparse as sp
import torch

from ghosttrack.detect.bags import latent_bag, track_bag
from ghosttrack.tracks.codes import SparseCodes
from ghosttrack.tracks.tracker import HypothesisTracker


def _codes(active: list[list[int]], h: int) -> SparseCodes:
    dense = torch.zeros(len(active), h)
    for t, latents in enumerate(active):
        dense[t, latents] = 1.0
    return SparseCodes.from_dense(dense)


def test_bag_holds_the_followed_latents_and_edges_per_share_of_tokens():
    # Layers 3 -> 5 with 4 latents each; edges 0->1 (0.9), 2->3 (0.8), 1->0 (0.1, below min_score).
    edges = {(3, 5): {"src": np.array([0, 2, 1]), "dst": np.array([1, 3, 0]), "score": np.array([0.9, 0.8, 0.1])}}
    tracker = HypothesisTracker([3, 5], edges, {3: 4, 5: 4}, min_score=0.3)
    # Example 0, two tokens: token 0 follows 0->1; token 1 follows 0->1 and 2->3. Example 1: 1->0 only (no link).
    first = tracker.track({3: _codes([[0], [0, 2]], 4), 5: _codes([[1], [1, 3]], 4)})
    second = tracker.track({3: _codes([[1]], 4), 5: _codes([[0]], 4)})
    bag, names = track_bag([first, second], np.array([2, 1]), tracker)
    dense = dict(zip(names, bag.toarray().T))
    # Fixed columns: 4 + 4 latents, then the tracker's 2 edges above min_score (not 1->0).
    assert names[:8] == [f"m L{layer}:{h}" for layer in (3, 5) for h in range(4)]
    assert names[8:] == ["e L3->5:0->1", "e L3->5:2->3"]
    assert {n for n, v in dense.items() if v.any()} == {"m L3:0", "m L3:2", "m L5:1", "m L5:3", "e L3->5:0->1",
                                                        "e L3->5:2->3"}
    np.testing.assert_allclose(dense["m L3:0"], [1.0, 0.0])  # both of example 0's tokens
    np.testing.assert_allclose(dense["e L3->5:2->3"], [0.5, 0.0])  # one of its two tokens
    np.testing.assert_allclose(dense["m L5:1"], [1.0, 0.0])
    assert bag[1].nnz == 0  # active latents that no track carried are not in the bag


def test_latent_bag_stacks_layers():
    a = sp.csr_matrix(np.array([[0.5, 0.0], [0.0, 1.0]]))
    b = sp.csr_matrix(np.array([[1.0], [0.0]]))
    bag, names = latent_bag({7: b, 2: a})
    assert names == ["a L2:0", "a L2:1", "a L7:0"]
    np.testing.assert_array_equal(bag.toarray(), [[0.5, 0.0, 1.0], [0.0, 1.0, 0.0]])
