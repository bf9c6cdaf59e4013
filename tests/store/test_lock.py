"""Store locks: an OS lock that dies with its holder; stale records recover; other hosts need --break-lock."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from ghosttrack.store import format as fmt
from ghosttrack.store import lock as lock_mod
from ghosttrack.store import writer as writer_mod
from ghosttrack.store.errors import StoreError
from ghosttrack.store.lock import StoreLock, break_lock, live_holder, read_holder
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, append_synthetic
from ghosttrack.store.writer import StoreWriter

HOLDER = """
import sys
from ghosttrack.store.lock import StoreLock
lock = StoreLock.acquire(sys.argv[1], sys.argv[2])
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin (or kills us)
"""


def open_writer(path, mode="create", **kw):
    return StoreWriter.open(path, layers=[0], d_model=4, target_tokens=64, chunk_tokens=16,
                            attrs=SYNTHETIC_ATTRS, mode=mode, **kw)


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of tmp_path/s (waits for its 'locked' line: no race)."""
    store = tmp_path / "s"
    store.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store / ".lock"), str(store)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield store, proc
    proc.kill()
    proc.wait()


def test_live_holder_is_refused_and_named(holder):
    store, proc = holder
    with pytest.raises(StoreError) as e:
        StoreLock.acquire(store / ".lock", store)
    msg = str(e.value)
    assert f"being written by pid {proc.pid} on {socket.gethostname()} since " in msg and "wait for it" in msg
    with pytest.raises(StoreError, match=f"pid {proc.pid}"):  # --break-lock does not break a live lock
        StoreLock.acquire(store / ".lock", store, break_lock=True)


def test_killed_holder_is_released_by_the_kernel(holder):
    store, proc = holder
    proc.kill()  # SIGKILL: no cleanup ran, the record still names the dead process
    proc.wait()
    assert read_holder(store / ".lock")["pid"] == proc.pid
    with StoreLock.acquire(store / ".lock", store) as lock:
        assert lock.held and read_holder(store / ".lock")["pid"] == os.getpid()
    assert not (store / ".lock").exists()


@pytest.mark.parametrize("record", ["", "{torn", json.dumps({"pid": "own", "host": "here"})],
                         ids=["empty", "unreadable", "own-pid"])
def test_stale_records_on_this_host_are_taken_over(tmp_path, record):
    """Nobody holds the OS lock: an empty file, a torn record, or a record with our own pid (pid
    reuse, PID 1 in a restarted container) is stale."""
    path = tmp_path / "s" / ".lock"
    path.parent.mkdir()
    if "own" in record:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    path.write_text(record)
    with open_writer(tmp_path / "s") as w:
        assert read_holder(path)["pid"] == os.getpid()
        w.close(complete=False)
    assert not path.exists()


def test_lock_from_another_host_needs_break_lock(tmp_path):
    store = tmp_path / "s"
    store.mkdir()
    (store / ".lock").write_text(json.dumps({"pid": 1, "host": "node-17", "started": "2026-11-30 12:00:00 UTC"}))
    with pytest.raises(StoreError) as e:
        open_writer(store)
    assert str(e.value) == (f"store {store} is locked by pid 1 on node-17 since 2026-11-30 12:00:00 UTC, another "
                            "host; if no process there is writing it, rerun with --break-lock")
    assert read_holder(store / ".lock")["host"] == "node-17"  # refused: left as it was
    with open_writer(store, break_lock=True) as w:
        assert read_holder(store / ".lock")["host"] == socket.gethostname()
        w.close(complete=False)
    (store / ".lock").write_text(json.dumps({"pid": 1, "host": "node-17"}))
    assert break_lock(store)["host"] == "node-17"
    assert not (store / ".lock").exists()
    with open_writer(store, mode="resume") as w:
        w.close(complete=False)


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    w = open_writer(tmp_path / "s")
    with pytest.raises(StoreError, match=f"being written by pid {os.getpid()}"):
        open_writer(tmp_path / "s", mode="resume")
    w.close(complete=False)
    with open_writer(tmp_path / "s", mode="resume"):
        pass


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt(),
                                     ValueError("bug")], ids=["disk-full", "interrupt", "bug"])
