"""Seeded damage to a tiny store and a tiny SAE: truncated, flipped, swapped, moved, retyped, deleted
and edited files. For every case, `ghosttrack verify`, a full read and `load_sae` either succeed with
exactly the original data, or fail with exit 2 / one line naming the problem: never a traceback, a
hang, or tampered data read as valid.
"""
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.errors import GhostTrackError
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
from ghosttrack.sae.module import load_sae
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import write_synthetic_store

# More cases or another seed for a longer hunt: FUZZ_STORE=600 FUZZ_SAE=300 FUZZ_SEED=1 pytest tests/test_damage_fuzz.py
STORE_CASES = int(os.environ.get("FUZZ_STORE", 80))
SAE_CASES = int(os.environ.get("FUZZ_SAE", 40))
SEED = int(os.environ.get("FUZZ_SEED", 0))
CASE_LIMIT_S = 60  # a case takes milliseconds; only a hang gets near this
DTYPES = ["float16", "int16", "uint16", "float32", "int32", "uint32", "int64", "float64", "bfloat16", "complex64", "x"]


def read_everything(path, **kw) -> list[np.ndarray]:
    s = ActivationStore.open(path, **kw)
    out = [np.array(s.read_rows(layer, 0, s.n_tokens)) for layer in s.layers]
    return out + [np.array(s.tokens()), np.array(s.positions()), np.array(s.sequence_ids())]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = write_synthetic_store(tmp_path_factory.mktemp("fuzz") / "store", layers=[0, 3], d_model=8,
                                 n_tokens=5 * 16 + 7, chunk_tokens=16, context_length=8)
    return path, read_everything(path)


def files(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and not p.name.startswith(".lock"))


def chunk_files(root: Path) -> list[Path]:
    return [p for p in files(root) if "/c/" in str(p.relative_to(root)).replace("\\", "/") or
            str(p.relative_to(root)).startswith("c/")]


def damage_store(root: Path, rng: np.random.Generator) -> str:
    """Apply one seeded damage; returns its description (for the failure message)."""
    kind = rng.choice(["truncate", "flip", "swap", "move", "retype", "delete", "attr"])
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if kind == "truncate":
        f = pick(files(root))
        raw = f.read_bytes()
        f.write_bytes(raw[: int(rng.integers(len(raw)))])
    elif kind == "flip":
        f = pick(files(root))
        raw = bytearray(f.read_bytes())
        at = int(rng.integers(len(raw)))
        raw[at] ^= 1 << int(rng.integers(8))
        f.write_bytes(bytes(raw))
    elif kind in ("swap", "move"):
        chunks = chunk_files(root)
        a = pick(chunks)
        same = [p for p in chunks if p != a and p.stat().st_size == a.stat().st_size]
        if not same:
            return damage_store(root, rng)
        b = pick(same)
        ra, rb = a.read_bytes(), b.read_bytes()
        b.write_bytes(ra)
        if kind == "swap":
            a.write_bytes(rb)
        f = f"{a.relative_to(root)} <-> {b.relative_to(root)}"
        return f"{kind} {f}"
    elif kind == "retype":
        f = pick(files(root, "zarr.json")[1:] or files(root, "zarr.json"))
        doc = json.loads(f.read_text())
        if "data_type" not in doc:
            return damage_store(root, rng)
        doc["data_type"] = pick(DTYPES)
        f.write_text(json.dumps(doc))
        return f"retype {f.relative_to(root)} to {doc['data_type']}"
    elif kind == "delete":
        f = pick(files(root))
        f.unlink()
    else:
        f = root / "zarr.json"
        doc = json.loads(f.read_text())
        key = pick(["dtype", "d_model", "chunk_tokens", "committed_tokens", "layers", "format_version"])
        doc["attributes"][key] = pick([doc["attributes"][key], "float32", 0, -1, 12, 2, [0], None, "x"])
        f.write_text(json.dumps(doc))
        return f"attribute {key} = {doc['attributes'][key]!r}"
    return f"{kind} {f.relative_to(root)}"


