"""A full disk stops the writer with a one-line StoreError (exit 2) and leaves the store at its last commit:
on a real small filesystem (a tmpfs, when the tests run as root), and faked where they do not."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ghosttrack.store import files
from ghosttrack.store import writer as writer_mod
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, append_synthetic, synthetic_acts, write_synthetic_store
from ghosttrack.store.verify import verify_store
from ghosttrack.store.writer import StoreWriter

LAYERS, D, CT, CTX = [0, 1], 256, 256, 16
N = 20 * CT + 100  # ~5.3 MB of chunk files: more than the 2 MiB filesystem holds
FULL = re.compile(r"disk full while (writing|committing) chunk \d+ of \S+; the store is intact at (\d+) "
                  r"committed tokens; free space and rerun with --resume")


def open_writer(path, mode="create"):
    return StoreWriter.open(path, layers=LAYERS, d_model=D, target_tokens=N, chunk_tokens=CT,
                            attrs={**SYNTHETIC_ATTRS, "context_length": CTX}, mode=mode)


def store_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def record_write_errors(monkeypatch) -> list[OSError]:
    """The OSErrors the chunk writes themselves raise (none when the free-space check stops first)."""
    seen = []
    real_write = files.AtomicFile.write

    def write(self, data):
        try:
            real_write(self, data)
        except OSError as e:
            seen.append(e)
            raise

    monkeypatch.setattr(files.AtomicFile, "write", write)
    return seen


def fill_until_full(path) -> int:
    """Append until the writer stops; returns the committed tokens its message names."""
    w = open_writer(path)
    with pytest.raises(StoreError) as e:
        append_synthetic(w, 0, N, context_length=CTX, piece=300)
    w.close(complete=False)
    msg = str(e.value)
    m = FULL.fullmatch(msg)
    assert m, msg
    assert e.value.exit_code == 2
    return int(m.group(2))


def check_at_last_commit(path, committed: int) -> None:
    s = ActivationStore.open(path)
    assert s.n_tokens == committed and committed % CT == 0 and not s.complete
    np.testing.assert_array_equal(s.read_rows(1, 0, committed), synthetic_acts(1, 0, committed, D).astype(np.float16))
    assert verify_store(path).healthy
    assert not list(Path(path).rglob("*.partial"))


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (needs root: mount(2) needs CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs; the faked tests cover the logic")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _grow(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)


def test_real_full_disk_is_seen_before_the_chunk(small_fs, tmp_path, monkeypatch):
    """The free space is checked before each chunk: the writer stops cleanly, then resumes to identical bytes."""
    reference = store_files(write_synthetic_store(tmp_path / "ref", layers=LAYERS, d_model=D, n_tokens=N,
                                                  chunk_tokens=CT, context_length=CTX, piece=300))
    path = small_fs / "s"
    seen = record_write_errors(monkeypatch)
    committed = fill_until_full(path)
    assert committed >= CT and seen == []
    check_at_last_commit(path, committed)
    _grow(small_fs)  # "free space and rerun with --resume"
    with open_writer(path, mode="resume") as w:
        append_synthetic(w, w.next_row, N, context_length=CTX, piece=300)
        w.close(complete=True)
    assert store_files(path) == reference


def test_real_write_error_without_errno(small_fs, monkeypatch):
    """Without the free-space check the write itself fails: ndarray.tofile raises an OSError without an
    errno ("... requested and ... written") on a full disk, and it is still reported as a full disk."""
    monkeypatch.setattr(StoreWriter, "_check_free_space", lambda self, where: None)
    seen = record_write_errors(monkeypatch)
    path = small_fs / "s"
    committed = fill_until_full(path)
    monkeypatch.undo()
    assert committed >= CT
    assert seen and seen[-1].errno is None  # what the real filesystem raised
    check_at_last_commit(path, committed)


def test_free_space_check_faked(tmp_path, monkeypatch):
    """The same stop where no small filesystem can be mounted: the space runs out after chunk 3."""
    real_free = writer_mod.free_bytes

    def free(folder):
        written = len(list(Path(tmp_path / "s", "tokens", "c").glob("*")))
        return 0 if written >= 3 else real_free(folder)

    monkeypatch.setattr(writer_mod, "free_bytes", free)
    committed = fill_until_full(tmp_path / "s")
    assert committed == 3 * CT
    monkeypatch.undo()
    check_at_last_commit(tmp_path / "s", committed)


@pytest.mark.parametrize("free_after", [0, 1 << 40], ids=["no-space-left", "space-left"])
def test_write_error_without_errno_faked(tmp_path, monkeypatch, free_after):
    """An OSError without errno is a full disk only when the disk is (nearly) full."""
    real_write = files.AtomicFile.write

    def write(self, data):
        if str(self.path).endswith("layers/1/c/2/0"):
            raise OSError("65536 requested and 4096 written")
        real_write(self, data)

    monkeypatch.setattr(files.AtomicFile, "write", write)
    monkeypatch.setattr(files, "free_bytes", lambda folder: free_after)
    w = open_writer(tmp_path / "s")
    with pytest.raises(StoreError) as e:
        append_synthetic(w, 0, N, context_length=CTX, piece=300)
    w.close(complete=False)
    if free_after:
        assert str(e.value).startswith("65536 requested and 4096 written while writing chunk 2 of ")
        assert str(e.value).endswith("fix that and rerun with --resume")
    else:
        assert FULL.fullmatch(str(e.value)) and "intact at 512 committed" in str(e.value)
    monkeypatch.undo()
    check_at_last_commit(tmp_path / "s", 2 * CT)


def test_errno_less_error_judged_while_the_failed_chunk_takes_space(tmp_path, monkeypatch):
    """Deleting the failed chunk's temporary files frees the space they filled: the free space that
    decides must be measured before they are dropped."""
    real_write = files.AtomicFile.write

    def write(self, data):
        if str(self.path).endswith("layers/1/c/2/0"):
            raise OSError("65536 requested and 4096 written")
        real_write(self, data)

    monkeypatch.setattr(files.AtomicFile, "write", write)
    monkeypatch.setattr(files, "free_bytes", lambda folder: 0 if list(Path(folder).rglob("*.partial")) else 1 << 40)
    w = open_writer(tmp_path / "s")
    with pytest.raises(StoreError, match="^disk full while writing chunk 2 "):
        append_synthetic(w, 0, N, context_length=CTX, piece=300)
    w.close(complete=False)
