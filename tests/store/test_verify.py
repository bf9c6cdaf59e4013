"""verify_store finds every damaged chunk (presence, size, checksum, finite values); rewrite_chunk repairs
exactly those chunks back to the bytes of an undamaged store."""

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec

from ghosttrack.store import binding
from ghosttrack.store import format as fmt
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import (SYNTHETIC_ATTRS, append_synthetic, synthetic_acts, synthetic_rows,
                                        write_synthetic_store)
from ghosttrack.store.verify import Damage, repair_ranges, verify_store
from ghosttrack.store.writer import StoreWriter

LAYERS, D, CT, CTX = [2, 3], 10, 24, 8
N = 9 * CT + 5  # the last chunk is partial


def make(path, n=N, complete=True):
    return write_synthetic_store(path, layers=LAYERS, d_model=D, n_tokens=n, chunk_tokens=CT, context_length=CTX,
                                 target_tokens=N, complete=complete)


def store_files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith(fmt.LOCK_PREFIX)}


def chunk(path, name, c):
    return fmt.chunk_file(path, zarr.open_group(path, mode="r")[name], c)


def flip_bit(f, at=3):
    raw = bytearray(f.read_bytes())
    raw[at] ^= 0x04
    f.write_bytes(bytes(raw))


def put_value(f, index: int, value, dtype, checksum=True):
    """Change one value of a chunk file and keep its checksum valid (damage only a value check sees)."""
    raw = np.fromfile(f, np.uint8)
    data = raw[:-4] if checksum else raw
    data.view(dtype)[index] = value
    if checksum:
        raw[-4:] = np.frombuffer(np.uint32(google_crc32c.value(data.tobytes())).astype("<u4").tobytes(), np.uint8)
    raw.tofile(f)


def put_written_value(path, name: str, c: int, index: int, value, dtype):
    """Change one value as if the writer had written it (a NaN from the model): the chunk's trailer and
    its bound checksum are recomputed, so only the finite check sees it."""
    put_value(chunk(path, name, c), index, value, dtype)
    g = zarr.open_group(path, mode="r")
    a, records = g[name], g[binding.CHECKSUMS]
    sums = binding.read_record(path, records, c)
    crc = google_crc32c.value(chunk(path, name, c).read_bytes()[:-4])
    sums[name] = binding.bind(crc, binding.header(name, c, a.dtype, a.chunks, g.attrs["dtype"]))
    f = binding.record_file(path, records, c)
    row = binding.record_row(records.attrs["arrays"], sums)
    f.write_bytes(row.tobytes() + np.uint32(google_crc32c.value(row.tobytes())).astype("<u4").tobytes())


def damage_some(path) -> set[tuple[str, int]]:
    chunk(path, "layers/3", 1).unlink()                                  # missing
    f = chunk(path, "tokens", 4)
    f.write_bytes(f.read_bytes()[:-9])                                   # short
    flip_bit(chunk(path, "layers/2", 5))                                 # same size, bytes changed
    flip_bit(chunk(path, "sequence_ids", 5), at=17)
    put_written_value(path, "layers/3", 9, 3 * D + 1, np.nan, "<f2")     # a NaN in the partial last chunk
    return {("layers/3", 1), ("tokens", 4), ("layers/2", 5), ("sequence_ids", 5), ("layers/3", 9)}


def test_healthy_store(tmp_path):
    path = make(tmp_path / "s")
    report = verify_store(path)
    assert report.healthy and report.checksums and report.damaged == [] and report.n_chunks == 10
    on_disk = sum(len(b) for k, b in store_files(path).items() if "/c/" in k and not k.startswith("checksums/"))
    assert report.bytes_read == on_disk
    assert report.summary().endswith(": healthy") and "\n" not in report.summary()
    assert repair_ranges(report) == []


