"""`ghosttrack extract` end to end on a tiny random GPT-2: values, layout, resume after kill -9, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModel, AutoTokenizer

from ghosttrack.cli import main
from ghosttrack.corpus.packing import pack_sequences
from ghosttrack.store.reader import ActivationStore


def _extract_args(model_dir, corpus, out, *extra):
    return ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "0,2",
            "--tokens", "2048", "--seq-len", "32", "--batch-size", "4", "--chunk-tokens", "256",
            "--device", "cpu", "--out", str(out), *extra]


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_extract_writes_what_a_plain_forward_computes(tiny_gpt2_dir, corpus_file, tmp_path):
    out = tmp_path / "store"
    result = _run(_extract_args(tiny_gpt2_dir, corpus_file, out))
    assert result.exit_code == 0, result.output
    store = ActivationStore.open(out)
    assert store.complete and store.n_tokens == 2048 and store.layers == [0, 2]

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    texts = [t for t in corpus_file.read_text().split("\n\n") if len(t.strip()) >= 200]
    sequences = np.stack([s for s, _ in zip(pack_sequences(texts, tokenizer, 32), range(64))])
    np.testing.assert_array_equal(store.tokens(), sequences.reshape(-1))
    np.testing.assert_array_equal(store.positions()[:64], np.tile(np.arange(32), 2))
    np.testing.assert_array_equal(store.sequence_ids()[:64], np.repeat([0, 1], 32))

    model = AutoModel.from_pretrained(tiny_gpt2_dir).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(sequences[:5]).long(), output_hidden_states=True).hidden_states
    for layer in (0, 2):
        expected = hidden[layer + 1].reshape(-1, 32).to(torch.float16).numpy()
        np.testing.assert_allclose(store.read_rows(layer, 0, 5 * 32), expected, rtol=1e-3, atol=1e-3)
    # The store carries its tokenizer and the resolved config, which loads back as --config.
    assert AutoTokenizer.from_pretrained(out / "tokenizer").encode("the river") == tokenizer.encode("the river")
    saved = json.loads((out / "config.json").read_text())
    assert saved["command"] == "extract" and saved["options"]["layers"] == "0,2"


def test_config_file_supplies_options_and_flags_override(tiny_gpt2_dir, corpus_file, tmp_path):
    config = tmp_path / "extract.yaml"
    config.write_text(f"model: {tiny_gpt2_dir}\ncorpus: {corpus_file}\nlayers: '1'\ntokens: 1024\nseq_len: 32\n"
                      "chunk_tokens: 256\ndevice: cpu\n")
    out = tmp_path / "store"
    result = _run(["extract", "--config", str(config), "--layers", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = ActivationStore.open(out)
    assert store.layers == [3] and store.n_tokens == 1024
    # The saved resolved config reproduces the same store.
    again = tmp_path / "again"
    assert _run(["extract", "--config", str(out / "config.json"), "--out", str(again)]).exit_code == 0
    np.testing.assert_array_equal(ActivationStore.open(again).read_rows(3, 0, 1024), store.read_rows(3, 0, 1024))


@pytest.mark.parametrize(
    "change, message",
    [
        (["--layers", "9"], "outside the model: it has layers 0-3"),
        (["--model", "no-such-org/no-such-model"], "cannot be found offline"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--tokens", "lots"], "not a token count"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_gpt2_dir, corpus_file, tmp_path, change, message):
    result = CliRunner().invoke(main, _extract_args(tiny_gpt2_dir, corpus_file, tmp_path / "s") + change)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_existing_store_of_other_config_is_refused_and_kept(tiny_gpt2_dir, corpus_file, tmp_path):
    out = tmp_path / "store"
    assert _run(_extract_args(tiny_gpt2_dir, corpus_file, out)).exit_code == 0
    before = ActivationStore.open(out).read_rows(0, 0, 2048).copy()
    plain = CliRunner().invoke(main, _extract_args(tiny_gpt2_dir, corpus_file, out))
    assert plain.exit_code == 2 and "--resume" in plain.output
    other = CliRunner().invoke(main, _extract_args(tiny_gpt2_dir, corpus_file, out, "--resume", "--hook", "resid_pre"))
    assert other.exit_code == 2 and "hook" in other.output
    np.testing.assert_array_equal(ActivationStore.open(out).read_rows(0, 0, 2048), before)


def test_binary_corpus_file_is_refused(tiny_gpt2_dir, tmp_path):
    blob = tmp_path / "data.bin"
    blob.write_bytes(bytes(range(256)) * 64)
    result = CliRunner().invoke(main, _extract_args(tiny_gpt2_dir, blob, tmp_path / "s"))
    assert result.exit_code == 2 and "error:" in result.output


def _store_files(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock; config.json's --out naturally differs between two stores."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != ".lock"}
    config = json.loads(files.pop("config.json"))
    config["options"].pop("out")
    files["config.json"] = json.dumps(config, sort_keys=True).encode()
    return files


def _committed(out: Path) -> int:
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]["committed_tokens"]
    except (OSError, ValueError, KeyError):
        return 0


BIG = ["--tokens", "12288", "--chunk-tokens", "64", "--batch-size", "2"]


@pytest.fixture(scope="module")
def uninterrupted_store(tiny_gpt2_dir, corpus_file, tmp_path_factory) -> Path:
    """The store an uninterrupted run writes: one for every kind of stop below (extraction is deterministic)."""
    reference = tmp_path_factory.mktemp("uninterrupted") / "store"
    assert _run(_extract_args(tiny_gpt2_dir, corpus_file, reference, *BIG)).exit_code == 0
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal, exit_code", [(signal.SIGKILL, -9), (signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_killed_extraction_resumes_to_an_identical_store(tiny_gpt2_dir, corpus_file, tmp_path, stop_signal, exit_code,
                                                         uninterrupted_store):
    big, reference = BIG, uninterrupted_store

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "ghosttrack.cli", *_extract_args(tiny_gpt2_dir, corpus_file, out, *big)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The child gets SIGINT's default back: started from a script in the background, this test
    # would otherwise pass on an ignored SIGINT (as shells do for background jobs).
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while _committed(out) < 64 * 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "extraction finished before it could be interrupted; make it longer"
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr.decode()[-2000:]
    committed = _committed(out)
    assert 0 < committed < 12288 and committed % 64 == 0
    if stop_signal != signal.SIGKILL:
        assert b"--resume" in stderr and b"Traceback" not in stderr

    result = _run(_extract_args(tiny_gpt2_dir, corpus_file, out, *big, "--resume"))
    assert result.exit_code == 0, result.output
    assert _store_files(out) == _store_files(reference)


class _ThreadAccelerator:
    """Stands in for accelerate's Accelerator: each thread is one process, wait_for_everyone a barrier."""

    def __init__(self, rank: int, world_size: int, barrier):
        self.process_index, self.num_processes, self._barrier = rank, world_size, barrier

    def wait_for_everyone(self):
        self._barrier.wait(timeout=120)


