"""ActivationStore: the memmap fast path against zarr, committed rows only, clear errors."""

import shutil

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec

from ghosttrack.store import format as fmt
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import (SYNTHETIC_ATTRS, append_synthetic, synthetic_acts,
                                        synthetic_rows, write_synthetic_store)
from ghosttrack.store.writer import StoreWriter

D, CT = 20, 48
N = 7 * CT + 13  # odd shapes: the last chunk is partial


@pytest.fixture
def store_path(tmp_path):
    return write_synthetic_store(tmp_path / "s", layers=[0, 6], d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=11)


def _recompressed_copy(src, dst) -> None:
    """The same store with gzip-compressed layer arrays: no memmap fast path possible."""
    g = zarr.open_group(src, mode="r")
    out = zarr.open_group(zarr.storage.LocalStore(dst), mode="w", zarr_format=3,
                          attributes={**g.attrs, "format_version": 2})
    for name in fmt.array_names(g.attrs["layers"]):
        a = g[name]
        b = out.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=0,
                             compressors=GzipCodec(level=1) if name.startswith("layers/") else None)
        b[:] = a[:]


def test_memmap_path_equals_zarr_path_on_random_data(tmp_path):
    rng = np.random.default_rng(3)
    n = 5 * CT + 7
    x = rng.standard_normal((n, D)).astype(np.float16)
    path = tmp_path / "r"
    with StoreWriter.open(path, layers=[2], d_model=D, target_tokens=n, chunk_tokens=CT,
                          attrs=SYNTHETIC_ATTRS) as w:
        for a in range(0, n, 31):
            w.append({2: x[a:a + 31]}, *synthetic_rows(a, min(n, a + 31), 16))
        w.close(complete=True)
    s = ActivationStore.open(path)
    arr = zarr.open_group(path, mode="r")["layers/2"]
    for c in range(s.n_chunks):
        fast = s.read_chunk(2, c)
        lo, hi = s.chunk_bounds(c)
        assert isinstance(fast, np.memmap) and fast.dtype == np.float16
        np.testing.assert_array_equal(fast, arr[lo:hi])
        np.testing.assert_array_equal(fast, x[lo:hi])
    assert s.read_chunk(2, s.n_chunks - 1).shape == (7, D)
    _recompressed_copy(path, tmp_path / "gz")
    slow = ActivationStore.open(tmp_path / "gz", trust=True)
    assert slow.chunk_file(2, 0) is None
    for c in range(s.n_chunks):
        got = slow.read_chunk(2, c)
        assert not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, s.read_chunk(2, c))
    np.testing.assert_array_equal(slow.read_rows(2, 5, n - 3), x[5:n - 3])


def test_read_rows_tokens_and_summary(store_path):
    s = ActivationStore.open(store_path)
    assert (s.n_tokens, s.n_chunks, s.layers, s.d_model, s.chunk_tokens) == (N, 8, [0, 6], D, CT)
    assert s.complete and s.model == "synthetic" and s.hook == "resid_post" and s.context_length == 11
    assert s.chunk_bounds(7) == (7 * CT, N)
    for lo, hi in [(0, N), (CT - 1, CT + 1), (5, 6), (3 * CT, 4 * CT), (N - 2, N), (9, 9)]:
        np.testing.assert_array_equal(s.read_rows(6, lo, hi), synthetic_acts(6, lo, hi, D).astype(np.float16))
    tokens, positions, seq = synthetic_rows(0, N, 11)
    np.testing.assert_array_equal(s.tokens(), tokens)
    np.testing.assert_array_equal(s.positions(10, 40), positions[10:40])
    np.testing.assert_array_equal(s.sequence_ids(CT), seq[CT:])
    text = s.summary()
    for part in ["model:     synthetic", "hook:      resid_post", "layers:    0, 6", "d_model:   20",
                 f"{N:,} / {N:,} committed, complete", f"{CT:,} tokens per chunk, 8 chunks", "kind=synthetic",
                 "on disk:"]:
        assert part in text
    size = s.nbytes_on_disk()
    assert 2 * N * D * 2 < size < 2 * 8 * CT * D * 2 + 8 * CT * 16 + 20_000


def test_never_returns_rows_past_the_commit(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter.open(path, layers=[0], d_model=D, target_tokens=N, chunk_tokens=CT,
                         attrs=SYNTHETIC_ATTRS)
    append_synthetic(w, 0, 3 * CT + 20, context_length=16)  # 20 rows buffered, not committed
    s = ActivationStore.open(path)
    assert s.n_tokens == 3 * CT and s.n_chunks == 3 and not s.complete
    assert "incomplete" in s.summary()
    with pytest.raises(IndexError):
        s.read_chunk(0, 3)
    with pytest.raises(IndexError):
        s.read_rows(0, 0, 3 * CT + 1)
    with pytest.raises(IndexError):
        s.tokens(0, 3 * CT + 1)
    assert len(s.tokens()) == 3 * CT
    w.close(complete=False)


def test_missing_store_and_garbage_directory(tmp_path):
    with pytest.raises(StoreError, match="no activation store at .*ghosttrack extract --out"):
        ActivationStore.open(tmp_path / "nope")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a GhostTrack activation store"):
        ActivationStore.open(junk)
    (junk / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a GhostTrack activation store"):
        ActivationStore.open(junk)
    plain = tmp_path / "plain_zarr"
    zarr.open_group(zarr.storage.LocalStore(plain), mode="w", zarr_format=3, attributes={"a": 1})
    with pytest.raises(StoreError, match="not a GhostTrack activation store"):
        ActivationStore.open(plain)


def test_damaged_stores(store_path, tmp_path):
    f = fmt.chunk_file(store_path, zarr.open_group(store_path, mode="r")["layers/6"], 2)
    f.write_bytes(f.read_bytes()[:100])  # truncated chunk file
    s = ActivationStore.open(store_path)
    with pytest.raises(StoreError, match=r"damaged: .* holds 100 bytes, expected"):
        s.read_chunk(6, 2)
    shutil.rmtree(store_path / "layers" / "0")
    with pytest.raises(StoreError, match="damaged.*re-extract with --overwrite"):
        ActivationStore.open(store_path)


def test_missing_layer_error(store_path):
    s = ActivationStore.open(store_path)
    with pytest.raises(StoreError) as e:
        s.read_chunk(7, 0)
    assert str(e.value) == (f"layer 7 is not in store {store_path} (it has layers 0, 6); "
                            "extract it with ghosttrack extract --layers 7")
