"""interpret and match --store refuse a store that is being written or incomplete, as train does,
unless --allow-partial-store; the refusal names the fix in one line."""
import shutil

import pytest
import zarr
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.store.format import LOCK_PREFIX
from ghosttrack.store.lock import StoreLock
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder


def save_sae(directory, layer):
    sae = SparseAutoencoder(ReluSAEConfig(d_in=32, d_sae=48), {"hook_layer": layer, "model_name": "tiny",
                                                               "hook_name": f"blocks.{layer}.hook_resid_post"})
    sae.save(directory)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_gpt2_dir, corpus_file):
    out = tmp_path_factory.mktemp("stores") / "store"
    result = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "1,2",
        "--tokens", "2048", "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "256", "--device", "cpu",
        "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def partial(extracted, tmp_path):
    """The store as an interrupted extraction leaves it: 1,024 of 2,048 tokens committed."""
    path = tmp_path / "partial"
    shutil.copytree(extracted, path)
    zarr.open_group(path, mode="r+").update_attributes({"committed_tokens": 1024, "complete": False})
    return path


@pytest.fixture
def saes(tmp_path):
    for layer in (1, 2):
        save_sae(tmp_path / "sae" / f"layer_{layer}", layer)
    return tmp_path / "sae"


def commands(store, saes, out):
    return {"interpret": ["interpret", "--store", store, "--sae", saes / "layer_2", "--out", out, "--device", "cpu",
                          "--no-html"],
            "match": ["match", "--store", store, "--sae", saes, "--out", out, "--device", "cpu"]}


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["interpret", "match"])
def test_partial_store_is_refused_then_allowed(partial, saes, tmp_path, command):
    args = commands(partial, saes, tmp_path / "out")[command]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: store {partial} is incomplete (1,024 of 2,048 tokens committed; its extraction was interrupted); "
        f"finish it with ghosttrack extract ... --resume, or pass --allow-partial-store to {command} on its "
        "committed rows"]
    assert not (tmp_path / "out").exists()
    with StoreLock.acquire(partial / LOCK_PREFIX, partial):
        result = invoke(args)
        assert result.exit_code == 2 and "is still being written (pid" in result.output
        assert "--allow-partial-store" in result.output
    result = invoke(args + ["--allow-partial-store"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["interpret", "match"])
def test_tampered_store_is_refused_unless_trusted(extracted, saes, tmp_path, command):
    store = tmp_path / "retyped"
    shutil.copytree(extracted, store)
    for name in ("layers/1", "layers/2"):  # float16 -> int16: the same bytes read as other numbers
        meta = store / name / "zarr.json"
        meta.write_text(meta.read_text().replace('"float16"', '"int16"'))
    args = commands(store, saes, tmp_path / "out")[command]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "of layers/" in errors[0] and "is not the chunk its checksum record names" in errors[0]
    assert "Traceback" not in result.output
    assert invoke(args + ["--trust-store"]).exit_code == 0
