"""Where a store lives: a local folder (a ``pathlib.Path``) or a prefix on an object store.

``as_location`` turns what the user typed into one of the two:

- a plain path or ``file://`` URL -> ``Path``: the local code path (atomic renames, ``flock``,
  memory-mapped reads) is untouched;
- ``s3://``, ``gs://`` (or ``gcs://``) and ``memory://`` -> ``ObjectPath``, a small pathlib-like
  handle over an fsspec filesystem (s3fs, gcsfs, fsspec's memory store). Credentials come from the
  usual environment of those libraries (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...; ``GOOGLE_APPLICATION_CREDENTIALS``).

Anything else is refused in one line before any work: a scheme we do not support, a scheme whose
package is missing (naming the pip extra), and ``s3:/bucket``-like strings that would otherwise
become a local folder named ``s3:``.

Object stores have no rename and no folders: an object appears whole when its PUT completes, so
the writer uploads each chunk in one PUT (``files.py``) and the commit record after its chunks.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Union

from .errors import StoreError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_BACKENDS = {  # scheme -> (module that implements it, the pip extra that installs it)
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "memory": ("fsspec", None),
}
SUPPORTED = "a local path, file://, s3://, gs:// or memory://"


class ObjectPath:
    """An object key (or a prefix of keys) on an fsspec filesystem, with the few pathlib methods the
    store uses. ``str()`` gives the URL back; there are no folders, so ``mkdir`` does nothing."""

    def __init__(self, fs, protocol: str, key: str):
        self.fs, self.protocol, self.key = fs, protocol, key.rstrip("/")

    def __truediv__(self, part) -> "ObjectPath":
        return ObjectPath(self.fs, self.protocol, f"{self.key}/{str(part).strip('/')}")

    def __str__(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.fs, self.protocol, self.key.rsplit("/", 1)[0])

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    # -------------------------------------------------------------- objects

    def read_bytes(self) -> bytes:
        """The whole object (FileNotFoundError when missing)."""
        return self.fs.cat_file(self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """One PUT: readers see the old object or the new one, never a part."""
        self.fs.pipe_file(self.key, bytes(data))

    def create_exclusive(self, data: bytes) -> bool:
        """Create the object only if it does not exist (a conditional PUT, If-None-Match: *);
        False when it already exists."""
        try:
            self.fs.pipe_file(self.key, bytes(data), mode="create")
        except FileExistsError:
            return False
        return True

    def size(self) -> int | None:
        """Bytes of the object, None when there is none."""
        try:
            info = self.fs.info(self.key)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def is_file(self) -> bool:
        return self.size() is not None

    def is_dir(self) -> bool:
        """True when some object lies under this prefix (one listing of its first level, not of
        every object below: a store may hold ~10^5 of them)."""
        try:
            entries = self.fs.ls(self.key + "/", detail=False)
        except FileNotFoundError:
            return False
        return any(e.rstrip("/") != self.key for e in entries)  # some filesystems list an object itself

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: a prefix exists once an object lies under it."""

    def iterdir(self) -> list["ObjectPath"]:
        """The objects and prefixes directly under this prefix."""
        try:
            entries = self.fs.ls(self.key + "/", detail=False)
        except FileNotFoundError:
            return []
        return [ObjectPath(self.fs, self.protocol, e) for e in entries if e.rstrip("/") != self.key]

    def glob(self, pattern: str) -> list["ObjectPath"]:
        return [ObjectPath(self.fs, self.protocol, k) for k in self.fs.glob(f"{self.key}/{pattern}")]

    def sizes(self) -> dict[str, int]:
        """Every object under this prefix, by key relative to it, with its size (one listing)."""
        found = self.fs.find(self.key + "/", detail=True)
        n = len(self.key) + 1
        return {k[n:]: int(v["size"]) for k, v in found.items() if v.get("type", "file") == "file"}

    def remove_tree(self) -> None:
        """Delete every object under this prefix (none: nothing to do)."""
        keys = list(self.fs.find(self.key + "/"))
        if keys:
            self.fs.rm(keys)


Location = Union[Path, ObjectPath]


