"""StoreWriter: modes, lock, commit protocol, crash safety, disk full, the fast chunk write."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from ghosttrack.store import files
from ghosttrack.store import format as fmt
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import (SYNTHETIC_ATTRS, append_synthetic, synthetic_acts,
                                        synthetic_rows, write_synthetic_store)
from ghosttrack.store.writer import StoreWriter

LAYERS, D, CT, CTX = [1, 4], 24, 64, 16
N = 10 * CT + 37  # ten full chunks and a partial one
TARGET = N + CT  # the run ends before its target, so completing cuts the arrays


def open_writer(path, mode="create", **kw):
    args = dict(layers=LAYERS, d_model=D, target_tokens=TARGET, chunk_tokens=CT,
                attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode=mode)
    args.update(kw)
    return StoreWriter.open(path, **args)


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store but its lock files, by relative path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*"))
            if p.is_file() and not p.name.startswith(fmt.LOCK_PREFIX)}


@pytest.fixture
def reference(tmp_path) -> dict[str, bytes]:
    """The files of an uninterrupted single-process run."""
    return store_files(write_synthetic_store(tmp_path / "ref", layers=LAYERS, d_model=D, n_tokens=N,
                                             target_tokens=TARGET, chunk_tokens=CT, context_length=CTX,
                                             piece=50))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_store_contents_and_attrs(tmp_path):
    path = write_synthetic_store(tmp_path / "s", layers=LAYERS, d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=CTX)
    g = zarr.open_group(path, mode="r")
    a = dict(g.attrs)
    assert a["format_version"] == 3 and a["layers"] == LAYERS and a["d_model"] == D
    assert a["committed_tokens"] == N and a["complete"] is True and a["dtype"] == "float16"
    assert a["flagged_rows"] == "positions == 0" and a["corpus"] == {"kind": "synthetic"}
    for layer in LAYERS:
        arr = g[fmt.layer_array(layer)]
        assert arr.shape == (N, D) and arr.chunks == (CT, D) and arr.dtype == np.float16
        assert arr.compressors == (Crc32cCodec(),) and fmt.is_plain_chunked(arr)
        np.testing.assert_array_equal(arr[:], synthetic_acts(layer, 0, N, D).astype(np.float16))
    tokens, positions, seq = synthetic_rows(0, N, CTX)
    np.testing.assert_array_equal(g["tokens"][:], tokens)
    np.testing.assert_array_equal(g["positions"][:], positions)
    np.testing.assert_array_equal(g["sequence_ids"][:], seq)
    assert g["sequence_ids"].dtype == np.int64 and g["tokens"].dtype == np.int32
    assert not list(path.glob(".lock*"))  # released on close


def test_fast_chunk_write_matches_zarr_bytes(tmp_path, reference):
    """The writer writes chunk files itself: they must be the bytes zarr would have written."""
    path = tmp_path / "plain"
    identity = fmt.identity_attrs(layers=LAYERS, d_model=D, chunk_tokens=CT, target_tokens=TARGET,
                                  attrs={**SYNTHETIC_ATTRS, "context_length": CTX})
    g = fmt.create_group(path, fmt.with_progress(identity, 0, False), TARGET)
    tokens, positions, seq = synthetic_rows(0, N, CTX)
    for layer in LAYERS:
        g[fmt.layer_array(layer)][:N] = synthetic_acts(layer, 0, N, D).astype(np.float16)
    g["tokens"][:N], g["positions"][:N], g["sequence_ids"][:N] = tokens, positions, seq
    for name in fmt.array_names(LAYERS):
        g[name].resize((N,) + g[name].shape[1:])
    g.update_attributes({"committed_tokens": N, "complete": True})
    # zarr writes no records of bound checksums (binding.py; the writer creates that array): every
    # other file is the same bytes
    assert store_files(path) == {k: v for k, v in reference.items() if not k.startswith("checksums/")}


def test_commits_whole_chunks_and_close_false_drops_buffer(tmp_path):
    path = tmp_path / "s"
    w = open_writer(path)
    append_synthetic(w, 0, 3 * CT + 10, context_length=CTX, piece=17)
    assert w.committed_tokens == 3 * CT and w.next_row == 3 * CT + 10
    assert ActivationStore.open(path).n_tokens == 3 * CT  # visible to readers right away
    w.close(complete=False)
    s = ActivationStore.open(path)
    assert s.n_tokens == 3 * CT and not s.complete
    assert not fmt.chunk_file(path, zarr.open_group(path)["tokens"], 3).exists()


def test_append_checks(tmp_path):
    with open_writer(tmp_path / "s") as w:
        with pytest.raises(ValueError, match="exactly the layers"):
            w.append({1: np.zeros((2, D))}, [0, 1], [0, 1], [0, 0])
        with pytest.raises(ValueError, match="shape"):
            w.append({1: np.zeros((2, D)), 4: np.zeros((2, D + 1))}, [0, 1], [0, 1], [0, 0])
        append_synthetic(w, 0, TARGET, context_length=CTX)
        with pytest.raises(ValueError, match="exceed target_tokens"):
            append_synthetic(w, TARGET, TARGET + 1, context_length=CTX)
        w.close(complete=True)
    with open_writer(tmp_path / "s", mode="resume") as w:
        assert w.complete and w.committed_tokens == TARGET
        with pytest.raises(StoreError, match="already complete"):
            append_synthetic(w, 0, 1, context_length=CTX)


def test_modes(tmp_path):
    path = write_synthetic_store(tmp_path / "s", layers=LAYERS, d_model=D, n_tokens=N, chunk_tokens=CT,
                                 context_length=CTX)
    with pytest.raises(StoreError, match=r"store already exists at .*model synthetic.*--resume.*--overwrite"):
        open_writer(path)
    with pytest.raises(StoreError) as e:
        open_writer(path, mode="resume", d_model=D + 1, chunk_tokens=CT * 2)
    assert "chunk_tokens: stored 64 vs requested 128" in str(e.value)
    assert "d_model: stored 24 vs requested 25" in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(StoreError, match="model: stored 'synthetic' vs requested 'other'"):
        open_writer(path, mode="resume", attrs={**SYNTHETIC_ATTRS, "context_length": CTX, "model": "other"})
    with open_writer(path, mode="overwrite", target_tokens=CT) as w:  # replaces the old store
        assert w.committed_tokens == 0
        append_synthetic(w, 0, CT, context_length=CTX)
        w.close(complete=True)
    assert ActivationStore.open(path).n_tokens == CT
    with open_writer(tmp_path / "new", mode="resume") as w:  # resume of nothing creates
        assert w.committed_tokens == 0


def test_never_touches_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for mode in ("create", "overwrite", "resume"):
        with pytest.raises(StoreError, match="not a GhostTrack store"):
            open_writer(foreign, mode=mode)
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_lock_refuses_live_writer_and_takes_over_stale(tmp_path):
    path = tmp_path / "s"
    w = open_writer(path)
    holder = json.loads((path / ".lock").read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()} on .*; wait for it or kill it"):
        open_writer(path, mode="resume")
    w.close(complete=False)
    assert not (path / ".lock").exists()
    (path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": holder["host"]}))
    with open_writer(path, mode="resume"):  # stale: taken over
        assert json.loads((path / ".lock").read_text())["pid"] == os.getpid()
    assert not (path / ".lock").exists()
    (path / ".lock").write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(StoreError, match="pid 1 on another-host"):
        open_writer(path, mode="resume")


def test_abandoned_writer_resumes_to_identical_bytes(tmp_path, reference):
    path = tmp_path / "s"
    w = open_writer(path)
    append_synthetic(w, 0, 6 * CT + 5, context_length=CTX, piece=29)
    # What a kill in the middle of chunk 6 leaves: one array's chunk file past the commit,
    # another's temporary file, and the lock of a process that no longer exists.
    fmt.chunk_file(path, w._arrays["layers/1"], 6).parent.mkdir(parents=True, exist_ok=True)
    fmt.chunk_file(path, w._arrays["layers/1"], 6).write_bytes(b"\x01" * (CT * D * 2))
    (fmt.chunk_file(path, w._arrays["tokens"], 6).parent / "6.partial").write_bytes(b"torn")
    (path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename}))
    del w
    assert ActivationStore.open(path).n_tokens == 6 * CT
    with open_writer(path, mode="resume") as w:
        assert w.committed_tokens == 6 * CT and w.next_row == 6 * CT
        append_synthetic(w, w.next_row, N, context_length=CTX, piece=41)
        w.close(complete=True)
    assert store_files(path) == reference


def test_killed_while_completing_resumes_to_identical_bytes(tmp_path, reference, monkeypatch):
    """A kill between cutting the arrays and the final commit: resume undoes the cut."""
    path = tmp_path / "s"
    w = open_writer(path)
    append_synthetic(w, 0, N, context_length=CTX)

    def killed(self, committed_tokens, complete):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        w.close(complete=True)
    monkeypatch.undo()
    assert zarr.open_group(path)["tokens"].shape == (N,) and ActivationStore.open(path).n_tokens == 10 * CT
    with open_writer(path, mode="resume") as w:
        append_synthetic(w, w.next_row, N, context_length=CTX)
        w.close(complete=True)
    assert store_files(path) == reference


_KILLED_WRITER = """
import sys, time
from ghosttrack.store import files
from ghosttrack.store.writer import StoreWriter
from ghosttrack.store.synthetic import append_synthetic, SYNTHETIC_ATTRS
stall_at = sys.argv[2]
real_commit = files.AtomicFile.commit
def commit(self):
    if str(self.path).endswith(stall_at):  # earlier arrays of this chunk are in place, later ones
        print("stalled", flush=True)       # still in temporary files: be killed right here
        time.sleep(60)
    real_commit(self)