def test_two_processes_write_their_own_chunks_into_the_single_process_store(tiny_gpt2_dir, corpus_file, tmp_path):
    import threading

    from ghosttrack.corpus.sources import open_corpus
    from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor
    from ghosttrack.extract.models import load_model

    # A model per "process": hooks on a shared module would see the other thread's forwards. Load them
    # here, one at a time: from_pretrained patches torch globally and is not safe to run in two threads.
    models = [load_model(str(tiny_gpt2_dir), causal_lm=False) for _ in range(3)]

    def extract(out, accelerator):
        loaded = models[accelerator.process_index if accelerator else 2]
        plan = ExtractionPlan(layers=[1, 3], target_tokens=2000, seq_len=32, chunk_tokens=128)
        HiddenStateExtractor(loaded, open_corpus(str(corpus_file)), out, accelerator=accelerator).extract(
            plan, batch_size=3, progress=False)

    extract(tmp_path / "single", None)
    barrier, errors = threading.Barrier(2), []

    def rank(r):
        try:
            extract(tmp_path / "multi", _ThreadAccelerator(r, 2, barrier))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    single, multi = ActivationStore.open(tmp_path / "single"), ActivationStore.open(tmp_path / "multi")
    assert multi.complete and multi.n_tokens == single.n_tokens == 1984
    assert _store_files_raw(tmp_path / "multi") == _store_files_raw(tmp_path / "single")


def _store_files_raw(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}
