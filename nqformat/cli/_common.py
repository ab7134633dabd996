"""Shared CLI plumbing: errors for people (one line, non-zero exit, no traceback unless --debug)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from nqformat.errors import NQError, NQFormatError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID_FILE",
    "EXIT_USAGE",
    "fail",
    "human_errors",
    "require_file",
    "require_output",
]

#: exit codes shared by every nqtool command
EXIT_FAILED = 1  # the command could not do its job (missing input, refused overwrite, ...)
EXIT_USAGE = 2  # click's own code for bad arguments
EXIT_INVALID_FILE = 3  # the input is not a valid .nq file (spec §11 error; verify's deep checks)

F = TypeVar("F", bound=Callable[..., Any])


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