def is_remote(location) -> bool:
    return isinstance(location, ObjectPath)


def as_location(where) -> Location:
    """A store's location from a path, a URL, a Path or an ObjectPath (see the module docstring)."""
    if isinstance(where, (Path, ObjectPath)):
        return where
    text = str(where)
    m = _SCHEME.match(text)
    if m is None or (len(m.group(1)) == 1 and not m.group(2)):  # a plain path (or C:\ on Windows)
        return Path(text)
    scheme = m.group(1).lower()
    if not m.group(2):
        raise StoreError(f"{text!r} looks like a URL without '//' (it would become a local folder named "
                         f"'{m.group(1)}:'); write {scheme}://{text[m.end():].lstrip('/')} or a local path")
    rest = text[m.end():]
    if scheme == "file":
        return Path(rest if rest.startswith("/") else "/" + rest)
    if scheme not in _BACKENDS:
        raise StoreError(f"unsupported store URL scheme '{scheme}://' in {text}; use {SUPPORTED}")
    key = rest.strip("/")
    if not key or (scheme != "memory" and "/" not in key):
        raise StoreError(f"store URL {text} needs a bucket and a prefix ({scheme}://BUCKET/RUN); "
                         "a store never takes a whole bucket")
    module, extra = _BACKENDS[scheme]
    if importlib.util.find_spec(module) is None:
        raise StoreError(f"{scheme}:// stores need the {module} package: pip install 'ghosttrack[{extra}]'")
    return ObjectPath(_filesystem(scheme), scheme, key if scheme != "memory" else "/" + key)


def _filesystem(scheme: str):
    import fsspec
    # No listing cache: other processes (ranks, readers) change the store while we look at it.
    if scheme == "memory":
        return fsspec.filesystem("memory")
    return fsspec.filesystem(scheme, use_listings_cache=False)


def zarr_store(location: Location, read_only: bool = False):
    """zarr's own store for the location: LocalStore for a folder, FsspecStore for an object store."""
    import zarr
    if not is_remote(location):
        return zarr.storage.LocalStore(location, read_only=read_only)
    opts = {} if location.protocol == "memory" else {"use_listings_cache": False}
    return zarr.storage.FsspecStore.from_url(str(location), storage_options=opts, read_only=read_only)


def remove_tree(location: Location) -> None:
    """Delete a folder (or an object prefix) and everything in it; nothing when it is missing."""
    if is_remote(location):
        location.remove_tree()
    elif location.exists():
        import shutil
        shutil.rmtree(location)


def check_reachable(location: Location, *, for_writing: bool) -> None:
    """One request that turns a wrong bucket, missing credentials or an unreachable endpoint into a
    one-line error before any work (local paths: nothing to do)."""
    if not is_remote(location) or location.protocol == "memory":
        return
    bucket = location.key.split("/", 1)[0]
    try:
        location.fs.info(bucket)  # one HEAD of the bucket, whatever it holds
    except FileNotFoundError:
        raise StoreError(f"bucket {bucket} of {location} does not exist (or is not visible with these "
                         "credentials); create it or fix the URL") from None
    except Exception as e:  # botocore/gcsfs raise their own types for credentials and endpoints
        hint = ("set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and, for a non-AWS "
                "server, AWS_ENDPOINT_URL" if location.protocol == "s3"
                else "set GOOGLE_APPLICATION_CREDENTIALS")
        what = "write" if for_writing else "read"
        raise StoreError(f"cannot {what} {location}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}; "
                         f"{hint}") from None


def upload_folder(local: Path, target: ObjectPath) -> None:
    """Copy a local folder's files under an object prefix (concurrent PUTs)."""
    files = {f"{target.key}/{p.relative_to(local).as_posix()}": p.read_bytes()
             for p in sorted(Path(local).rglob("*")) if p.is_file()}
    if files:
        target.fs.pipe(files)


def download_folder(source: ObjectPath, local: Path) -> None:
    """Copy every object under a prefix into a local folder (for libraries that read only files)."""
    for rel in source.sizes():
        dest = Path(local) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((source / rel).read_bytes())
