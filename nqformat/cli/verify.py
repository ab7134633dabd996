"""``nqtool verify``: check every checksum, the layout and every code of a .nq file (no torch).

Exit 0 only when everything present passes. Any failure means the file is not a valid ``.nq``
file, so it exits with ``EXIT_INVALID_FILE`` whether the reader refused it while opening (header
checks, spec §11 steps 1-12) or the deep checks found a problem (blob and section CRCs, padding,
code and recomposition ranges, step 13 and §7.3).
"""

from __future__ import annotations

import pathlib

import click

from nqformat.cli._common import EXIT_INVALID_FILE, human_errors, require_file

__all__ = ["verify"]


@click.command("verify")
@click.argument("file", type=click.Path(path_type=pathlib.Path))
@click.option("-q", "--quiet", is_flag=True, help="Print failures only.")
@human_errors
def verify(file: pathlib.Path, quiet: bool) -> None:
    """Verify FILE: checksums of every section present, structure, and code ranges.

    Checks that every recomposed code q = H*2^l + L lies in [-2^(n-1), 2^(n-1)-1] (in a file of
    several levels, every level's code in its own range). For a part-bit-only file it checks
    what is present and reports LOW as absent.
    """
    import nqformat
    from nqformat.container.verify import find_problems, group_by_tensor
    from nqformat.report import section_name

    require_file(file)
    with nqformat.open(file) as f:
        problems = find_problems(f)
        sections = f.sections()
        names = [section_name(s) for s in sections]
        present = [
            section_name(s) for s in sections if int(s.offset) + int(s.length) <= f.file_size
        ]
        count = len(f.names())
        part_only = f.part_only
        n, h, low_shift = f.n, f.h, f.l
        levels = tuple(f.levels)
    for line in group_by_tensor(problems):  # one line per tensor, naming it once
        click.echo(f"FAIL {line}", err=True)
    if problems:
        click.echo(f"{file}: INVALID, {len(problems)} problem(s)", err=True)
        raise SystemExit(EXIT_INVALID_FILE)
    if quiet:
        return
    checked = ", ".join(present)
    click.echo(f"ok   sections {checked}: CRC-32 and zero padding")
    click.echo(f"ok   {count} tensor records: structure, blob placement and CRCs")
    if part_only:
        absent = ", ".join(name for name in names if name not in present)
        click.echo(
            f"--   {absent} absent (part-bit-only file): HIGH codes checked in [-2^{h - 1}, "
            f"2^{h - 1}-1]; full-bit recomposition not checkable"
        )
    elif len(levels) > 2:  # §14.3: each level recomposes from the one below it
        widths = ", ".join(str(w) for w in levels)
        click.echo(
            f"ok   every code: each level's q_j = q_(j-1)*2^d_j + L_j within its w_j-bit range "
            f"(levels {widths})"
        )
    else:
        click.echo(f"ok   every code: q = H*2^{low_shift} + L within [-2^{n - 1}, 2^{n - 1}-1]")
    click.echo(f"{file}: OK" + (" (part-bit-only)" if part_only else ""))
