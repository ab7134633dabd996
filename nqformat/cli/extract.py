"""``nqtool extract --part``: cut the part-bit-only file (spec §9) out of a .nq file (no torch).

The part-bit-only file is exactly the first ``part_end`` bytes of the input. The copy is verified
as a file of its own (``NQFile.verify``: DATA and HIGH CRCs, padding, codes) before it is moved
into place atomically, so a failed or interrupted extraction never leaves a partial or corrupt
file at OUT.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

import click

from nqformat.cli._common import (
    EXIT_INVALID_FILE,
    fail,
    human_errors,
    require_file,
    require_output,
)

__all__ = ["copy_prefix", "extract"]

_CHUNK = 1 << 20  # copy in 1 MiB pieces: bounded memory for any file size
_NEW_FILE_MODE = 0o666  # what open(..., "w") asks for before the umask


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_prefix(src: pathlib.Path, dst: pathlib.Path, length: int) -> None:
    """Write the first ``length`` bytes of ``src`` to ``dst`` atomically (temp, fsync, rename),
    after checking that they form a valid ``.nq`` file; nothing reaches ``dst`` otherwise."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            # mkstemp creates 0600; give the result the permissions any new file would get
            if hasattr(os, "fchmod"):  # POSIX; Windows has no mode bits to fix
                os.fchmod(out.fileno(), _NEW_FILE_MODE & ~_umask())
            left = length
            while left:
                chunk = inp.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{src}: file shrank while copying")
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        problems = _check_prefix(tmp)
        if problems:
            raise _PrefixInvalid(problems)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(dst.parent)


class _PrefixInvalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _check_prefix(path: pathlib.Path) -> list[str]:
    import nqformat

    with nqformat.open(path) as f:
        return list(f.verify())


def _fsync_dir(directory: pathlib.Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@click.command("extract")
@click.argument("file", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--part",
    is_flag=True,
    help="Extract the part-bit-only file (the prefix up to part_end). Required.",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=pathlib.Path),
    help="Where to write the extracted file.",
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@human_errors
def extract(file: pathlib.Path, part: bool, output: pathlib.Path, force: bool) -> None:
    """Write the part-bit-only model of FILE to OUTPUT.

    The result is the first part_end bytes of FILE: a valid .nq file that serves the part-bit
    model and can be completed later by appending the rest of FILE.
    """
    import nqformat

    if not part:
        raise click.UsageError("say what to extract: --part (the part-bit-only file)")
    require_file(file)
    if output.is_dir():
        fail(f"{output}: is a directory; give a file name with -o")
    if output.exists() and output.resolve() == file.resolve():
        fail(f"{output}: is the input file; write the extract somewhere else")
    require_output(output, force=force)
    if not output.parent.is_dir():
        fail(f"{output.parent}: no such directory")
    with nqformat.open(file) as f:
        part_end = int(f.part_end)
        full_end = int(f.full_end)
    try:
        copy_prefix(file, output, part_end)
    except _PrefixInvalid as exc:
        for problem in exc.problems:
            click.echo(f"FAIL {problem}", err=True)
        fail(f"{file}: the part-bit prefix is corrupt; nothing written", EXIT_INVALID_FILE)
    saved = full_end - part_end
    click.echo(
        f"wrote {output}: {part_end:,} bytes, the part-bit-only file "
        f"({saved:,} bytes of LOW left out, {100 * saved / full_end:.1f}% of the full file)"
    )
