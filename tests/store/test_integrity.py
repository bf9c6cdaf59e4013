"""The committed range checks itself: missing, short or damaged data is a one-line error, never zeros."""

import json
import shutil

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec

from ghosttrack.store import format as fmt
from ghosttrack.store import modes
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, append_synthetic, synthetic_acts, synthetic_rows, write_synthetic_store
from ghosttrack.store.verify import upgrade_store, verify_store
from ghosttrack.store.writer import StoreWriter

LAYERS, D, CT, CTX = [0, 5], 12, 32, 8
N = 6 * CT + 9


@pytest.fixture
def store_path(tmp_path):
    return write_synthetic_store(tmp_path / "s", layers=LAYERS, d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=CTX)


def chunk(path, name, c):
    return fmt.chunk_file(path, zarr.open_group(path, mode="r")[name], c)


def one_line_error(fn) -> str:
    with pytest.raises(StoreError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def read_everything(s: ActivationStore) -> None:
    for layer in s.layers:
        s.read_rows(layer, 0, s.n_tokens)
    s.tokens(), s.positions(), s.sequence_ids()


@pytest.mark.parametrize("name", ["layers/5", "tokens", "positions", "sequence_ids"])
@pytest.mark.parametrize("damage", ["missing", "short", "long", "directory"])
def test_damaged_chunk_is_an_error_naming_array_chunk_and_fix(store_path, name, damage):
    f = chunk(store_path, name, 3)
    if damage == "missing":
        f.unlink()
    elif damage == "short":
        f.write_bytes(f.read_bytes()[:-5])
    elif damage == "long":
        f.write_bytes(f.read_bytes() + b"\0")
    else:
        f.unlink()
        f.mkdir()
    s = ActivationStore.open(store_path)
    msg = one_line_error(lambda: read_everything(s))
    assert f"damaged: chunk 3 of {name} " in msg
    assert f"ghosttrack verify {store_path}" in msg and "--resume --repair" in msg
    if name == "layers/5":
        one_line_error(lambda: s.read_chunk(5, 3))
        one_line_error(lambda: s.chunk_file(5, 3))
        np.testing.assert_array_equal(s.read_chunk(5, 2), synthetic_acts(5, 2 * CT, 3 * CT, D).astype(np.float16))
    else:
        one_line_error(lambda: s._row_array(name, 3 * CT, 3 * CT + 1))
    tokens, _, _ = synthetic_rows(0, N, CTX)
    np.testing.assert_array_equal(s.tokens(0, 3 * CT), tokens[:3 * CT])  # the healthy part still reads
    text = s.summary()
    assert "DAMAGED" in text and "complete" not in text and f"chunk 3 of {name}" in text


def test_summary_of_a_healthy_store_says_complete(store_path):
    assert f"{N:,} / {N:,} committed, complete" in ActivationStore.open(store_path).summary()


def test_zarr_path_refuses_a_missing_chunk(store_path, tmp_path):
    """Compressed layers go through zarr, which would return the fill value for a missing chunk."""
    gz = tmp_path / "gz"
    g = zarr.open_group(store_path, mode="r")
    out = zarr.open_group(zarr.storage.LocalStore(gz), mode="w", zarr_format=3,
                          attributes={**g.attrs, "format_version": 2})
    for name in fmt.array_names(LAYERS):
        a = g[name]
        out.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=0,
                         compressors=GzipCodec(level=1) if name.startswith("layers/") else None)[:] = a[:]
    upgrade_store(gz)  # binds the decoded chunks too
    s = ActivationStore.open(gz)
    assert s.chunk_file(0, 1) is None
    np.testing.assert_array_equal(s.read_chunk(0, 1), synthetic_acts(0, CT, 2 * CT, D).astype(np.float16))
    chunk(gz, "layers/0", 1).unlink()
    assert "chunk 1 of layers/0 is missing" in one_line_error(lambda: s.read_chunk(0, 1))
    chunk(gz, "layers/5", 2).write_bytes(b"not gzip")
    assert "chunk 2 of layers/5 cannot be decoded" in one_line_error(lambda: s.read_rows(5, 0, N))


