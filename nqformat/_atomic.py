"""Atomic file replacement: write a temporary file next to the target, fsync it, rename it over.

Shared by :class:`~nqformat.container.writer.NQWriter` and ``nqtool extract``. A failure or a
kill before :meth:`AtomicFile.commit` leaves the target as it was (the temporary is removed on
failure; after SIGKILL at most a hidden ``.NAME.*SUFFIX`` file remains in the directory).

Permissions: the temporary is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the
kernel applies the umask (and any default ACL) exactly as for a plain ``open(path, "w")``. The
umask is never read or changed: reading it with ``os.umask`` means setting it, which races with
other threads creating files, and ``mkstemp``'s fixed 0600 would need that read to be undone.

Errors name the target, never the temporary: a user did not ask for the temporary and cannot
act on its name.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from types import TracebackType
from typing import IO

__all__ = ["AtomicFile", "fsync_dir"]

_NEW_FILE_MODE = 0o666  # what open(path, "w") asks for; the kernel then applies the umask
_NAME_TRIES = 100  # random names tried before giving up (a clash is already 1 in 2^64)


class AtomicFile:
    """A new file that appears at ``target`` only on :meth:`commit`.

    Use as a context manager: an exception discards the temporary, a normal exit commits (unless
    already committed or discarded). ``file`` is the binary file object to write to; ``temp_path``
    lets a caller re-open the finished bytes (e.g. to verify them) before committing.
    """

    def __init__(self, target: str | os.PathLike[str], *, suffix: str = ".tmp") -> None:
        self.target = pathlib.Path(target)
        directory = self.target.parent if str(self.target.parent) else pathlib.Path(".")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for _ in range(_NAME_TRIES):
            temp = directory / f".{self.target.name}.{secrets.token_hex(8)}{suffix}"
            try:
                fd = os.open(temp, flags, _NEW_FILE_MODE)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise _about_target(exc, self.target) from None
        else:
            raise FileExistsError(f"{self.target}: could not create a temporary file beside it")
        self.temp_path = temp
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self._done = False

    def sync(self) -> None:
        """Flush and fsync the temporary (the bytes are then on disk, not yet at the target)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise _about_target(exc, self.target) from None

    def commit(self) -> pathlib.Path:
        """fsync, close and rename the temporary onto the target; fsync the directory."""
        try:
            self.sync()
            self.file.close()
            os.replace(self.temp_path, self.target)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise _about_target(exc, self.target) from None
            raise
        self._done = True
        fsync_dir(self.target.parent)
        return self.target

    def discard(self) -> None:
        """Close and remove the temporary; the target is left as it was."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.temp_path.unlink()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()
        elif not self._done:
            self.commit()


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _about_target(exc: OSError, target: pathlib.Path) -> OSError:
    """The same OS error, naming ``target`` instead of the temporary file (an error without an
    errno is one of ours and already says what it is about)."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(target))