def test_finds_every_damaged_chunk(tmp_path):
    path = make(tmp_path / "s")
    planted = damage_some(path)
    report = verify_store(path)
    assert {(d.array, d.chunk) for d in report.damaged} == planted
    why = {(d.array, d.chunk): d.reason for d in report.damaged}
    assert why[("layers/3", 1)].startswith("is missing")
    assert why[("tokens", 4)].startswith(f"holds {CT * 4 + 4 - 9} bytes, expected {CT * 4 + 4}")
    assert "CRC-32C" in why[("layers/2", 5)] and "CRC-32C" in why[("sequence_ids", 5)]
    assert why[("layers/3", 9)].startswith("holds 1 NaN/inf value(s) (rows of the chunk: 3)")
    assert report.damaged_chunks == [1, 4, 5, 9]
    assert repair_ranges(report) == [(CT, 2 * CT), (4 * CT, 6 * CT), (9 * CT, N)]
    text = report.summary().splitlines()
    assert len(text) == 1 + len(planted) + 1 and "5 damaged chunk file(s) in 4 chunk(s)" in text[0]
    assert "  layers/3 chunk 1: is missing" in text[1] and "--resume --repair" in text[-1]


def test_infinity_and_values_past_the_commit(tmp_path):
    """inf counts as damage; the zero padding of the last chunk past the commit is not checked."""
    path = make(tmp_path / "s", n=N - 3, complete=False)  # committed: 9 full chunks; chunk 9 uncommitted
    put_written_value(path, "layers/2", 0, 5, -np.inf, "<f2")
    report = verify_store(path)
    assert report.damaged == [Damage("layers/2", 0, "holds 1 NaN/inf value(s) (rows of the chunk: 0)")]


def test_zarr_decoded_and_format_1_stores(tmp_path):
    """Arrays zarr must decode (gzip) and stores without checksums are verified as far as they can be."""
    src = make(tmp_path / "s")
    g = zarr.open_group(src, mode="r")
    for name, codec, version in [("gz", GzipCodec(level=1), 2), ("v1", None, 1)]:
        out = zarr.open_group(zarr.storage.LocalStore(tmp_path / name), mode="w", zarr_format=3,
                              attributes={**g.attrs.asdict(), "format_version": version})
        for a in fmt.array_names(LAYERS):
            out.create_array(a, shape=g[a].shape, chunks=g[a].chunks, dtype=g[a].dtype, fill_value=0,
                             compressors=codec, chunk_key_encoding=fmt.CHUNK_KEY_ENCODING)[:] = g[a][:]
    assert verify_store(tmp_path / "gz").healthy
    chunk(tmp_path / "gz", "layers/3", 2).write_bytes(b"garbage")
    chunk(tmp_path / "gz", "tokens", 6).unlink()
    report = verify_store(tmp_path / "gz")
    assert [(d.array, d.chunk) for d in report.damaged] == [("layers/3", 2), ("tokens", 6)]
    assert report.damaged[0].reason.startswith("cannot be decoded")

    v1 = verify_store(tmp_path / "v1")
    assert v1.healthy and not v1.checksums and "no checksums" in v1.summary()
    put_value(chunk(tmp_path / "v1", "layers/2", 7), 0, np.inf, "<f2", checksum=False)
    chunk(tmp_path / "v1", "positions", 8).write_bytes(b"\0" * 3)
    assert {(d.array, d.chunk) for d in verify_store(tmp_path / "v1").damaged} == {("layers/2", 7), ("positions", 8)}


def rewrite(writer: StoreWriter, c: int, n_tokens: int) -> None:
    lo, hi = c * CT, min((c + 1) * CT, n_tokens)
    acts = {layer: synthetic_acts(layer, lo, hi, D) for layer in LAYERS}
    writer.rewrite_chunk(c, acts, *synthetic_rows(lo, hi, CTX))


def test_repair_gives_the_bytes_of_an_undamaged_store(tmp_path):
    reference = store_files(make(tmp_path / "ref"))
    path = make(tmp_path / "s")
    damage_some(path)
    report = verify_store(path)
    with StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="resume") as w:
        assert w.complete
        for c in report.damaged_chunks:
            rewrite(w, c, N)
        w.close(complete=True)
    assert store_files(path) == reference
    assert verify_store(path).healthy


def test_repair_an_interrupted_store_then_finish_it(tmp_path):
    reference = store_files(make(tmp_path / "ref"))
    path = make(tmp_path / "s", n=5 * CT + 7, complete=False)  # 5 chunks committed
    flip_bit(chunk(path, "positions", 2))
    report = verify_store(path)
    assert report.damaged_chunks == [2] and repair_ranges(report) == [(2 * CT, 3 * CT)]
    with StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="resume") as w:
        rewrite(w, 2, N)
        with pytest.raises(ValueError, match="not a committed chunk"):
            rewrite(w, 5, N)  # past the commit: extract it with append, not repair
        with pytest.raises(ValueError, match="chunk 3 needs"):
            w.rewrite_chunk(3, {layer: synthetic_acts(layer, 0, 5, D) for layer in LAYERS}, *synthetic_rows(0, 5, CTX))
        append_synthetic(w, w.next_row, N, context_length=CTX)
        w.close(complete=True)
    assert store_files(path) == reference


