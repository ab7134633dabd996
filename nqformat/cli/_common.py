"""Shared CLI plumbing: errors for people (one line, non-zero exit, no traceback unless --debug)."""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from nqformat.errors import NQError, NQFormatError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID_FILE",
    "EXIT_USAGE",
    "TORCH_EXTRA_INSTALL",
    "check_output_dir",
    "check_output_path",
    "fail",
    "human_errors",
    "process_seconds",
    "require_file",
    "require_output",
    "require_torch_extra",
]

#: exit codes shared by every nqtool command
EXIT_FAILED = 1  # the command could not do its job (missing input, refused overwrite, ...)
EXIT_USAGE = 2  # click's own code for bad arguments
EXIT_INVALID_FILE = 3  # the input is not a valid .nq file (spec §11 error; verify's deep checks)

F = TypeVar("F", bound=Callable[..., Any])

#: how to get what convert, eval and bench need (pyproject.toml's ``torch`` extra)
TORCH_EXTRA_INSTALL = 'pip install "nqformat[torch]"'


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print one line to stderr and exit with ``code``."""
    click.echo(f"nqtool: error: {message}", err=True)
    sys.exit(code)


def require_file(path: os.PathLike[str] | str) -> None:
    """Fail with one line when ``path`` is missing or not a regular file, before opening it
    (``stat`` only: a FIFO would block an open forever; a device never ends)."""
    from nqformat._paths import PathError, check_input_file

    if not os.path.exists(path):
        fail(f"{path}: no such file")
    if os.path.isdir(path):
        fail(f"{path}: is a directory, expected a .nq file")
    try:
        check_input_file(path)
    except (PathError, OSError) as exc:
        fail(str(exc))


def require_output(path: os.PathLike[str] | str, *, force: bool) -> None:
    """Fail with one line unless a tool may write ``path``: nothing there, or a regular file
    and ``force`` (never a symlink, FIFO, device or directory, whatever ``force`` says)."""
    from nqformat._paths import PathError, check_output_path

    try:
        check_output_path(path, force=force)
    except PathError as exc:
        fail(str(exc))


def check_output_path(path: pathlib.Path, force: bool) -> None:
    """Fail with one line where ``path`` cannot be written (a directory, a missing or read-only
    parent, an existing file without ``force``): before any slow work, not after it."""
    if path.is_dir():
        fail(f"{path}: is a directory; give a file name with -o")
    check_output_dir(path.parent, path)
    require_output(path, force=force)  # --force replaces only a regular file


def check_output_dir(directory: pathlib.Path, path: pathlib.Path | None = None) -> None:
    """Fail with one line where no file can be created in ``directory`` (``path``: the file
    meant, named in the message)."""
    what = f"{path}: " if path is not None else ""
    if not directory.exists():
        fail(f"{what}directory {directory} does not exist")
    if not directory.is_dir():
        fail(f"{what}{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        fail(f"{what}cannot write in {directory} (permission denied)")


#: where process_seconds counts from when the kernel cannot say (time of the first CLI import)
_IMPORTED_AT = time.time()


def process_seconds() -> float:
    """Seconds since this process started (interpreter start, imports included), from
    ``/proc/self/stat`` where there is one; else since the CLI was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # field 22 (starttime, clock ticks after boot) follows the parenthesised command name
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED_AT


def require_torch_extra(command: str, *modules: str) -> None:
    """Fail with the install command where ``torch`` (or another of ``modules`` the torch extra
    brings) cannot be imported, before ``command`` does any work."""
    for name in ("torch", *modules):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            fail(
                f"nqtool {command} needs the torch extra ({name} cannot be imported: {exc}); "
                f"install it with: {TORCH_EXTRA_INSTALL}"
            )


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return bool(os.environ.get("NQTOOL_DEBUG"))


def human_errors(func: F) -> F:
    """Turn expected failures into one clear line; ``--debug``/NQTOOL_DEBUG=1 re-raises."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if _debug():
                raise
            if isinstance(exc, NQFormatError):
                fail(f"{exc} [{exc.code}]", EXIT_INVALID_FILE)
            if isinstance(exc, NQError):
                fail(str(exc))
            if isinstance(exc, IsADirectoryError):
                fail(f"{exc.filename or 'input'}: is a directory, expected a file")
            if isinstance(exc, FileNotFoundError):
                fail(f"{exc.filename or exc}: no such file")
            if isinstance(exc, PermissionError):
                fail(f"{exc.filename or exc}: permission denied")
            if isinstance(exc, KeyboardInterrupt):
                fail("interrupted", 130)
            fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return None

    return wrapper  # type: ignore[return-value]
