"""Hostile paths: what the tools accept as input and replace as output (issue 11).

A path given on the command line may name a FIFO (opening it blocks until a writer appears), a
directory, a device node, or a symlink to any of them. Inputs must be regular files, checked
with ``stat`` before anything opens them; outputs are replaced (``--force``) only where the path
holds a regular file, never through a symlink or onto a FIFO or device. The writer's temporary
files have a fixed naming scheme; a live writer holds an advisory lock (``flock``) on its own,
so a kill inside a write leaves a file that the next write to the same directory recognises as
abandoned (ours, unlocked, untouched for a minute) and removes.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import stat
import time

try:  # POSIX: a live writer's temp file is locked, so an abandoned one is recognised at once
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the age rule alone
    fcntl = None  # type: ignore[assignment]

from nqformat.errors import NQError

__all__ = [
    "STALE_TEMP_AGE_S",
    "UNLOCKED_TEMP_AGE_S",
    "PathError",
    "check_input_file",
    "check_output_path",
    "is_own_temp_name",
    "lock_temp",
    "remove_stale_temps",
]

#: where file locks exist, an unlocked temp file of ours this old (seconds since its last change)
#: is abandoned: the age only covers the instant between a writer creating it and locking it
UNLOCKED_TEMP_AGE_S = 60
#: without file locks, a temp file of ours this old belongs to no live writer: writers touch
#: their temp file at least once per tensor and finish within minutes
STALE_TEMP_AGE_S = 3600

#: names :class:`nqformat._atomic.AtomicFile` gives its temporary files (the writer's and
#: extract's): ``.<target>.<16 hex digits>.nq-tmp`` or ``...tmp``
_OWN_TEMP = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{16}\.(?:nq-tmp|tmp)$")


class PathError(NQError):
    """A path the tools refuse: not a regular file, or not safe to replace."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` as a Path when it is (or links to) an existing regular file; PathError (or
    FileNotFoundError) otherwise. Uses ``stat`` only: a FIFO is never opened, so never blocks."""
    p = pathlib.Path(path)
    st = os.stat(p)  # follows symlinks: a link to a regular file is a fine input
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"{p}: is {_kind(st.st_mode)}, expected a regular .nq file")
    return p


def check_output_path(path: str | os.PathLike[str], *, force: bool) -> pathlib.Path:
    """May a tool write ``path``? Nothing there: yes. A regular file (not a symlink): only with
    ``force``. A symlink, directory, FIFO, device or socket: never (PathError), because
    replacing it would write through the link or destroy something that is not a model file."""
    p = pathlib.Path(path)
    try:
        st = os.lstat(p)  # does not follow symlinks: the link itself is what would be replaced
    except FileNotFoundError:
        return p
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"{p}: is {_kind(st.st_mode)}; only a regular file can be replaced")
    if not force:
        raise PathError(f"{p}: exists; pass --force to overwrite it")
    return p


def is_own_temp_name(name: str) -> bool:
    """True for a file name our writers give their temporary files."""
    return _OWN_TEMP.match(name) is not None


def lock_temp(fd: int) -> None:
    """Mark a temp file as in use by this (live) process: an exclusive advisory lock that the
    kernel drops when the process dies, however it dies. No-op without ``fcntl``."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _abandoned(path: str) -> bool:
    """True when no live process holds the temp file's lock (checked by taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: a writer is still at work
    finally:
        os.close(fd)
    return True


def remove_stale_temps(
    directory: str | os.PathLike[str], *, max_age_s: float | None = None
) -> list[pathlib.Path]:
    """Delete temp files of our own naming in ``directory`` that a killed writer left: not
    locked by a live writer and unchanged for :data:`UNLOCKED_TEMP_AGE_S` (without file locks:
    unchanged for :data:`STALE_TEMP_AGE_S`; ``max_age_s`` overrides either). Returns what was
    removed. Only regular files of our own naming owned by this user are touched."""
    locks = fcntl is not None
    if max_age_s is None:
        max_age_s = UNLOCKED_TEMP_AGE_S if locks else STALE_TEMP_AGE_S
    removed: list[pathlib.Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        if not is_own_temp_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        if now - st.st_mtime < max_age_s:
            continue  # may belong to a writer still running (or about to lock it)
        if locks and not _abandoned(entry.path):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(pathlib.Path(entry.path))
    return removed