def test_repair_by_rank(tmp_path):
    """In a two-process run each rank rewrites only the chunks it owns."""
    path = make(tmp_path / "s", n=6 * CT, complete=False)
    w = StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                         attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="resume")
    assert w.committed_tokens == 6 * CT
    w.close(complete=False)
    ref = store_files(path)
    flip_bit(chunk(path, "layers/3", 4))
    # A single-process store cannot be resumed by two ranks; a fresh two-rank store shows the ownership rule.
    two = tmp_path / "two"
    kw = dict(layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT, attrs={**SYNTHETIC_ATTRS, "context_length": CTX})
    r0 = StoreWriter.open(two, rank=0, world_size=2, **kw)
    r1 = StoreWriter.open(two, mode="resume", rank=1, world_size=2, **kw)
    for c in (0, 2):
        append_synthetic(r0, c * CT, (c + 1) * CT, context_length=CTX)
    append_synthetic(r1, CT, 2 * CT, context_length=CTX)
    with pytest.raises(ValueError, match="not a committed chunk"):
        rewrite(r0, 1, N)  # rank 1's chunk
    rewrite(r0, 2, N)
    rewrite(r1, 1, N)
    with pytest.raises(ValueError, match="not a committed chunk"):
        rewrite(r1, 3, N)  # rank 1 has not committed its second chunk
    r0.close(complete=False)
    r1.close(complete=False)
    with StoreWriter.open(path, mode="resume", **kw) as w:
        rewrite(w, 4, N)
        w.close(complete=False)
    assert store_files(path) == ref
    assert ActivationStore.open(path).n_tokens == 6 * CT


@pytest.mark.parametrize("dtype", ["<f2", "<f4"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (300, 37), (2000, 700)])
def test_exponent_bit_check_matches_isfinite(dtype, shape):
    """The fast NaN/inf check (masked exponent bits, blockwise max) against np.isfinite."""
    from ghosttrack.store.verify import _nonfinite

    rng = np.random.default_rng(hash((dtype, shape)) % 2**32)
    for n_bad in (0, 1, 5):
        x = (rng.standard_normal(shape) * 1e3).astype(dtype)
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, size=min(n_bad, flat.size), replace=False)
        flat[idx] = rng.choice([np.nan, np.inf, -np.inf], size=len(idx))
        n_rows = rng.integers(1, shape[0] + 1)
        got = _nonfinite(x.view(np.uint8), x.dtype, n_rows)
        bad = ~np.isfinite(x[:n_rows])
        if not bad.any():
            assert got is None
        else:
            rows = ", ".join(map(str, np.flatnonzero(bad.any(axis=1))[:3]))
            assert got == f"holds {int(bad.sum())} NaN/inf value(s) (rows of the chunk: {rows})"


def test_nan_in_a_late_block_of_a_large_chunk(tmp_path):
    """Chunks larger than verify's block: a NaN in the last committed row is found, one in the padding
    past the commit is not (those bytes are not data)."""
    d, ct, n = 1024, 1536, 1536 + 1000  # a layer chunk is 3 MiB; the last chunk holds 1000 committed rows
    path = write_synthetic_store(tmp_path / "big", layers=[0], d_model=d, n_tokens=n, chunk_tokens=ct)
    put_written_value(path, "layers/0", 1, 1200 * d + 5, np.nan, "<f2")  # padding row 1200 > 1000 committed
    assert verify_store(path).healthy
    put_written_value(path, "layers/0", 1, 999 * d + d - 1, -np.inf, "<f2")
    put_written_value(path, "layers/0", 0, ct * d - 1, np.nan, "<f2")  # the very last value of a full chunk
    assert verify_store(path).damaged == [Damage("layers/0", 0, "holds 1 NaN/inf value(s) (rows of the chunk: 1535)"),
                                          Damage("layers/0", 1, "holds 1 NaN/inf value(s) (rows of the chunk: 999)")]
