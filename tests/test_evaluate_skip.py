"""Evaluation leaves the positions in skip_positions unspliced and out of the metrics, as training does."""
import torch

from ghosttrack.evaluate import evaluate_sae, splice_mask
from test_evaluate import LAYER, batches, loaded, make_sae, quiet  # noqa: F401 - fixtures


def test_skip_positions_stay_clean(loaded, batches):
    x = torch.ones(2, 6, 4)
    x[:, 1] *= 2.5  # below the 3x norm rule: only skip_positions leaves it out
    assert splice_mask(x, 3.0, False, (1, 9)).tolist() == [[False, False, True, True, True, True]] * 2
    assert splice_mask(x, 3.0, False).tolist() == [[False] + [True] * 5] * 2
    n_seq = sum(len(b) for b in batches)
    base = evaluate_sae(make_sae("random"), loaded, batches, layer=LAYER, config=quiet())
    skip = evaluate_sae(make_sae("random"), loaded, batches, layer=LAYER, config=quiet(skip_positions=(1, 2)))
    assert skip["unspliced_rows"] >= base["unspliced_rows"] + 2 * n_seq - 2  # the norm rule may have caught a few
    assert skip["ce_spliced"] != base["ce_spliced"]
