"""The store on a real S3-compatible server (moto, on 127.0.0.1): same bytes as on disk, the commit
protocol under a crash at every object write, the conditional-create lock, self-checking reads,
verify, and the loader's batches."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import zarr

from ghosttrack.store import format as fmt
from ghosttrack.store.errors import StoreError
from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.location import ObjectPath, as_location
from ghosttrack.store.reader import ActivationStore, ChunkDamaged
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, append_synthetic, synthetic_acts, write_synthetic_store
from ghosttrack.store.verify import verify_store
from ghosttrack.store.writer import StoreWriter

from s3_server import Crash, crash_after_writes, local_files, object_bytes, s3_bucket, s3_server, s3_url  # noqa: F401

SHAPE = dict(layers=[0, 3], d_model=24, chunk_tokens=96)  # few objects: each request costs ~10-40 ms


def test_store_on_s3_has_the_bytes_of_the_local_store_and_reads_back(s3_url, tmp_path):
    write_synthetic_store(s3_url, n_tokens=500, **SHAPE)  # 6 chunks, the last one partial
    write_synthetic_store(tmp_path / "local", n_tokens=500, **SHAPE)
    assert object_bytes(s3_url) == local_files(tmp_path / "local")
    remote, local = ActivationStore.open(s3_url), ActivationStore.open(tmp_path / "local")
    assert remote.remote and not local.remote and remote.n_tokens == 500
    for layer in SHAPE["layers"]:
        np.testing.assert_array_equal(remote.read_rows(layer, 7, 499), local.read_rows(layer, 7, 499))
    np.testing.assert_array_equal(remote.tokens(), local.tokens())
    # Plain zarr reads it through its own fsspec store (and checks every chunk's CRC-32C).
    group = zarr.open_group(zarr.storage.FsspecStore.from_url(s3_url, read_only=True), mode="r")
    np.testing.assert_array_equal(group["layers/3"][:500], local.read_rows(3, 0, 500))
    assert "healthy" in verify_store(s3_url).summary()


def _committed_chunks_are_whole(url: str) -> int:
    """The reader's view after a crash: every committed row reads back as written (else raises)."""
    attrs = fmt.read_store_attrs(url)
    if attrs is None or attrs["committed_tokens"] == 0:
        return 0  # nothing committed (creation may be cut short): resume starts afresh
    store = ActivationStore.open(url)
    assert verify_store(url).healthy
    for layer in SHAPE["layers"]:
        rows = store.read_rows(layer, 0, store.n_tokens)
        np.testing.assert_array_equal(rows, synthetic_acts(layer, 0, store.n_tokens, SHAPE["d_model"]).astype(np.float16))
    return store.n_tokens


def test_a_crash_at_any_object_write_leaves_committed_rows_whole_and_resume_gives_the_same_store(tmp_path, monkeypatch):
    # On memory://: the object-store code path (one PUT per object, commit record last, lock
    # object) is the same for every fsspec backend, and here every one of the crash points is cheap.
    n = 250  # 3 chunks of 96 rows (the last one partial)
    write_synthetic_store(tmp_path / "reference", n_tokens=n, **SHAPE)
    reference = local_files(tmp_path / "reference")
    attrs = {**SYNTHETIC_ATTRS, "context_length": 16}
    seen_commits, crash_at = set(), 0
    while True:
        url = f"memory://gt-crash/{crash_at}"
        with monkeypatch.context() as mp:
            written = crash_after_writes(mp, crash_at)
            try:
                w = StoreWriter.open(url, target_tokens=n, attrs=attrs, **SHAPE)
                append_synthetic(w, 0, n, context_length=16, piece=70)
                w.close(complete=True)
                finished = True
            except Crash:
                finished = False  # killed: the writer is abandoned as it is, its lock object stays
        seen_commits.add(_committed_chunks_are_whole(url))
        mode = "resume" if fmt.read_store_attrs(url) is not None else "overwrite"
        with StoreWriter.open(url, target_tokens=n, attrs=attrs, mode=mode, **SHAPE) as w:
            if not w.complete:  # a crash after the final commit (e.g. as the lock is released)
                append_synthetic(w, w.next_row, n, context_length=16, piece=70)
                w.close(complete=True)
        assert object_bytes(url) == reference, f"crash after {crash_at} object writes: {written[-3:]}"
        as_location(url).remove_tree()
        if finished:
            break
        crash_at += 1
    assert crash_at > 25 and seen_commits == {0, 96, 192, 250}, (crash_at, seen_commits)


def test_object_lock_refuses_a_second_writer_and_recovers_from_a_dead_one(s3_url):
    attrs = {**SYNTHETIC_ATTRS, "context_length": 16}
    open_writer = lambda **kw: StoreWriter.open(s3_url, target_tokens=500, attrs=attrs, **SHAPE, **kw)  # noqa: E731
    first = open_writer()
    lock = as_location(s3_url) / fmt.LOCK_PREFIX
    holder = json.loads(lock.read_bytes())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    # Another live process of this host holds it: pid 1 stands in (alive in every container).
    lock.write_bytes(json.dumps({**holder, "pid": 1}).encode())
    with pytest.raises(StoreError, match="being written by pid 1"):
        open_writer(mode="resume")
    # A writer on another host: refused, --break-lock named; break_lock takes it over.
    lock.write_bytes(json.dumps({**holder, "host": "elsewhere"}).encode())
    with pytest.raises(StoreError, match="another host.*--break-lock"):
        open_writer(mode="resume")
    first._lock._record = None  # the first writer is gone without releasing (as if killed)
    second = open_writer(mode="resume", break_lock=True)
    assert json.loads(lock.read_bytes())["host"] == socket.gethostname()
    second.close(complete=False)
    assert not lock.is_file(), "release deletes the lock object"
    # A killed writer of this host (its pid is not alive): stale, taken over without any flag.
    lock.write_bytes(json.dumps({**holder, "pid": 2**22 + 12345}).encode())
    open_writer(mode="resume").close(complete=False)


