"""Sharded stores (shard_chunks > 1): plain zarr reads them, a crash at any write and resume give
the same bytes, verify finds damaged shards and rewrite_chunk repairs them byte-identically, on
disk and on an object store (memory://: the same code path as s3://)."""
import numpy as np
import pytest
import zarr

from ghosttrack.store import format as fmt
from ghosttrack.store.location import as_location
from ghosttrack.store.reader import ActivationStore, ChunkDamaged
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, append_synthetic, synthetic_acts, synthetic_rows
from ghosttrack.store.verify import verify_store
from ghosttrack.store.writer import StoreWriter

from s3_server import Crash, crash_after_writes, local_files, object_bytes

SHAPE = dict(layers=[0, 3], d_model=24, chunk_tokens=96)
N = 250  # 3 shards of 96 rows (4 chunks of 24 each), the last one partial
ATTRS = {**SYNTHETIC_ATTRS, "context_length": 16}


def _write(where, shard_chunks=4, n=N, **kw):
    with StoreWriter.open(where, target_tokens=n, attrs=ATTRS, shard_chunks=shard_chunks, **SHAPE, **kw) as w:
        if not w.complete:
            append_synthetic(w, w.next_row, n, context_length=16, piece=70)
            w.close(complete=True)


def _files(where, tmp_path=None):
    return object_bytes(where) if str(where).startswith("memory://") else local_files(where)


def _expected(layer, start, stop):
    return synthetic_acts(layer, start, stop, SHAPE["d_model"]).astype(np.float16)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_sharded_store_has_far_fewer_objects_and_plain_zarr_reads_it(where, tmp_path):
    url = str(tmp_path / "s") if where == "local" else "memory://gt-shard/plain"
    _write(url)
    files = _files(url)
    assert sorted(k for k in files if k.startswith("layers/3/c/")) == ["layers/3/c/0/0", "layers/3/c/1/0", "layers/3/c/2/0"]
    group = zarr.open_group(fmt.zarr_store(as_location(url), read_only=True), mode="r")
    assert group["layers/3"].shards == (96, 24) and group["layers/3"].chunks == (24, 24)
    np.testing.assert_array_equal(group["layers/3"][:], _expected(3, 0, N))
    store = ActivationStore.open(url)
    assert store.n_chunks == 3 and store.chunk_file(3, 0) is None  # no memory map: zarr decodes shards
    np.testing.assert_array_equal(store.read_rows(0, 5, 249), _expected(0, 5, 249))
    np.testing.assert_array_equal(store.tokens(), synthetic_rows(0, N, 16)[0])
    assert verify_store(url).healthy
    if where == "memory":
        as_location(url).remove_tree()


def test_a_crash_at_any_write_of_a_sharded_store_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    _write(tmp_path / "reference")
    reference = local_files(tmp_path / "reference")
    crash_at = 0
    while True:
        url = f"memory://gt-shard-crash/{crash_at}"
        with monkeypatch.context() as mp:
            crash_after_writes(mp, crash_at)
            try:
                _write(url)
                finished = True
            except Crash:
                finished = False
        attrs = fmt.read_store_attrs(url)
        if attrs is not None and attrs["committed_tokens"]:
            store = ActivationStore.open(url)
            np.testing.assert_array_equal(store.read_rows(3, 0, store.n_tokens), _expected(3, 0, store.n_tokens))
        _write(url, mode="resume" if attrs is not None else "overwrite")
        assert object_bytes(url) == reference, f"crash after {crash_at} writes"
        as_location(url).remove_tree()
        if finished:
            break
        crash_at += 1
    assert crash_at > 15


@pytest.mark.parametrize("where", ["local", "memory"])
def test_verify_finds_damaged_shards_and_rewrite_chunk_repairs_them_byte_identically(where, tmp_path):
    url = str(tmp_path / "s") if where == "local" else "memory://gt-shard/repair"
    _write(tmp_path / "reference")
    _write(url)
    root = as_location(url)
    store = ActivationStore.open(url)
    flipped = fmt.chunk_file(root, store._arrays["layers/3"], 1)
    raw = bytearray(flipped.read_bytes())
    raw[24 * 24 * 2 + 7] ^= 0x10  # inside the shard's second chunk
    flipped.write_bytes(bytes(raw))
    last = fmt.chunk_file(root, store._arrays["layers/0"], 2)
    raw = bytearray(last.read_bytes())
    raw[3] ^= 0x01
    last.write_bytes(bytes(raw))
    fmt.chunk_file(root, store._arrays["tokens"], 0).unlink()
    with pytest.raises(ChunkDamaged, match="chunk 1 of layers/3 cannot be decoded"):
        ActivationStore.open(url).read_rows(3, 100, 120)
    with pytest.raises(ChunkDamaged, match="chunk 0 of tokens is missing"):
        ActivationStore.open(url).tokens(0, 10)
    report = verify_store(url)
    assert sorted((d.array, d.chunk) for d in report.damaged) == [("layers/0", 2), ("layers/3", 1), ("tokens", 0)]
    with StoreWriter.open(url, target_tokens=N, attrs=ATTRS, shard_chunks=4, mode="resume", **SHAPE) as w:
        for c in report.damaged_chunks:
            start, stop = c * 96, min((c + 1) * 96, N)
            w.rewrite_chunk(c, {layer: synthetic_acts(layer, start, stop, 24) for layer in SHAPE["layers"]},
                            *synthetic_rows(start, stop, 16))
    assert verify_store(url).healthy
    assert _files(url) == local_files(tmp_path / "reference")
    if where == "memory":
        root.remove_tree()