def test_format_1_store_without_checksums_reads(tmp_path):
    """Stores written before checksums (format 1: plain bytes codec, no trailer) still read fast."""
    v1 = tmp_path / "v1"
    attrs = fmt.with_progress(fmt.identity_attrs(layers=LAYERS, d_model=D, chunk_tokens=CT, target_tokens=N,
                                                 attrs={**SYNTHETIC_ATTRS, "context_length": CTX}), N, True)
    attrs["format_version"] = 1
    g = zarr.open_group(zarr.storage.LocalStore(v1), mode="w", zarr_format=3, attributes=attrs)
    rows = dict(zip(fmt.ROW_ARRAYS, synthetic_rows(0, N, CTX)))
    for name in fmt.array_names(LAYERS):
        data = synthetic_acts(int(name[7:]), 0, N, D).astype(np.float16) if name.startswith("layers/") else rows[name]
        a = g.create_array(name, shape=data.shape, chunks=(CT,) + data.shape[1:], dtype=data.dtype, fill_value=0,
                           compressors=None, chunk_key_encoding=fmt.CHUNK_KEY_ENCODING)
        a[:] = data
    assert "ghosttrack verify --upgrade" in one_line_error(lambda: ActivationStore.open(v1))
    upgrade_store(v1)
    s = ActivationStore.open(v1)
    assert not fmt.has_checksum(g["layers/0"]) and chunk(v1, "layers/0", 0).stat().st_size == CT * D * 2
    x = s.read_chunk(5, 2)
    assert isinstance(x, np.memmap)
    np.testing.assert_array_equal(s.read_rows(5, 0, N), synthetic_acts(5, 0, N, D).astype(np.float16))
    np.testing.assert_array_equal(s.sequence_ids(), rows["sequence_ids"])
    assert "complete" in s.summary()
    chunk(v1, "tokens", 1).unlink()
    assert "chunk 1 of tokens is missing" in one_line_error(s.tokens)


def test_plain_zarr_checks_the_checksum(store_path):
    """Each chunk carries zarr's own crc32c: plain zarr refuses a flipped bit as well."""
    f = chunk(store_path, "layers/0", 2)
    raw = bytearray(f.read_bytes())
    raw[7] ^= 0x10
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_group(store_path, mode="r")["layers/0"][2 * CT:3 * CT]


# ------------------------------------------------------------------ damaged stores: one line, the fix


def test_creation_cut_short(tmp_path):
    """Killed while creating the arrays: no 'tokens' array yet. Readers refuse it; resume starts over."""
    path = write_synthetic_store(tmp_path / "s", layers=LAYERS, d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=CTX, target_tokens=N + CT, complete=False)
    zarr.open_group(path, mode="r+").update_attributes({"committed_tokens": 0})  # as right after creation
    shutil.rmtree(path / "tokens")
    assert "damaged" in one_line_error(lambda: ActivationStore.open(path))
    with StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N + CT, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="resume") as w:
        assert w.committed_tokens == 0
        w.close(complete=False)
    assert ActivationStore.open(path).n_tokens == 0
    zarr.open_group(path, mode="r+").update_attributes({"committed_tokens": CT})  # committed rows: refuse
    shutil.rmtree(path / "tokens")
    msg = one_line_error(lambda: StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N + CT,
                                                  chunk_tokens=CT, attrs={**SYNTHETIC_ATTRS, "context_length": CTX},
                                                  mode="resume"))
    assert "array tokens is missing" in msg and "--overwrite" in msg
    assert not list(path.glob(".lock*"))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"node_type": "array"}', ""])
def test_malformed_group_metadata(store_path, text):
    (store_path / "zarr.json").write_text(text)
    assert "zarr.json is unreadable" in one_line_error(lambda: ActivationStore.open(store_path))
    kw = dict(layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
              attrs={**SYNTHETIC_ATTRS, "context_length": CTX})
    for mode in ("create", "resume"):
        assert "--overwrite" in one_line_error(lambda: StoreWriter.open(store_path, mode=mode, **kw))
    with StoreWriter.open(store_path, mode="overwrite", **kw) as w:
        assert w.committed_tokens == 0


