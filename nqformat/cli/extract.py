"""``nqtool extract --part``: cut the part-bit-only file (spec §9) out of a .nq file (no torch).

The part-bit-only file is exactly the first ``part_end`` bytes of the input. The copy is verified
as a file of its own (``NQFile.verify``: DATA and HIGH CRCs, padding, codes) before it is moved
into place atomically, so a failed or interrupted extraction never leaves a partial or corrupt
file at OUT.
"""

from __future__ import annotations

import pathlib

import click

from nqformat._atomic import AtomicFile
from nqformat.cli._common import EXIT_INVALID_FILE, fail, human_errors, require_file

__all__ = ["copy_prefix", "extract"]

_CHUNK = 1 << 20  # copy in 1 MiB pieces: bounded memory for any file size


def copy_prefix(src: pathlib.Path, dst: pathlib.Path, length: int) -> None:
    """Write the first ``length`` bytes of ``src`` to ``dst`` atomically (temp, fsync, rename),
    after checking that they form a valid ``.nq`` file; nothing reaches ``dst`` otherwise."""
    with AtomicFile(dst) as out, src.open("rb") as inp:
        left = length
        while left:
            chunk = inp.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{src}: file shrank while copying")
            out.file.write(chunk)
            left -= len(chunk)
        out.sync()
        problems = _check_prefix(out.temp_path, dst)
        if problems:
            raise _PrefixInvalid(problems)


class _PrefixInvalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _check_prefix(path: pathlib.Path, target: pathlib.Path) -> list[str]:
    """Problems of the copy at ``path``, worded about ``target`` (the temporary file is an
    implementation detail a user never asked for)."""
    import nqformat
    from nqformat.errors import NQError

    def about_target(text: str) -> str:
        return text.replace(str(path), str(target))

    try:
        with nqformat.open(path) as f:
            return [about_target(p) for p in f.verify()]
    except NQError as exc:
        raise type(exc)(about_target(str(exc))) from None


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
    if output.exists():
        if output.resolve() == file.resolve():
            fail(f"{output}: is the input file; write the extract somewhere else")
        if not force:
            fail(f"{output}: exists; pass --force to overwrite it")
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