if stall_at:
    files.AtomicFile.commit = commit
w = StoreWriter.open(sys.argv[1], layers=%(layers)r, d_model=%(d)d, target_tokens=%(target)d,
                     chunk_tokens=%(ct)d, attrs={**SYNTHETIC_ATTRS, "context_length": %(ctx)d})
for a in range(0, %(n)d, 100):
    append_synthetic(w, a, min(a + 100, %(n)d), context_length=%(ctx)d)
    print("committed", w.committed_tokens, flush=True)
    if not stall_at and w.committed_tokens >= 3 * %(ct)d:
        time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stall_at", ["", "layers/4/c/5/0"], ids=["between-chunks", "mid-chunk"])
def test_sigkill_mid_write_then_resume(tmp_path, reference, stall_at):
    """A real process killed with SIGKILL: mid-chunk (torn temporary file) or between chunks."""
    path = tmp_path / "s"
    script = _KILLED_WRITER % dict(layers=LAYERS, d=D, n=N, target=TARGET, ct=CT, ctx=CTX)
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(stall_at)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("stalled") or (not stall_at and line.split()[-1] == str(3 * CT)):
                break
        else:
            pytest.fail(f"writer exited early with {proc.wait()}")
    finally:
        proc.kill()
        proc.wait()
    assert list(path.rglob("*.partial")) or not stall_at
    assert (path / "layers/1/c/5/0").exists() or not stall_at  # a chunk file past the commit
    s = ActivationStore.open(path)
    assert s.n_tokens % CT == 0 and s.n_tokens >= 3 * CT
    for c in range(s.n_chunks):  # everything committed is intact
        lo, hi = s.chunk_bounds(c)
        np.testing.assert_array_equal(s.read_chunk(4, c), synthetic_acts(4, lo, hi, D).astype(np.float16))
    with open_writer(path, mode="resume") as w:  # the dead holder's lock is taken over
        append_synthetic(w, w.next_row, N, context_length=CTX, piece=77)
        w.close(complete=True)
    assert store_files(path) == reference