@pytest.mark.parametrize("record", [{}, {"committed_tokens": "many", "complete": True},
                                    {"complete": True}])
def test_missing_or_invalid_commit_record(store_path, record):
    g = zarr.open_group(store_path, mode="r+")
    attrs = {k: v for k, v in g.attrs.asdict().items() if k not in modes.COMMIT_KEYS} | record
    doc = json.loads((store_path / "zarr.json").read_text())
    doc["attributes"] = attrs
    (store_path / "zarr.json").write_text(json.dumps(doc))
    assert "commit record" in one_line_error(lambda: ActivationStore.open(store_path))
    msg = one_line_error(lambda: StoreWriter.open(store_path, layers=LAYERS, d_model=D, target_tokens=N,
                                                  chunk_tokens=CT, attrs={**SYNTHETIC_ATTRS, "context_length": CTX},
                                                  mode="resume"))
    assert "commit record" in msg and "--overwrite" in msg


# ------------------------------------------------------------------ --overwrite marks the store first


def test_overwrite_marks_the_store_uncommitted_before_deleting(store_path, monkeypatch):
    """A kill while --overwrite deletes the old chunks must not leave a 'complete' store with holes."""
    real_rmtree = shutil.rmtree
    seen = []

    def killed_midway(p, *a, **kw):
        seen.append(p)
        if str(p).endswith("layers"):
            real_rmtree(p / "5", *a, **kw)  # some of the old chunk files are gone ...
            raise KeyboardInterrupt  # ... when the process is killed
        return real_rmtree(p, *a, **kw)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        StoreWriter.open(store_path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                         attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="overwrite")
    monkeypatch.undo()
    assert any(str(p).endswith("layers") for p in seen)
    assert not list(store_path.glob(".lock*"))
    attrs = fmt.read_store_attrs(store_path)
    assert attrs["committed_tokens"] == 0 and attrs["complete"] is False
    assert "array layers/5 is missing" in one_line_error(lambda: ActivationStore.open(store_path))
    with StoreWriter.open(store_path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode="resume") as w:
        assert w.committed_tokens == 0  # nothing committed: resume starts over
        append_synthetic(w, 0, N, context_length=CTX)
        w.close(complete=True)
    s = ActivationStore.open(store_path)
    assert s.complete and s.n_tokens == N
    np.testing.assert_array_equal(s.read_rows(5, 0, N), synthetic_acts(5, 0, N, D).astype(np.float16))


def test_format_1_store_resumes_in_its_own_format(tmp_path, monkeypatch):
    """An interrupted store of the older format is finished without checksums (its arrays' codecs decide)."""
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 1)
    monkeypatch.setattr(fmt, "Crc32cCodec", lambda: ())  # format 1: no crc32c codec
    kw = dict(layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
              attrs={**SYNTHETIC_ATTRS, "context_length": CTX})
    with StoreWriter.open(tmp_path / "v1", **kw) as w:
        append_synthetic(w, 0, 2 * CT + 5, context_length=CTX)
        w.close(complete=False)
    monkeypatch.undo()
    with StoreWriter.open(tmp_path / "v1", mode="resume", **kw) as w:
        append_synthetic(w, w.next_row, N, context_length=CTX)
        w.close(complete=True)
    s = ActivationStore.open(tmp_path / "v1", trust=True)
    assert s.attrs["format_version"] == 1 and s.complete
    assert {chunk(tmp_path / "v1", "layers/0", c).stat().st_size for c in range(s.n_chunks)} == {CT * D * 2}
    np.testing.assert_array_equal(s.read_rows(0, 0, N), synthetic_acts(0, 0, N, D).astype(np.float16))
    assert verify_store(tmp_path / "v1").healthy
