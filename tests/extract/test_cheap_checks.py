"""Bad input to `ghosttrack extract` is refused before the model's weights load, in one line with exit 2,
leaving nothing behind; `--resume` on a finished store changes nothing; fp16 overflow stops the run."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.extract import preflight
from ghosttrack.store.lock import StoreLock
from ghosttrack.store.reader import ActivationStore


def _args(model_dir, corpus, out, *extra):
    return ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "0,2", "--tokens", "512",
            "--seq-len", "32", "--batch-size", "4", "--chunk-tokens", "64", "--device", "cpu", "--out", str(out),
            *extra]


def _invoke(args):
    return CliRunner().invoke(main, args)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the weights fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the input was checked")
    monkeypatch.setattr("ghosttrack.extract.models.load_model", refuse)


@pytest.fixture
def short_docs_corpus(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny.\n\nalso tiny.\n")
    return path


@pytest.fixture
def few_tokens_corpus(tmp_path):
    path = tmp_path / "few.txt"
    path.write_text("the river flows.\n")  # one document, fewer tokens than one 32-token sequence
    return path


@pytest.mark.parametrize("case, message", [
    ("tokens", "--tokens 10 is less than one sequence of --seq-len 32 tokens; pass --tokens 32 or more"),
    ("seq_len", "--seq-len 512 exceeds the context of"),
    ("layers", "layer 9 is outside the model: it has layers 0-3"),
    ("empty_corpus", "has no document of at least 200 characters"),
    ("missing_corpus", "no such file or folder"),
    ("device", "--device cuda was asked for but no CUDA device is visible; use --device cpu"),
    ("device_name", "--device tpu9 is not a device name"),
])
def test_bad_input_is_refused_before_the_model_loads_and_leaves_nothing(
        tiny_gpt2_dir, corpus_file, short_docs_corpus, tmp_path, no_model_load, case, message):
    if case == "device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "store"
    corpus = {"empty_corpus": short_docs_corpus, "missing_corpus": tmp_path / "nope.txt"}.get(case, corpus_file)
    args = _args(tiny_gpt2_dir, corpus, out)
    change = {"tokens": ["--tokens", "10"], "seq_len": ["--seq-len", "512", "--chunk-tokens", "512"],
              "layers": ["--layers", "9"], "device": ["--device", "cuda"], "device_name": ["--device", "tpu9"]}
    result = _invoke(args + change.get(case, []))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert not out.exists()


def test_a_corpus_shorter_than_one_sequence_leaves_no_store(tiny_gpt2_dir, few_tokens_corpus, tmp_path):
    out = tmp_path / "store"
    result = _invoke(_args(tiny_gpt2_dir, few_tokens_corpus, out, "--min-chars", "10"))
    assert result.exit_code == 2, result.output
    assert "gave too little text for even one sequence of 32 tokens" in result.output
    assert not out.exists()


def test_store_state_and_lock_are_checked_before_the_model_loads(tiny_gpt2_dir, corpus_file, tmp_path, monkeypatch):
    out = tmp_path / "store"
    assert _invoke(_args(tiny_gpt2_dir, corpus_file, out, "--tokens", "256")).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    stamp = (out / "config.json").stat().st_mtime_ns
    # --resume on a finished store says so and changes nothing, not even config.json.
    resumed = _invoke(_args(tiny_gpt2_dir, corpus_file, out, "--tokens", "256", "--resume"))
    assert resumed.exit_code == 0 and "is already complete (256 tokens); nothing to do" in resumed.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (out / "config.json").stat().st_mtime_ns == stamp

    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the input was checked")
    monkeypatch.setattr("ghosttrack.extract.models.load_model", refuse)
    exists = _invoke(_args(tiny_gpt2_dir, corpus_file, out, "--tokens", "256"))
    assert exists.exit_code == 2 and "store already exists" in exists.output and "--resume" in exists.output
    other = _invoke(_args(tiny_gpt2_dir, corpus_file, out, "--tokens", "256", "--resume", "--hook", "resid_pre"))
    assert other.exit_code == 2 and "hook: stored 'resid_post' vs requested 'resid_pre'" in other.output
    # A store another writer holds.
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    attrs = json.loads((partial / "zarr.json").read_text())
    attrs["attributes"]["complete"] = False
    (partial / "zarr.json").write_text(json.dumps(attrs))
    with StoreLock.acquire(partial / ".lock", partial):
        locked = _invoke(_args(tiny_gpt2_dir, corpus_file, partial, "--tokens", "256", "--resume"))
    assert locked.exit_code == 2 and "is being written by pid" in locked.output, locked.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_gguf_header_gives_the_model_shape_without_reading_tensors(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(30)
    writer.add_embedding_length(576)
    writer.add_context_length(8192)
    writer.add_token_list([b"<s>", b"a", b"bb"])  # an array of strings between the keys: skipped
    writer.add_token_scores([0.0, -1.0, -2.0])
    writer.add_head_count(9)
    writer.add_tensor("w", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = preflight.read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama" and meta["llama.attention.head_count"] == 9
    shape = preflight.read_model_shape(str(path))
    assert (shape.n_layers, shape.d_model, shape.context_length) == (30, 576, 8192)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(Exception, match="damaged or not GGUF"):
        preflight.read_gguf_metadata(path)


@pytest.fixture(scope="module")
def overflowing_gpt2_dir(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with block 1's MLP output scaled up: the residual stream from block 1 on exceeds fp16."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.mul_(1e6)
        model.transformer.h[1].mlp.c_proj.bias.fill_(1e5)
    path = tmp_path_factory.mktemp("overflow_gpt2")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(path)
    return path


def test_fp16_overflow_stops_naming_layer_count_and_fix_and_fp32_stores_it(overflowing_gpt2_dir, corpus_file, tmp_path):
    out = tmp_path / "store"
    result = _invoke(_args(overflowing_gpt2_dir, corpus_file, out))
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "activation values of layer 2 exceed fp16's range (+-65504) and would be stored as inf" in line
    assert int(line.split("error: ")[1].split(" ")[0].replace(",", "")) > 0  # the count comes first
    assert "--store-dtype fp32 --overwrite" in line
    assert ActivationStore.open(out).n_tokens == 0  # nothing past the last commit

    fp32 = tmp_path / "fp32"
    assert _invoke(_args(overflowing_gpt2_dir, corpus_file, fp32, "--store-dtype", "fp32")).exit_code == 0
    store = ActivationStore.open(fp32)
    assert store.attrs["dtype"] == "float32" and store.complete
    rows = store.read_rows(2, 0, 64)
    assert rows.dtype == np.float32 and np.isfinite(rows).all() and np.abs(rows).max() > 65504
    assert np.abs(store.read_rows(0, 0, 64)).max() < 1000  # layer 0 is before the scaled block


def test_the_real_gguf_header_matches_its_transformers_config():
    from conftest import assets_dir

    assets = assets_dir()
    found = sorted(assets.rglob("*.gguf")) if assets else []
    if not found:
        pytest.skip("offline assets (make assets) are not here")
    shape = preflight.read_model_shape(str(found[0]))
    assert (shape.n_layers, shape.d_model, shape.context_length) == (30, 576, 8192)  # SmolLM2-135M


def test_a_failed_tokenizer_save_is_one_line_and_releases_the_store(tiny_gpt2_dir, corpus_file, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def no_space(self, *args, **kwargs):
        raise OSError("write failed")  # like ndarray.tofile on a full disk: no errno
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", no_space)
    out = tmp_path / "store"
    result = _invoke(_args(tiny_gpt2_dir, corpus_file, out))
    assert result.exit_code == 2, result.output
    assert "error: write failed while saving the tokenizer into" in result.output and "--resume" in result.output
    assert not (out / "tokenizer.partial").exists() and not (out / ".lock").exists()
    monkeypatch.undo()
    again = _invoke(_args(tiny_gpt2_dir, corpus_file, out, "--resume"))
    assert again.exit_code == 0, again.output
    assert (out / "tokenizer").is_dir()