def bounded(fn):
    """fn() in a worker thread; its outcome, failing the test if it hangs."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the caller
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(CASE_LIMIT_S)
    assert not t.is_alive(), "hung"
    return out


def test_store_damage(original, tmp_path):
    src, expected = original
    rng = np.random.default_rng([19, SEED])
    outcomes = {"refused": 0, "unchanged": 0}
    for case in range(STORE_CASES):
        root = tmp_path / f"case{case}"
        shutil.copytree(src, root)
        what = damage_store(root, rng)
        verify = bounded(lambda: CliRunner().invoke(main, ["verify", str(root), "--no-progress"]))["value"]
        assert not isinstance(verify.exception, Exception) or isinstance(verify.exception, SystemExit), \
            f"{what}: verify raised {verify.exception!r}"
        assert verify.exit_code in (0, 2), f"{what}: verify exit {verify.exit_code}"
        read = bounded(lambda: read_everything(root))
        if "error" in read:
            err = read["error"]
            assert isinstance(err, (StoreError, GhostTrackError)), f"{what}: read raised {err!r}"
            assert "\n" not in str(err), f"{what}: {err}"
            errors = [line for line in verify.output.splitlines() if line.startswith("error:")]
            assert verify.exit_code == 2 and len(errors) == 1, f"{what}: read refused but verify said\n{verify.output}"
            outcomes["refused"] += 1
            continue
        # Read as valid: it must be the original data (a prefix where the commit record shrank).
        got = read["value"]
        assert len(got) == len(expected), what
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and len(g) <= len(e), what
            np.testing.assert_array_equal(g, e[: len(g)], err_msg=what)
        outcomes["unchanged"] += 1
    assert outcomes["refused"] > STORE_CASES // 2, outcomes  # the damage does bite


def save_sae(directory: Path) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(ReluSAEConfig(d_in=8, d_sae=12), {"hook_layer": 1, "model_name": "m",
                                                              "hook_name": "blocks.1.hook_resid_post"})
    sae.save(directory)
    return sae


def damage_sae(directory: Path, rng: np.random.Generator) -> str:
    kind = rng.choice(["truncate weights", "delete", "edit cfg", "truncate cfg", "cfg not an object"])
    weights, cfg_file = directory / "sae_weights.safetensors", directory / "cfg.json"
    if kind == "truncate weights":
        raw = weights.read_bytes()
        weights.write_bytes(raw[: int(rng.integers(len(raw)))])
    elif kind == "delete":
        (weights if rng.random() < 0.5 else cfg_file).unlink()
    elif kind == "truncate cfg":
        raw = cfg_file.read_bytes()
        cfg_file.write_bytes(raw[: int(rng.integers(len(raw)))])
    elif kind == "cfg not an object":
        cfg_file.write_text(json.dumps(["d_in", 8]))
    else:
        cfg = json.loads(cfg_file.read_text())
        key = str(rng.choice(["d_in", "d_sae", "ghosttrack", "metadata", "architecture"]))
        value = [cfg.get(key), None, "8", 0, -3, 4, 16, [1], {"x": 1}, "jumprelu"][int(rng.integers(10))]
        if rng.random() < 0.3:
            cfg.pop(key, None)
            value = "<deleted>"
        else:
            cfg[key] = value
        cfg_file.write_text(json.dumps(cfg))
        return f"cfg {key} = {value!r}"
    return str(kind)


def test_sae_damage(tmp_path):
    rng = np.random.default_rng([23, SEED])
    reference = save_sae(tmp_path / "reference")
    for case in range(SAE_CASES):
        directory = tmp_path / f"sae{case}"
        shutil.copytree(tmp_path / "reference", directory)
        what = damage_sae(directory, rng)
        out = bounded(lambda: load_sae(directory))
        if "error" in out:
            err = out["error"]
            assert isinstance(err, GhostTrackError), f"{what}: {err!r}"
            assert "\n" not in str(err) and str(directory) in str(err), f"{what}: {err}"
            continue
        sae = out["value"]  # loaded: an edit that changes nothing the SAE computes with
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (8, 12), what
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(sae.state_dict()[name], value, msg=what)