def test_two_writers_racing_for_a_fresh_store_one_wins(s3_url):
    lock = as_location(s3_url) / fmt.LOCK_PREFIX
    assert lock.create_exclusive(b"{}") and not lock.create_exclusive(b"{}")


def test_damaged_objects_are_refused_on_read_and_listed_by_verify(s3_url):
    write_synthetic_store(s3_url, n_tokens=800, **SHAPE)
    store = ActivationStore.open(s3_url)
    root = as_location(s3_url)
    flipped = fmt.chunk_file(root, store._arrays["layers/3"], 2)
    raw = bytearray(flipped.read_bytes())
    raw[100] ^= 0x40
    flipped.write_bytes(bytes(raw))
    fmt.chunk_file(root, store._arrays["tokens"], 5).unlink()
    short = fmt.chunk_file(root, store._arrays["layers/0"], 7)  # the last chunk (800 = 8 x 96 + 32)
    short.write_bytes(short.read_bytes()[:-10])
    with pytest.raises(ChunkDamaged, match="chunk 2 of layers/3 fails its CRC-32C"):
        ActivationStore.open(s3_url).read_chunk(3, 2)
    with pytest.raises(ChunkDamaged, match="chunk 5 of tokens is missing"):
        ActivationStore.open(s3_url).tokens(490, 530)
    with pytest.raises(ChunkDamaged, match="chunk 7 of layers/0 holds"):
        ActivationStore.open(s3_url).read_chunk(0, 7)
    report = verify_store(s3_url)
    assert [(d.array, d.chunk) for d in report.damaged] == [("layers/3", 2), ("tokens", 5), ("layers/0", 7)]
    assert "DAMAGED: 2 chunk file(s)" in ActivationStore.open(s3_url).summary()


def test_loader_batches_from_s3_equal_those_from_disk(s3_url, tmp_path):
    write_synthetic_store(s3_url, n_tokens=576, **SHAPE)
    write_synthetic_store(tmp_path / "local", n_tokens=576, **SHAPE)
    cfg = LoaderConfig(batch_size=16, buffer_batches=8, val_fraction=0.2, seed=3, max_norm_ratio=None,
                       prefetch_chunks=3, device_resident="no")
    for split in ("train", "val"):
        remote = ActivationLoader(ActivationStore.open(s3_url), 3, cfg, split=split, progress=False)
        local = ActivationLoader(ActivationStore.open(tmp_path / "local"), 3, cfg, split=split, progress=False)
        got, want = list(remote), list(local)
        assert len(got) == len(want) > 2
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_memory_urls_hold_a_store_too_and_overwrite_leaves_no_stale_object(tmp_path):
    url = "memory://gt-tests/mem-store"
    write_synthetic_store(url, n_tokens=400, **{**SHAPE, "layers": [0, 1, 3]})
    store = ActivationStore.open(url)
    assert isinstance(store.path, ObjectPath) and store.n_tokens == 400 and verify_store(store.path).healthy
    attrs = {**SYNTHETIC_ATTRS, "context_length": 16}
    with StoreWriter.open(url, target_tokens=200, attrs=attrs, mode="overwrite", **SHAPE) as w:
        append_synthetic(w, 0, 200, context_length=16)
        w.close(complete=True)
    write_synthetic_store(tmp_path / "fresh", n_tokens=200, **SHAPE)
    assert object_bytes(url) == local_files(tmp_path / "fresh")  # no chunk of layer 1 or past row 200 left
    as_location(url).remove_tree()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_ranks_writing_one_store_show_their_merged_progress_and_finish_as_one_process(where, tmp_path, request):
    """Two ranks (as on two hosts) append their own chunks; a reader sees the contiguous prefix of
    the chunks both have committed while they run, and the finished store has the bytes that one
    process writes."""
    url = request.getfixturevalue("s3_url") if where == "s3" else str(tmp_path / "multi")
    n, ct = 500, SHAPE["chunk_tokens"]  # chunks 0, 2, 4 for rank 0; 1, 3, 5 (partial) for rank 1
    attrs = {**SYNTHETIC_ATTRS, "context_length": 16}
    ranks = [StoreWriter.open(url, target_tokens=n, attrs=attrs, rank=r, world_size=2, **SHAPE) for r in (0, 1)]
    seen = []
    for c in (1, 0, 2, 3, 5, 4):  # the ranks run at their own pace: rank 1 is ahead at first
        append_synthetic(ranks[c % 2], c * ct, min(n, (c + 1) * ct), context_length=16)
        store = ActivationStore.open(url)
        assert not store.complete
        seen.append(store.n_tokens)
        np.testing.assert_array_equal(store.read_rows(3, 0, store.n_tokens),
                                      synthetic_acts(3, 0, store.n_tokens, SHAPE["d_model"]).astype(np.float16))
    # Chunk 1 waits for chunk 0; rank 1's last chunk (partial) is committed when it closes complete.
    assert seen == [0, 2 * ct, 3 * ct, 4 * ct, 4 * ct, 5 * ct], seen
    ranks[1].close(complete=True)
    assert ActivationStore.open(url).n_tokens == n
    for w in ranks:
        w.close(complete=True)
    assert ActivationStore.open(url).n_tokens == n
    StoreWriter.finalize(url, 2)
    write_synthetic_store(tmp_path / "single", n_tokens=n, **SHAPE)
    got = object_bytes(url) if where == "s3" else local_files(tmp_path / "multi")
    assert got == local_files(tmp_path / "single")
