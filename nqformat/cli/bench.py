"""``nqtool bench``: the paper's resource tables measured on this machine, as ratios to baselines.

Thin: the measurements live in the ``nqformat.bench`` package (they need the torch extra and
safetensors); this module parses options, shows progress on stderr, prints the table and writes
the JSON object and the markdown report.
"""

from __future__ import annotations

import pathlib
import shlex

import click

from nqformat.cli._common import human_errors, require_torch_extra

__all__ = ["bench"]


def _command_line(quick: bool, json_path: pathlib.Path | None, md_path: pathlib.Path | None) -> str:
    """The command that reproduces this run, recorded in the outputs."""
    words = ["nqtool", "bench"] + (["--quick"] if quick else [])
    if json_path is not None:
        words += ["--json", str(json_path)]
    if md_path is not None:
        words += ["--markdown", str(md_path)]
    return shlex.join(words)


@click.command("bench")
@click.option(
    "--quick",
    is_flag=True,
    help="ResNet-18 and EfficientNet-Lite0 at INT(8|6) only (about a minute); the full "
    "run covers five models at INT(8|4..7), INT(6|4) and INT(6|5) (tens of minutes).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Write every figure as one JSON object to this file.",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Write the report (paper Tables 9 and 11 beside ours) to this file, keeping "
    "its hand-written notes section.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Keep the scratch files here [default: a temporary directory].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@human_errors
def bench(
    quick: bool,
    json_path: pathlib.Path | None,
    md_path: pathlib.Path | None,
    workdir: pathlib.Path | None,
    quiet: bool,
) -> None:
    """Measure sizes, load and switch times, unpack speed, convert time and peak memory.

    Every time is a ratio to the baseline a user would otherwise pick (a separate INT-n or INT-h
    model in safetensors, loaded with the same dequantization code), measured in the same run.
    """
    require_torch_extra("bench", "safetensors")
    from nqformat import bench as harness

    command = _command_line(quick, json_path, md_path)
    options = harness.BenchOptions(quick=quick, workdir=workdir, command=command)

    def progress(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    result = harness.run_bench(options, progress=progress)
    harness.write_outputs(result, json_path, md_path)
    click.echo(harness.render_text(result))
    for path in (json_path, md_path):
        if path is not None:
            click.echo(f"wrote {path}")
