"""Each option check, where its config dataclass defines it: the bad value is refused in one line
(`error: ...`, exit 2) naming the option, before any slow work and without writing anything.
Each case fails when its check is removed (the value would train 16x, run NaN steps, load the
model, or end in a traceback)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.config_fields import ConfigError
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
from ghosttrack.train.config import SAEShape, TrainerConfig

CASES = [
    # train: a falsy zero must not fall back to the 16x default; NaN/inf never reach the optimiser.
    ("train", ["--expansion", "0"], "--expansion 0.0: must be > 0"),
    ("train", ["--d-hidden", "0"], "--d-hidden 0: must be >= 1"),
    ("train", ["--grad-clip", "nan"], "--grad-clip nan: must be a finite number"),
    ("train", ["--lr", "nan"], "--lr nan: must be a finite number"),
    ("train", ["--lr", "inf"], "--lr inf: must be a finite number"),
    ("train", ["--lr", "0"], "--lr 0.0: must be > 0"),
    ("train", ["--epochs", "nan"], "--epochs nan: must be a finite number"),
    ("train", ["--val-fraction", "1"], "--val-fraction 1.0: must be >= 0 and < 1"),
    ("train", ["--beta2", "1"], "--beta2 1.0: must be >= 0 and < 1"),
    ("train", ["--buffer-batches", "2"], "--buffer-batches 2: must be >= 8"),
    ("train", ["--l1", "nan"], "--l1 nan: must be a finite number"),
    ("train", ["--arch", "topk", "--aux-coeff", "inf"], "--aux-coeff inf: must be a finite number"),
    ("train", ["--skip-positions", "-1"], "--skip-positions"),
    ("train", ["--device", "0"], "--device 0 is not a device name"),
    ("interpret", ["--device", "tpu"], "--device tpu is not a device name"),
    ("train", ["--layer", "1", "--layers", "2"], "--layer and --layers disagree"),
    ("train", ["--out", "s3://bucket/run"], "--out s3://bucket/run: this output is written to a local folder"),
    # extract: refused before the model's config is even read.
    ("extract", ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    ("extract", ["--chunk-tokens", "0"], "--chunk-tokens 0: must be >= 1"),
    ("extract", ["--chunk-tokens", "100"], "--chunk-tokens 100 is not a multiple of --seq-len 128"),
    ("extract", ["--tokens", "999999G"], "--tokens 999999G is more than one store takes"),
    ("extract", ["--seq-len", "1"], "--seq-len 1: must be >= 2"),
    ("extract", ["--min-chars", "-1"], "--min-chars -1: must be >= 0"),
    ("extract", ["--host-buffer-mb", "0"], "--host-buffer-mb 0: must be >= 1"),
    ("extract", ["--layers", "3-1"], "layer range '3-1' is reversed"),
    ("extract", ["--repair"], "--repair mends an existing store"),
    ("run", ["--extract-batch-size", "0"], "--extract-batch-size 0: must be >= 1"),
    ("run", ["--lr", "nan"], "--lr nan: must be a finite number"),
    # interpret / evaluate / match / track / detect
    ("interpret", ["--max-norm-ratio", "nan"], "--max-norm-ratio nan: must be a finite number"),
    ("interpret", ["--dense-threshold", "0"], "--dense-threshold 0.0: must be > 0 and <= 1"),
    ("interpret", ["--show", "a,b"], "--show 'a,b' is not a list of feature ids"),
    ("interpret", ["--skip-positions", "x"], "--skip-positions"),
    ("evaluate", ["--tokens", "0"], "--tokens"),
    ("evaluate", ["--max-norm-ratio", "-1"], "--max-norm-ratio -1.0: must be >= 0"),
    ("evaluate", ["--skip-tokens", "lots"], "--skip-tokens"),
    ("match", ["--top", "0"], "--top 0: must be >= 1"),
    ("track", ["--min-score", "nan"], "--min-score nan: must be a finite number"),
    ("track", ["--shown", "0"], "--shown 0: must be >= 1"),
    ("detect", ["--folds", "1"], "--folds 1: must be >= 2"),
    ("detect", ["--max-tokens", "4"], "--max-tokens 4: must be >= 8"),
    ("detect", ["--max-examples", "3"], "--max-examples 3 is too few for 5 folds"),
    ("info", [""], "STORE is empty"),
    # usage errors: one line too
    ("train", ["--bogus"], "No such option '--bogus'"),
    ("interpret", ["--top-k", "x"], "'x' is not a valid integer"),
]


def _base(name: str, tmp_path) -> list[str]:
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    out = str(tmp_path / "out")
    return {
        "train": ["--store", str(tmp_path / "store"), "--out", out],
        "extract": ["--model", str(empty), "--out", out],
        "run": ["--model", str(empty), "--out", out],
        "interpret": ["--store", str(tmp_path / "store"), "--sae", str(empty), "--out", out],
        "evaluate": ["--sae", str(empty)],
        "match": ["--sae", str(empty), "--out", out],
        "track": ["--model", str(empty), "--sae", str(empty), "--matches", str(empty), "--text", "x", "--out", out],
        "detect": ["--data", "x.jsonl", "--model", str(empty), "--out", out],
        "info": [],
    }[name]


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (result.exit_code,
                                                                                           result.output)
    return lines[0]


@pytest.mark.parametrize("name,change,needle", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_value_is_refused_in_one_line_before_any_work(name, change, needle, tmp_path):
    base = _base(name, tmp_path)
    for flag in change:  # a changed option replaces the base's
        if flag.startswith("--") and flag in base:
            i = base.index(flag)
            del base[i:i + 2]
    result = CliRunner().invoke(main, [name, *base, *change])
    assert needle in _one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_library_configs_refuse_the_same_values():
    """The Python API goes through the same checks (ConfigError is a ValueError for its callers)."""
    for bad in (dict(lr=float("nan")), dict(grad_clip=float("nan")), dict(epochs=float("inf")),
                dict(val_fraction=1.0), dict(batch_size=[1]), dict(lr="fast")):
        with pytest.raises(ValueError):
            TrainerConfig(**bad)
    with pytest.raises(ConfigError, match="--expansion"):
        SAEShape(expansion=0)
    with pytest.raises(ConfigError, match="gives 0 latents"):
        SAEShape(expansion=0.001).d_sae(32)
    assert SAEShape(expansion=2).d_sae(32) == 64 and SAEShape(d_hidden=5).d_sae(32) == 5


@pytest.mark.parametrize("text,needle", [
    ('{"batch_size": [1, 2]}', "batch_size takes one value, got a list"),
    ('{"batch_size": {"a": 1}}', "batch_size takes one value, got a mapping"),
    ("[1, 2]", "must hold a mapping"),
])
def test_config_file_values_are_type_checked(text, needle, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(text)
    result = CliRunner().invoke(main, ["extract", "--config", str(path), "--model", str(tmp_path), "--out",
                                       str(tmp_path / "out")])
    assert needle in _one_line_error(result)


def test_malformed_yaml_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: [1\n  b: 2\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--store", "s", "--out", "o"])
    assert "is not valid yaml" in _one_line_error(result)


def test_saved_lists_of_positions_still_read(tmp_path):
    """A config.json saved before positions were text holds a list: it still reads (as "1,2")."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"skip_positions": [2, 1], "expansion": 0}))
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--store", "s", "--out", "o"])
    assert "--expansion 0.0: must be > 0" in _one_line_error(result)  # the list passed, the zero did not


