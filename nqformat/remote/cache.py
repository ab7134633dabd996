"""The on-disk cache of remote ``.nq`` files: one folder per URL holding a *prefix* of the file.

A ``.nq`` file is read front to back in the order a model needs it (spec §9): preamble, header,
DATA and HIGH up to ``part_end``, then LOW. So the cache keeps one contiguous prefix per URL,
``data``, which is itself a valid (part-bit-only or complete) ``.nq`` file once it reaches
``part_end``, and ``meta.json`` with the validators (size, ETag, Last-Modified) of the version
it came from. Bytes already in the prefix are never requested again; a request that extends it
must come from the same version (else :class:`~nqformat.remote.errors.RemoteChangedError`, or
a fresh start when nothing was read yet). The file's own CRCs check the bytes when the reader
uses them.

Several openers of one URL (threads, processes) share the entry: whoever extends the prefix
holds the entry's lock (``flock``; on systems without it, only openers in one process are
coordinated) and first rereads how long the prefix already is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Iterator

from nqformat.remote.http import Validators

__all__ = ["CacheEntry", "default_cache_dir"]

_DATA = "data"
_META = "meta.json"
_LOCK = "lock"
_PROCESS_LOCK = threading.Lock()  # where flock is missing: at least one process is safe

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def default_cache_dir() -> pathlib.Path:
    """``$NQFORMAT_CACHE``, else ``$XDG_CACHE_HOME/nqformat``, else ``~/.cache/nqformat``."""
    explicit = os.environ.get("NQFORMAT_CACHE")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "nqformat"


class CacheEntry:
    """The cached prefix of one URL. ``temporary=True`` makes a private entry that is deleted
    by :meth:`discard_if_temporary` (the no-cache mode)."""

    def __init__(self, url: str, root: pathlib.Path | None, *, temporary: bool = False) -> None:
        self.url = url
        self.temporary = temporary
        if temporary:
            self.folder = pathlib.Path(tempfile.mkdtemp(prefix="nqformat-"))
        else:
            assert root is not None
            key = hashlib.sha256(url.encode()).hexdigest()[:32]
            self.folder = root / key
            self.folder.mkdir(parents=True, exist_ok=True)
        self.data = self.folder / _DATA
        self.data.touch(exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (exclusive, across processes where ``flock`` exists)."""
        if fcntl is None:
            with _PROCESS_LOCK:
                yield
            return
        fd = os.open(self.folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def validators(self) -> Validators | None:
        """The stored validators, or None if there are none (or they are for another URL)."""
        try:
            meta = json.loads((self.folder / _META).read_text())
            if meta.get("url") != self.url:
                return None
            return Validators(int(meta["size"]), meta.get("etag"), meta.get("last_modified"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_validators(self, v: Validators) -> None:
        """Write ``meta.json`` atomically (a reader never sees half of it)."""
        meta = {"url": self.url, "size": v.size, "etag": v.etag, "last_modified": v.last_modified}
        tmp = self.folder / f".{_META}.{os.getpid()}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.folder / _META)

    def prefix_length(self) -> int:
        return self.data.stat().st_size

    def reset(self) -> None:
        """Forget the cached bytes and validators (another version of the file). The data file
        is replaced, not truncated: another opener may still map the old one."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / _META).unlink()
        fresh = self.folder / f".{_DATA}.{os.getpid()}.{threading.get_ident()}"
        fresh.write_bytes(b"")
        os.replace(fresh, self.data)

    def discard_if_temporary(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
