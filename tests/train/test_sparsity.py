"""Sparsity that obeys (issue 22): JumpReLU's L0 falls as its coefficient rises, --target-l0 lands
on held-out rows for relu and jumprelu and saves the coefficient it ended with, bad targets are
refused in one line, and each layer reports the seed's checklist and draws its training curves."""
import json

import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig
from ghosttrack.sae.files import STATE_FILE, load_trainer_state
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.layers import train_sae_for_layer
from ghosttrack.train.sparsity import SparsityController
from ghosttrack.train.trainer import SAETrainer

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

D, H = 16, 64
TOLERANCE = 0.15
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparsity") / "store"
    write_store(path, layers=(0, 2), n_tokens=16384)
    return ActivationStore.open(path)


def _train(store, tmp_path, sae_cfg, **kw):
    cfg = TrainerConfig(**{**dict(batch_size=256, epochs=3, lr=3e-3, log_every=10, device="cpu"), **kw})
    return train_sae_for_layer(store, 0, sae_cfg, cfg, tmp_path, overwrite=True, progress=False)


def test_jumprelu_l0_falls_as_its_coefficient_rises(tmp_path, store):
    l0 = [_train(store, tmp_path, JumpReluSAEConfig(d_in=D, d_sae=H, l0_coeff=c), epochs=2)["val_l0"]
          for c in (0.01, 0.1, 1.0)]
    # A tenfold coefficient gives a clearly sparser code, not the same one.
    assert l0[0] > 1.3 * l0[1] > 1.3 ** 2 * l0[2], l0


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_target_l0_lands_on_held_out_rows_and_the_coefficient_is_saved(tmp_path, store, arch):
    make = JumpReluSAEConfig if arch == "jumprelu" else ReluSAEConfig
    for target in (4.0, 8.0):
        summary = _train(store, tmp_path, make(d_in=D, d_sae=H), target_l0=target)
        assert abs(summary["val_l0"] / target - 1) < TOLERANCE, (target, summary["val_l0"])
        coeff = summary["sparsity_coeff"]
        assert coeff["name"] == ("l0_coeff" if arch == "jumprelu" else "l1_coeff") and coeff["target_l0"] == target
        cfg_json = json.loads((tmp_path / "layer_0" / "final" / "cfg.json").read_text())
        assert cfg_json["ghosttrack"]["sparsity_coeff"]["value"] == pytest.approx(coeff["value"])
    history = json.loads((tmp_path / "layer_0" / "history.json").read_text())
    assert all("sparsity_coeff" in e for e in history["train"])


def test_the_controller_raises_the_coefficient_when_too_dense_and_lowers_it_when_too_sparse():
    dense, sparse = SparsityController(10.0, "cpu"), SparsityController(10.0, "cpu")
    for _ in range(5):
        dense.update(torch.tensor(30.0))
        sparse.update(torch.tensor(3.0))
    assert dense.multiplier() > 1.5 and sparse.multiplier() < 1 / 1.5
    on_target = SparsityController(10.0, "cpu")
    on_target.update(torch.tensor(10.0))
    assert on_target.multiplier() == 1.0
    restored = SparsityController(10.0, "cpu")
    restored.load_state_dict(dense.state_dict())
    dense.update(torch.tensor(30.0))
    restored.update(torch.tensor(30.0))
    assert restored.multiplier() == dense.multiplier()


@pytest.mark.parametrize("extra, message", [
    (["--arch", "topk", "--target-l0", "8"], "topk: --k"),
    (["--arch", "jumprelu", "--target-l0", "64"], "below the number of latents 64"),
    (["--arch", "relu", "--target-l0", "0"], "--target-l0"),
    (["--arch", "relu", "--target-l0", "nan"], "--target-l0"),
])
def test_bad_targets_are_refused_in_one_line(tmp_path, store, extra, message):
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--layer", "0", "--d-hidden", str(H),
                                       "--out", str(tmp_path / "out"), "--device", "cpu", *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "out" / "layer_0").exists()


def test_each_layer_reports_the_seed_checklist_and_draws_its_curves(tmp_path, store):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--layers", "0,2", "--arch", "relu",
                                       "--d-hidden", str(H), "--target-l0", "6", "--epochs", "2", "--batch-size",
                                       "256", "--log-every", "10", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "reconstruction MSE" in result.output and "target 50-100" in result.output
    table = json.loads((out / "checklist.json").read_text())
    assert sorted(table) == ["0", "2"]
    for layer in (0, 2):
        history = json.loads((out / f"layer_{layer}" / "history.json").read_text())
        checks = {row["check"]: row for row in history["checklist"]}
        assert checks["L0 (active latents per row)"]["reached"] == pytest.approx(history["val"][-1]["l0"])
        assert checks["L0 (active latents per row)"]["pass"] is False  # 6 is far below the seed's 50-100
        assert table[str(layer)]["checklist"] == history["checklist"]
        page = (out / f"layer_{layer}" / "curves.html").read_text()
        assert page.count("<svg") == 5 and "<script" not in page and "http" not in page.replace(
            "http://www.w3.org/2000/svg", "")
        assert page.count("<circle") >= 4 * len(history["val"])  # validation dots on loss, FVU, L0, dead
    index = (out / "checklist.html").read_text()
    assert 'href="layer_0/curves.html"' in index and 'href="layer_2/curves.html"' in index
    assert "| 0 |" in (out / "checklist.md").read_text()


def test_a_run_killed_under_target_l0_resumes_exactly(tmp_path, store):
    cfg = TrainerConfig(batch_size=256, epochs=1, lr=3e-3, log_every=5, checkpoint_every=10, device="cpu",
                        target_l0=6.0)
    sae_cfg = JumpReluSAEConfig(d_in=D, d_sae=H)
    full = SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "full", progress=False)
    full.run()

    def kill_at_23(step):
        if step == 23:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "cut", progress=False).run(on_step=kill_at_23)
    resumed = SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "cut", progress=False)
    resumed.run(load_trainer_state(tmp_path / "cut" / STATE_FILE))
    for name, value in full.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], value), name
    assert torch.equal(resumed.controller.multiplier(), full.controller.multiplier())
