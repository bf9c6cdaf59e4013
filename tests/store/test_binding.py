"""A chunk's checksum binds what it is: swapped, moved or retyped chunks fail verify and are refused
on read (reads check by default); trust skips the check; older stores are refused until upgraded."""

import json
import shutil

import numpy as np
import pytest
import zarr

from ghosttrack.store import format as fmt
from ghosttrack.store.errors import StoreError
from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import synthetic_acts, write_synthetic_store
from ghosttrack.store.verify import upgrade_store, verify_store

LAYERS, D, CT, CTX = [0, 1], 8, 16, 8
N = 6 * CT


@pytest.fixture
def store(tmp_path):
    return write_synthetic_store(tmp_path / "s", layers=LAYERS, d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=CTX)


def chunk(path, name, c):
    return fmt.chunk_file(path, zarr.open_group(path, mode="r")[name], c)


def read_all(path, **kw):
    s = ActivationStore.open(path, **kw)
    out = [s.read_rows(layer, 0, s.n_tokens) for layer in s.layers]
    return out + [s.tokens(), s.positions(), s.sequence_ids()]


def refused(path, **kw) -> str:
    with pytest.raises(StoreError) as e:
        read_all(path, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def swap(a, b):
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb)
    b.write_bytes(ra)


def retype(path, name, data_type):
    meta = path / name / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = data_type
    meta.write_text(json.dumps(doc))


def test_untouched_store_reads_and_verifies(store):
    assert verify_store(store).healthy
    np.testing.assert_array_equal(read_all(store)[1], synthetic_acts(1, 0, N, D).astype(np.float16))


@pytest.mark.parametrize("name", ["layers/0", "tokens"])
def test_swapped_chunks_of_one_array(store, name):
    swap(chunk(store, name, 1), chunk(store, name, 4))
    damaged = verify_store(store).damaged
    assert {(d.array, d.chunk) for d in damaged} == {(name, 1), (name, 4)}
    assert all("moved, swapped or retyped" in d.reason for d in damaged)
    assert f"chunk 1 of {name} is not the chunk" in refused(store)
    read_all(store, trust=True)  # the explicit opt-out reads it unchecked


def test_chunk_swapped_across_layers(store):
    swap(chunk(store, "layers/0", 2), chunk(store, "layers/1", 2))
    assert {(d.array, d.chunk) for d in verify_store(store).damaged} == {("layers/0", 2), ("layers/1", 2)}
    refused(store)


def test_moved_chunk(store):
    src, dst = chunk(store, "layers/1", 2), chunk(store, "layers/1", 5)
    shutil.copyfile(src, dst)
    assert [(d.array, d.chunk) for d in verify_store(store).damaged] == [("layers/1", 5)]
    assert "chunk 5 of layers/1 is not the chunk" in refused(store)


def test_chunk_and_its_record_swapped_together(store):
    """Swapping the records as well does not help: the chunk index is part of the bound checksum."""
    for name in fmt.array_names(LAYERS) + ["checksums"]:
        swap(chunk(store, name, 0), chunk(store, name, 3))
    assert len(verify_store(store).damaged) == 2 * len(fmt.array_names(LAYERS))
    refused(store)


@pytest.mark.parametrize("name,data_type", [("layers/0", "int16"), ("layers/1", "uint16"), ("tokens", "float32"),
                                            ("positions", "uint32")])
def test_retyped_array(store, name, data_type):
    retype(store, name, data_type)
    assert {d.array for d in verify_store(store).damaged} == {name}
    assert f"of {name} is not the chunk" in refused(store)


def test_store_dtype_attribute_changed(store):
    g = zarr.open_group(store, mode="r+")
    g.update_attributes({"dtype": "float32"})
    assert len(verify_store(store).damaged) == N // CT * len(fmt.array_names(LAYERS))
    refused(store)


def test_bytes_changed_with_the_trailer_fixed_are_refused_on_read(store):
    """A finite value changed and the zarr trailer recomputed: only the bound checksum can tell."""
    import google_crc32c

    f = chunk(store, "layers/0", 3)
    raw = bytearray(f.read_bytes())
    raw[10] ^= 0x01
    raw[-4:] = np.uint32(google_crc32c.value(bytes(raw[:-4]))).astype("<u4").tobytes()
    f.write_bytes(bytes(raw))
    assert zarr.open_group(store, mode="r")["layers/0"][:].shape == (N, D)  # plain zarr cannot see it
    assert "chunk 3 of layers/0 is not the chunk" in refused(store)


def test_flipped_bit_is_refused_on_read(store):
    f = chunk(store, "positions", 2)
    raw = bytearray(f.read_bytes())
    raw[0] ^= 0x40
    f.write_bytes(bytes(raw))
    assert "chunk 2 of positions fails its CRC-32C" in refused(store)


def test_loader_checks_every_chunk(store):
    swap(chunk(store, "layers/1", 0), chunk(store, "layers/1", 5))
    s = ActivationStore.open(store)
    cfg = LoaderConfig(batch_size=8, buffer_batches=8, val_fraction=0.0, max_norm_ratio=None)
    with pytest.raises(StoreError, match="is not the chunk"):
        for _ in ActivationLoader(s, 1, cfg, progress=False):
            pass
    trusted = ActivationLoader(ActivationStore.open(store, trust=True), 1, cfg, progress=False)
    assert sum(len(b) for b in trusted) > 0


def test_damaged_record(store):
    f = chunk(store, "checksums", 2)
    f.write_bytes(f.read_bytes()[:-1])
    assert "malformed checksum record" in refused(store)
    f.unlink()
    assert "has no checksum record" in refused(store)
    assert {d.chunk for d in verify_store(store).damaged} == {2}


def unbind(path):
    """The store as format 2 wrote it: no checksums array."""
    shutil.rmtree(path / "checksums")
    g = zarr.open_group(path, mode="r+")
    g.update_attributes({"format_version": 2})


def test_older_store_is_refused_until_upgraded(store):
    unbind(store)
    msg = refused(store)
    assert "ghosttrack verify --upgrade" in msg and "--trust-store" in msg
    read_all(store, trust=True)
    assert "verify --upgrade" in verify_store(store).summary()
    assert "checked and bound" in upgrade_store(store)
    assert zarr.open_group(store, mode="r").attrs["format_version"] == 3
    assert verify_store(store).healthy and "nothing to do" in upgrade_store(store)
    read_all(store)
    swap(chunk(store, "tokens", 0), chunk(store, "tokens", 1))
    refused(store)


def test_upgrade_refuses_a_damaged_store(store):
    unbind(store)
    f = chunk(store, "layers/0", 1)
    raw = bytearray(f.read_bytes())
    raw[5] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="before ghosttrack verify --upgrade"):
        upgrade_store(store)
    assert zarr.open_group(store, mode="r").attrs["format_version"] == 2
    assert not (store / "checksums").exists()
