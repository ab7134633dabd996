"""``nqtool fetch URL``: download a ``.nq`` file, or only its part-bit prefix, over HTTP ranges.

``--part`` fetches ``[0, part_end)``: the canonical part-bit-only file (spec §9). Without it the
whole file is fetched, and an existing part-bit-only (or interrupted) download of the same file
is completed by appending only the missing bytes: bytes already on disk are never fetched again.
The same file means the same 256-byte preamble, which holds every section CRC (and through
INDEX every blob CRC), so a prefix of another version is never extended.

The bytes go to ``.OUT.download`` next to OUT (kept when interrupted: the next run resumes it),
are verified as a ``.nq`` file of their own (``NQFile.verify``: every CRC present, padding,
codes), and only then renamed over OUT: OUT is never a half file. (Not ``nqformat._atomic``'s
AtomicFile: its temporary is discarded on failure, while this one is the resume state.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import urllib.parse
from collections.abc import Iterator

import click

from nqformat.cli._common import EXIT_INVALID_FILE, fail, human_errors

__all__ = ["fetch"]


def _default_output(url: str) -> pathlib.Path:
    name = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
    return pathlib.Path(name or "model.nq")


def _same_start(path: pathlib.Path, preamble: bytes) -> bool:
    """True if ``path`` starts with exactly this preamble (same file, same version)."""
    try:
        with path.open("rb") as f:
            return f.read(len(preamble)) == preamble
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _progress(total: int, done: int, quiet: bool) -> Iterator[object]:
    """A rich progress bar on stderr (nothing with ``quiet``); yields ``advance(n)``."""
    if quiet:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("fetching"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("fetch", total=total, completed=done)
        yield lambda n: bar.advance(task, n)


@click.command("fetch")
@click.argument("url")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Where to write the file (default: the URL's file name, here).",
)
@click.option("--part", is_flag=True, help="Fetch only the part-bit prefix [0, part_end).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Read timeout, s.")
@click.option("--retries", type=int, default=4, show_default=True, help="Retries per request.")
@human_errors
def fetch(
    url: str, output: pathlib.Path | None, part: bool, quiet: bool, timeout: float, retries: int
) -> None:
    """Download the .nq file at URL (http/https), or with --part only its part-bit prefix;
    completes an earlier part-bit-only or interrupted download instead of starting over."""
    import nqformat
    from nqformat._atomic import fsync_dir
    from nqformat.container import spec
    from nqformat.container.reader import parse_header
    from nqformat.remote import is_url
    from nqformat.remote.http import HTTPRangeClient

    if not is_url(url):
        fail(f"{url}: not an http(s) URL")
    out = output if output is not None else _default_output(url)
    work = out.with_name(f".{out.name}.download")
    client = HTTPRangeClient(url, timeout=timeout, retries=retries)
    try:
        preamble = client.fetch(0, spec.PREAMBLE_SIZE)
        assert client.validators is not None
        size = client.validators.size
        # what is on disk already: an interrupted download first, else an earlier OUT
        local = next((p for p in (work, out) if _same_start(p, preamble)), None)
        head: list[bytes] = []

        def read_header(offset: int, length: int) -> bytes:
            if local is not None and local.stat().st_size >= offset + length:
                with local.open("rb") as f:
                    f.seek(offset)
                    return f.read(length)
            head.append(preamble + client.fetch(spec.PREAMBLE_SIZE, offset + length))
            return head[-1][offset:]

        # spec §11 steps 1-12 on the remote header before any offset in it is trusted
        header = parse_header(preamble, read_header, size)
        goal = header.preamble.part_end if part else size
        reused_from = local
        if local is out and out.stat().st_size >= goal:
            click.echo(f"{out}: already holds the {'part-bit prefix' if part else 'file'}")
            return
        if local is out:
            shutil.copyfile(out, work)
        elif local is None:
            work.write_bytes(head[-1] if head else preamble)
        elif work.stat().st_size > goal:  # an earlier full download, now only --part
            os.truncate(work, goal)
        have = work.stat().st_size
        reused = have if reused_from is not None else 0
        with _progress(goal, have, quiet) as advance, work.open("ab") as sink:
            for chunk in client.stream(have, goal):
                sink.write(chunk)
                advance(len(chunk))  # type: ignore[operator]
            sink.flush()
            os.fsync(sink.fileno())
        with nqformat.open(work) as f:
            problems = f.verify()
            complete = not f.part_only
        if problems or work.stat().st_size != goal:
            work.unlink()
            fail(
                f"{url}: the downloaded file does not verify: {'; '.join(problems)}",
                EXIT_INVALID_FILE,
            )
        os.replace(work, out)
        fsync_dir(out.parent)  # the rename itself survives a crash
    finally:
        client.close()
    fetched = client.bytes_received
    saved = size - fetched
    what = "complete file" if complete else f"part-bit prefix [0, {goal:,})"
    click.echo(
        f"{out}: {what}, {goal:,} bytes, verified; fetched {fetched:,} bytes in "
        f"{client.requests} requests"
        + (f", reused {reused:,} bytes from {reused_from.name}" if reused_from else "")
    )
    click.echo(
        f"saved {saved:,} of the {size:,} bytes of a whole-file download "
        f"({100 * saved / size:.1f}%)"
    )
