"""The S3 workflow end to end against a real S3-compatible server on 127.0.0.1 (moto): extract ->
info -> verify -> train -> interpret, the same results as from a local folder; kill -9 and
--resume give the identical store; bad store URLs are one-line errors before any work."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from ghosttrack.cli import main
from ghosttrack.store import format as fmt

from s3_server import object_bytes, s3_bucket, s3_server, s3_url  # noqa: F401 - fixtures
from trainer_data import one_thread  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model: more threads only contend

TRAIN = ["--arch", "topk", "--d-hidden", "64", "--k", "3", "--epochs", "1", "--batch-size", "128",
         "--device", "cpu", "--log-every", "5", "--lr", "0.01"]


def _extract_args(model_dir, corpus, out, *extra):
    return ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "1,2", "--tokens", "1024",
            "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "256", "--device", "cpu", "--out", str(out),
            *extra]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _without_run_options(files: dict[str, bytes]) -> dict[str, bytes]:
    """config.json records --out, which differs between two stores; the upload marker exists only
    on object stores (they have no rename)."""
    files = dict(files)
    files.pop("tokenizer/.uploaded", None)
    config = json.loads(files.pop("config.json"))
    config["options"].pop("out")
    files["config.json"] = json.dumps(config, sort_keys=True).encode()
    return files


def _local_files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def test_extract_train_interpret_on_s3_equal_the_local_run(tiny_gpt2_dir, corpus_file, s3_url, tmp_path,
                                                            tiny_tokenizer):
    local = tmp_path / "store"
    for out in (s3_url, local):
        result = _run(*_extract_args(tiny_gpt2_dir, corpus_file, out))
        assert result.exit_code == 0, result.output
    assert _without_run_options(object_bytes(s3_url)) == _without_run_options(_local_files(local))

    info = _run("info", s3_url)
    assert info.exit_code == 0 and f"store:     {s3_url}" in info.output and "complete" in info.output
    verify = _run("verify", s3_url)
    assert verify.exit_code == 0 and "healthy" in verify.output

    for name, store in (("s3", s3_url), ("local", local)):
        result = _run("train", "--store", store, "--layer", "2", *TRAIN, "--out", tmp_path / f"sae_{name}")
        assert result.exit_code == 0, result.output
    weights = [load_file(str(tmp_path / f"sae_{name}" / "layer_2" / "sae_weights.safetensors")) for name in ("s3", "local")]
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[1])
    cfg = json.loads((tmp_path / "sae_s3" / "layer_2" / "cfg.json").read_text())
    assert cfg["ghosttrack"]["store"] == s3_url  # the URL as given, not a local path made of it

    records = {}
    for name, store in (("s3", s3_url), ("local", local)):
        result = _run("interpret", "--store", store, "--sae", tmp_path / "sae_s3" / "layer_2", "--top-k", 3,
                      "--out", tmp_path / f"interp_{name}", "--device", "cpu")
        assert result.exit_code == 0, result.output
        records[name] = json.loads((tmp_path / f"interp_{name}" / "layer_2" / "features.json").read_text())
    assert [r["top_examples"] for r in records["s3"]] == [r["top_examples"] for r in records["local"]]
    # Contexts decode with the tokenizer the extractor uploaded beside the store.
    example = next(ex for r in records["s3"] for ex in r["top_examples"])
    from ghosttrack.store.reader import ActivationStore
    token_id = int(ActivationStore.open(s3_url).tokens(example["row"], example["row"] + 1)[0])
    assert example["token"] == tiny_tokenizer.decode([token_id])


def _committed(url: str) -> int:
    try:
        attrs = fmt.read_store_attrs(url)
    except Exception:  # noqa: BLE001 - mid-write: ask again
        return 0
    return (attrs or {}).get("committed_tokens", 0)


@pytest.mark.slow
def test_extraction_killed_mid_upload_resumes_to_the_identical_store(tiny_gpt2_dir, corpus_file, s3_bucket):
    small = ["--tokens", "1024", "--chunk-tokens", "64", "--batch-size", "2"]  # 16 chunks
    reference, killed = f"s3://{s3_bucket}/reference", f"s3://{s3_bucket}/killed"
    assert _run(*_extract_args(tiny_gpt2_dir, corpus_file, reference, *small)).exit_code == 0

    # The child inherits the fixture's AWS_* environment: it writes to the same local server.
    command = [sys.executable, "-m", "ghosttrack.cli", *_extract_args(tiny_gpt2_dir, corpus_file, killed, *small)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _committed(killed) < 64 * 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "extraction finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert 0 < _committed(killed) < 1024
    from ghosttrack.store.location import as_location
    assert (as_location(killed) / fmt.LOCK_PREFIX).is_file(), "a killed writer leaves its lock object"

    result = _run(*_extract_args(tiny_gpt2_dir, corpus_file, killed, *small, "--resume"))
    assert result.exit_code == 0, result.output
    assert _without_run_options(object_bytes(killed)) == _without_run_options(object_bytes(reference))


def test_bad_store_urls_are_one_line_errors_before_any_work(tiny_gpt2_dir, corpus_file, s3_server, s3_bucket,
                                                            tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        ("s3:/bucket/run", "looks like a URL without '//'"),
        ("s3:bucket/run", "looks like a URL without '//'"),
        ("ftp://host/run", "unsupported store URL scheme 'ftp://'"),
        ("s3://bucket-only", "needs a bucket and a prefix"),
        ("s3://no-such-bucket-here/run", "bucket no-such-bucket-here"),
    ]
    for url, message in cases:
        for args in (_extract_args(tiny_gpt2_dir, corpus_file, url), ["info", url], ["verify", url],
                     ["train", "--store", url, "--layer", "1", *TRAIN, "--out", "sae"]):
            result = _run(*args)
            assert result.exit_code == 2, (args, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], (args, result.output)
    assert not list(tmp_path.iterdir()), "nothing may be written locally for a bad URL (no folder 's3:')"

    # Outputs that are written locally (SAEs, reports) refuse a URL instead of making a folder 's3:'.
    for args in (["train", "--store", "unused", "--layer", "1", *TRAIN, "--out", f"s3://{s3_bucket}/sae"],
                 ["run", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--out", f"s3://{s3_bucket}/r"],
                 ["interpret", "--store", "unused", "--sae", str(tmp_path), "--out", f"s3://{s3_bucket}/interp"]):
        result = _run(*args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, (args, result.output)
        assert "written to a local folder" in result.output, result.output
    assert not list(tmp_path.iterdir())

    # No credentials anywhere: one line naming the variables to set.
    import s3fs
    with monkeypatch.context() as mp:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            result = _run("info", f"s3://{s3_bucket}/run")
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in result.output, result.output

    # A scheme whose package is missing names the pip extra.
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("s3fs", "gcsfs")
                        else real_find_spec(name, *a))
    for url, extra in ((f"s3://{s3_bucket}/run", "s3"), ("gs://bucket/run", "gcs")):
        result = _run(*_extract_args(tiny_gpt2_dir, corpus_file, url))
        assert result.exit_code == 2 and f"pip install 'ghosttrack[{extra}]'" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_launched_processes_write_the_single_process_store_into_one_bucket(tiny_gpt2_dir, corpus_file,
                                                                                 s3_bucket, monkeypatch):
    """Two processes as accelerate/torchrun start them (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 ...),
    as on two hosts sharing nothing but the bucket: each writes its own chunks and commit record."""
    import launch
    monkeypatch.setattr(launch, "ENV", {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    one, two = f"s3://{s3_bucket}/one", f"s3://{s3_bucket}/two"
    args = _extract_args(tiny_gpt2_dir, corpus_file, two, "--chunk-tokens", "128")
    done = launch.accelerate_launch("-m", "ghosttrack.cli", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _run(*_extract_args(tiny_gpt2_dir, corpus_file, one, "--chunk-tokens", "128")).exit_code == 0
    files_one, files_two = _without_run_options(object_bytes(one)), _without_run_options(object_bytes(two))
    assert sorted(files_two) == sorted(files_one) and any(k.startswith("layers/") for k in files_one)
    assert [k for k in files_one if files_two[k] != files_one[k]] == []


def test_sharded_extraction_into_s3_holds_the_rows_of_the_plain_store_in_fewer_objects(
        tiny_gpt2_dir, corpus_file, s3_url, tmp_path):
    import numpy as np
    from ghosttrack.store.reader import ActivationStore
    sharded = _run(*_extract_args(tiny_gpt2_dir, corpus_file, s3_url, "--chunk-tokens", "64", "--shard-chunks", "4"))
    assert sharded.exit_code == 0, sharded.output
    plain = _run(*_extract_args(tiny_gpt2_dir, corpus_file, tmp_path / "plain", "--chunk-tokens", "64"))
    assert plain.exit_code == 0, plain.output
    objects = object_bytes(s3_url)
    assert sorted(k for k in objects if k.startswith("layers/1/c/")) == [f"layers/1/c/{i}/0" for i in range(4)]
    assert len(list((tmp_path / "plain" / "layers" / "1" / "c").iterdir())) == 16
    a, b = ActivationStore.open(s3_url), ActivationStore.open(tmp_path / "plain")
    assert (a.chunk_tokens, a.attrs["shard_chunks"], a.n_tokens) == (256, 4, b.n_tokens)
    for layer in (1, 2):
        np.testing.assert_array_equal(a.read_rows(layer, 0, a.n_tokens), b.read_rows(layer, 0, b.n_tokens))
    np.testing.assert_array_equal(a.tokens(), b.tokens())
    assert _run("verify", s3_url).exit_code == 0
    # A damaged shard: verify names it, --resume --repair re-extracts it to the same bytes.
    from ghosttrack.store.location import as_location
    shard = as_location(s3_url) / "layers/2/c/1/0"
    raw = bytearray(shard.read_bytes())
    raw[500] ^= 0x08
    shard.write_bytes(bytes(raw))
    damaged = _run("verify", s3_url)
    assert damaged.exit_code == 2 and "layers/2 chunk 1" in damaged.output, damaged.output
    repaired = _run(*_extract_args(tiny_gpt2_dir, corpus_file, s3_url, "--chunk-tokens", "64", "--shard-chunks", "4",
                                   "--resume", "--repair"))
    assert repaired.exit_code == 0, repaired.output
    assert object_bytes(s3_url) == objects
    again = _run(*_extract_args(tiny_gpt2_dir, corpus_file, s3_url, "--chunk-tokens", "64", "--shard-chunks", "4",
                                "--resume"))
    assert again.exit_code == 0 and "already complete" in again.output
    other = _run(*_extract_args(tiny_gpt2_dir, corpus_file, s3_url, "--chunk-tokens", "64", "--resume"))
    assert other.exit_code == 2 and "chunk_tokens: stored 256 vs requested 64" in other.output