def test_lock_released_when_creation_fails(tmp_path, monkeypatch, failure):
    def fail(*a, **kw):
        raise failure

    monkeypatch.setattr(fmt, "create_group", fail)
    with pytest.raises(type(failure) if not isinstance(failure, OSError) else StoreError) as e:
        open_writer(tmp_path / "s")
    if isinstance(failure, OSError):
        assert "disk full" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert not list((tmp_path / "s").glob(".lock*"))
    with StoreLock.acquire(tmp_path / "s" / ".lock", tmp_path / "s"):  # the OS lock is free too
        pass


def test_lock_released_when_resume_is_refused(tmp_path):
    w = open_writer(tmp_path / "s", world_size=2)  # rank 0 of a two-process run commits chunk 0
    append_synthetic(w, 0, 16, context_length=16)
    w.close(complete=False)
    with pytest.raises(StoreError, match="2 process"):
        open_writer(tmp_path / "s", mode="resume")  # refused after the lock was taken
    with StoreLock.acquire(tmp_path / "s" / ".lock", tmp_path / "s"):
        pass


def test_lock_released_when_close_fails(tmp_path, monkeypatch):
    w = open_writer(tmp_path / "s")

    def killed(self, committed_tokens, complete):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        w.close(complete=True)
    with StoreLock.acquire(tmp_path / "s" / ".lock", tmp_path / "s"):
        pass


def test_lock_file_replaced_under_a_waiter_is_retried(tmp_path, monkeypatch):
    """A process that opened the old lock file just as its holder removed it must not believe it
    holds a lock on a file nobody else can see: it notices and locks the new file."""
    store = tmp_path / "s"
    store.mkdir()
    path = store / ".lock"
    real_open = os.open
    calls = []

    def open_then_lose_the_race(p, flags, mode=0o777):
        fd = real_open(p, flags, mode)
        calls.append(p)
        if len(calls) == 1:  # the previous holder releases: removes the file we just opened
            os.unlink(p)
        return fd

    monkeypatch.setattr(lock_mod.os, "open", open_then_lose_the_race)
    lock = StoreLock.acquire(path, store)
    monkeypatch.undo()
    assert len(calls) == 2 and path.exists() and lock_mod._same_file(lock._fd, path)
    lock.release()


def test_store_state_is_checked_again_under_the_lock(tmp_path, monkeypatch):
    """Two `create` runs started together: the one that gets the lock second must see the store the
    first one made, not the empty folder it saw before locking."""
    real_prepare = writer_mod.prepare
    calls = []

    def prepare_then_race(path, identity, mode):
        out = real_prepare(path, identity, mode)
        calls.append(mode)
        if len(calls) == 1:  # between our first look and our lock, another run creates the store
            with open_writer(path) as other:
                other.close(complete=True)
        return out

    monkeypatch.setattr(writer_mod, "prepare", prepare_then_race)
    with pytest.raises(StoreError, match="store already exists"):
        open_writer(tmp_path / "s")
    assert not list((tmp_path / "s").glob(".lock*"))


def test_live_holder_sees_the_os_lock_not_the_record(holder, tmp_path):
    """Readers ask whether a live process holds the lock: a record alone (a killed writer, a pid
    reused by an unrelated live process such as our own) does not count."""
    store, proc = holder
    assert live_holder(store / ".lock")["pid"] == proc.pid
    with pytest.raises(StoreError, match="being written"):  # looking did not leave it locked either way
        StoreLock.acquire(store / ".lock", store)
    proc.kill()
    proc.wait()
    assert live_holder(store / ".lock") is None
    (store / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # alive, not holding
    assert live_holder(store / ".lock") is None
    assert live_holder(tmp_path / "nothing" / ".lock") is None
    with StoreLock.acquire(store / ".lock", store):
        assert live_holder(store / ".lock")["pid"] == os.getpid()  # another open file: sees our lock