def test_disk_full_keeps_committed_data(tmp_path, reference, monkeypatch):
    path = tmp_path / "s"
    real = files.AtomicFile.write

    def full_disk(self, arr):
        if str(self.path).endswith("layers/4/c/4/0"):  # the second array of chunk 4
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, arr)

    monkeypatch.setattr(files.AtomicFile, "write", full_disk)
    w = open_writer(path)
    with pytest.raises(StoreError) as e:
        append_synthetic(w, 0, N, context_length=CTX)
    assert str(e.value) == (f"disk full while writing chunk 4 of {path}; the store is intact at {4 * CT} "
                            "committed tokens; free space and rerun with --resume")
    with pytest.raises(StoreError, match="disk full"):  # the writer stays failed
        append_synthetic(w, 4 * CT, 4 * CT + 1, context_length=CTX)
    assert not list(path.rglob("*.partial"))  # the failed chunk's temporary files are gone
    w.close(complete=False)
    monkeypatch.undo()
    s = ActivationStore.open(path)
    assert s.n_tokens == 4 * CT
    np.testing.assert_array_equal(s.read_rows(1, 0, 4 * CT), synthetic_acts(1, 0, 4 * CT, D).astype(np.float16))
    with open_writer(path, mode="resume") as w:
        append_synthetic(w, w.next_row, N, context_length=CTX)
        w.close(complete=True)
    assert store_files(path) == reference


