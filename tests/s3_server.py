"""A real S3-compatible server for the tests: moto's, on 127.0.0.1 only, one per test session.

Import the fixtures into a test module (``from s3_server import s3_server, s3_url  # noqa: F401``).
``s3_server`` starts the server on a free loopback port and points the AWS environment at it
(fake credentials, ``AWS_ENDPOINT_URL``, no proxy for 127.0.0.1, instance metadata off, few
retries), so s3fs in this process and every subprocess talk to it and to nothing else.
``s3_url`` gives each test a fresh bucket and returns ``s3://<bucket>/run``.
``crash_after_writes`` makes the n-th object write of a memory:// store raise ``Crash`` (a kill).
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server on 127.0.0.1 (the AWS environment points at it)."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    endpoint = f"http://{LOOPBACK}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
        "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard",  # bounded: a dead server fails fast
        "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would miss the endpoint
        try:
            yield endpoint
        finally:
            server.stop()
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket on the test server."""
    import boto3
    name = f"gt-test-{os.getpid()}-{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_url(s3_bucket) -> str:
    """``s3://<fresh bucket>/run``: where a test writes its store."""
    return f"s3://{s3_bucket}/run"


def object_bytes(url: str, skip=(".lock",)) -> dict[str, bytes]:
    """Every object under ``url`` by relative key (lock objects left out): for byte comparisons."""
    from ghosttrack.store.location import as_location
    root = as_location(url)
    return {k: (root / k).read_bytes() for k in sorted(root.sizes())
            if not any(part.startswith(s) for part in k.split("/") for s in skip)}


def local_files(root) -> dict[str, bytes]:
    """Every file under a local store folder by relative path (lock files left out)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


class Crash(BaseException):
    """Stands in for a kill: nothing after it runs, no cleanup is attempted."""


def crash_after_writes(monkeypatch, n_puts: int) -> list[str]:
    """Make the n-th object write of the memory:// store (chunk, commit record, zarr metadata, lock)
    raise Crash; returns the keys written so far. Every write goes through the filesystem's
    pipe_file: ours (one key at a time, also inside commit_all's pipe, so a crash can fall between
    the chunks of one commit) and zarr's (its FsspecStore wraps this filesystem's methods)."""
    from fsspec.implementations.memory import MemoryFileSystem
    written: list[str] = []
    real_pipe_file = MemoryFileSystem.pipe_file

    def pipe_file(self, path, value, *args, **kwargs):
        if len(written) == n_puts:
            raise Crash(path)
        written.append(path)
        return real_pipe_file(self, path, value, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", pipe_file)
    return written
