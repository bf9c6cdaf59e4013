"""--skip-positions in training: rows at those positions never reach the SAE, are counted, and the rule is
saved with the SAE, where interpret and evaluate find it."""
import pytest

from ghosttrack.interpret.inputs import sae_skip_positions
from ghosttrack.sae.config import TopKSAEConfig
from ghosttrack.sae.module import load_sae
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig, parse_positions
from ghosttrack.train.layers import train_sae_for_layer

from trainer_data import CONTEXT, one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rule_applied_counted_and_saved(tmp_path):
    write_store(tmp_path / "s", layers=(0,), n_tokens=4096)
    store = ActivationStore.open(tmp_path / "s")
    cfg = TrainerConfig(batch_size=256, epochs=1, log_every=5, checkpoint_every=10, device="cpu",
                        skip_positions="3, 1,1")
    assert cfg.skip_positions == "1,3"
    summary = train_sae_for_layer(store, 0, TopKSAEConfig(d_in=16, d_sae=32, k=3), cfg, tmp_path / "o",
                                  progress=False)
    n_seq = 4096 // CONTEXT
    assert summary["skipped"]["positions_skipped"] == 2 * n_seq and summary["skipped"]["skip_positions"] == [1, 3]
    assert summary["skipped"]["flagged_skipped"] == n_seq
    kept = summary["skipped"]["train_rows"] + summary["skipped"]["val_rows"]
    assert kept == 4096 - 3 * n_seq - summary["skipped"]["outliers_skipped"]
    sae = load_sae(tmp_path / "o" / "layer_0")
    assert sae_skip_positions(sae) == (1, 3)
    # ... where interpret and evaluate read it (tests/interpret/test_pages.py::test_skip_positions_rule).


def test_parse_positions():
    assert parse_positions("0, 1") == (0, 1) and parse_positions([2, 1, 2]) == (1, 2)
    assert parse_positions("") == parse_positions(None) == parse_positions("none") == ()
    for bad in ("x", "-1", "1;2"):
        with pytest.raises(ValueError, match="skip_positions"):
            TrainerConfig(skip_positions=bad)