def test_zarr_local_store_writes_atomically(tmp_path, monkeypatch):
    """The commit record relies on zarr's LocalStore writing a temporary file and renaming it."""
    g = zarr.open_group(zarr.storage.LocalStore(tmp_path / "g"), mode="w", zarr_format=3,
                        attributes={"committed_tokens": 1})
    before = (tmp_path / "g" / "zarr.json").read_bytes()

    def no_rename(self, target):
        raise OSError(errno.EIO, "simulated crash before the rename")

    monkeypatch.setattr(Path, "replace", no_rename)
    with pytest.raises(OSError, match="simulated crash"):
        g.update_attributes({"committed_tokens": 2})
    assert (tmp_path / "g" / "zarr.json").read_bytes() == before
    assert not list((tmp_path / "g").glob("*.partial"))


def _rank_rows(rank: int, world: int, n: int) -> list[tuple[int, int]]:
    """The [start, stop) row ranges of the chunks rank owns, in order."""
    return [(c * CT, min(n, (c + 1) * CT)) for c in range(rank, -(-n // CT), world)]


def test_two_ranks_finalize_to_single_process_bytes(tmp_path, reference):
    path = tmp_path / "s"
    ranks = [open_writer(path, rank=0, world_size=2)]
    ranks.append(open_writer(path, mode="resume", rank=1, world_size=2))
    assert [w.capacity for w in ranks] == [6 * CT, 5 * CT + 37]  # chunks 0, 2, .. 10 and 1, 3, .. 11
    for r, w in enumerate(ranks):
        for lo, hi in _rank_rows(r, 2, N):
            assert w.next_row == lo
            append_synthetic(w, lo, hi, context_length=CTX, piece=23)
    for w in ranks:
        w.close(complete=True)
    assert StoreWriter.finalize(path, 2) == N
    assert store_files(path) == reference


def test_two_ranks_interrupted_then_resumed(tmp_path, reference):
    path = tmp_path / "s"
    w0 = open_writer(path, rank=0, world_size=2)
    w1 = open_writer(path, rank=1, world_size=2)
    for lo, hi in _rank_rows(0, 2, N)[:4]:  # rank 0: chunks 0, 2, 4, 6
        append_synthetic(w0, lo, hi, context_length=CTX)
    for lo, hi in _rank_rows(1, 2, N)[:2]:  # rank 1: chunks 1, 3, then part of 5
        append_synthetic(w1, lo, hi, context_length=CTX)
    append_synthetic(w1, 5 * CT, 5 * CT + 9, context_length=CTX)
    w0.close(complete=False)
    w1.close(complete=False)
    assert StoreWriter.finalize(path, 2) == 5 * CT  # contiguous prefix: chunks 0..4
    assert ActivationStore.open(path).n_tokens == 5 * CT
    with pytest.raises(StoreError, match="2 process"):
        open_writer(path, mode="resume")
    ranks = [open_writer(path, mode="resume", rank=r, world_size=2) for r in range(2)]
    assert [w.next_row for w in ranks] == [8 * CT, 5 * CT]
    for r, w in enumerate(ranks):
        for lo, hi in _rank_rows(r, 2, N):
            if lo >= w.next_row:
                append_synthetic(w, lo, hi, context_length=CTX)
        w.close(complete=True)
    StoreWriter.finalize(path, 2)
    assert store_files(path) == reference


def test_streamed_checksum_equals_the_checksum_of_the_whole_file(tmp_path):
    """AtomicFile checksums each written block as it goes: the trailer must equal the CRC-32C of all
    the bytes at once (the plain reference), for pieces smaller and larger than its block."""
    rng = np.random.default_rng(7)
    pieces = [b"abc", rng.standard_normal(3 * 2**19 + 7).astype(np.float16), rng.integers(0, 9, 13),
              rng.integers(0, 255, 2**21 + 1).astype(np.uint8), rng.standard_normal((5, 3)).astype(np.float32)]
    f = files.AtomicFile(tmp_path / "x", checksum=True)
    for p in pieces:
        f.write(p)
    f.commit()
    raw = (tmp_path / "x").read_bytes()
    data = b"".join(p if isinstance(p, bytes) else p.tobytes() for p in pieces)
    assert raw[:-4] == data
    assert raw[-4:] == np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()
