"""Training refuses a store that is being written, and only then: the OS lock decides, not a pid."""
from __future__ import annotations

import json
import os
import socket

import pytest

from ghosttrack.errors import GhostTrackError
from ghosttrack.store.format import LOCK_PREFIX
from ghosttrack.store.lock import StoreLock
from ghosttrack.train.layers import open_training_store
from trainer_data import write_store


def test_a_live_writer_is_named_and_a_dead_one_is_not(tmp_path):
    store = tmp_path / "partial"
    write_store(store, n_tokens=2048, complete=False)
    # A record holding a live pid (ours: pid reuse, PID 1 in a restarted container) but no OS lock:
    # its writer is gone, so the store is "incomplete", not "being written".
    (store / LOCK_PREFIX).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(GhostTrackError, match="incomplete"):
        open_training_store(store)
    with StoreLock.acquire(store / LOCK_PREFIX, store):
        with pytest.raises(GhostTrackError, match="still being written"):
            open_training_store(store)