def test_evaluate_refuses_a_seq_len_beyond_the_model_context_before_loading_it(tiny_gpt2_dir, corpus_file, tmp_path,
                                                                               monkeypatch):
    sae = SparseAutoencoder(ReluSAEConfig(d_in=32, d_sae=8), {"hook_layer": 1, "hook_name": "blocks.1.hook_resid_post"})
    sae.save(tmp_path / "sae")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ghosttrack.extract.models.load_model", no_load)
    result = CliRunner().invoke(main, ["evaluate", "--sae", str(tmp_path / "sae"), "--model", str(tiny_gpt2_dir),
                                       "--corpus", str(corpus_file), "--seq-len", "1000", "--device", "cpu"])
    assert "--seq-len 1000 is longer than" in _one_line_error(result) and "256 positions" in result.stderr


def test_a_second_ctrl_c_names_itself(monkeypatch, tmp_path):
    """A bare KeyboardInterrupt (the second Ctrl-C) printed `interrupted ()`."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr("ghosttrack.train.layers.train_layers", interrupted)
    result = CliRunner().invoke(main, ["train", "--store", "s", "--out", str(tmp_path / "o")])
    assert "interrupted (Ctrl-C)" in result.stderr and "()" not in result.stderr


@pytest.mark.parametrize("flag,skip", [(None, True), ("--keep-flagged", False), ("--include-flagged", False)])
def test_interpret_takes_train_s_position_0_flag_and_its_old_spelling(flag, skip, tmp_path):
    from ghosttrack.cli.analysis import interpret
    from ghosttrack.config_fields import from_options
    from ghosttrack.interpret.config import InterpretRun

    args = ["--store", "s", "--sae", str(tmp_path), *([flag] if flag else [])]
    params = interpret.make_context("interpret", list(args)).params
    assert from_options(InterpretRun, params).skip_flagged is skip
    assert "--include-flagged" not in interpret.get_help(interpret.make_context("interpret", list(args)))


def test_a_device_this_machine_lacks_is_refused_when_the_run_starts(monkeypatch, tmp_path):
    """A config may name another machine's device; the command on this one refuses it in one line."""
    from ghosttrack.precision import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainerConfig(device="cuda:1").device == "cuda:1"
    assert resolve_device(None) == "cpu"
    result = CliRunner().invoke(main, ["match", "--sae", str(tmp_path), "--out", str(tmp_path / "out"),
                                       "--device", "cuda"])
    assert "no CUDA device is visible" in _one_line_error(result)
