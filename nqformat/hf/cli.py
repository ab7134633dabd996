"""``nqtool convert DIR`` for a local Hugging Face model directory.

:mod:`nqformat.cli.convert` dispatches here when MODEL is a directory with a config.json; the
options only this path has are attached to that command by :func:`add_options` (so its own
signature stays as it is) and read back from the click context.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import click

__all__ = ["HF_OPTIONS", "add_options", "convert_dir"]

#: zoo-only options of ``nqtool convert`` (parameter name -> flag) that a directory cannot take
_ZOO_ONLY = {
    "zoo": "--zoo",
    "weights": "--weights",
    "random_init": "--random-init",
    "seed": "--seed",
    "num_classes": "--num-classes",
    "act_bits": "--act-bits",
}

HF_OPTIONS = (
    click.Option(
        ["--keep-embeddings-float"],
        is_flag=True,
        help="Hugging Face directories: keep the vocabulary Embedding tables (and an LM head "
        "tied to them) in float instead of nesting them per row.",
    ),
    click.Option(
        ["--ln-fit"],
        is_flag=True,
        help="Hugging Face directories: fit the part-bit scale/offset of Linears fed by a "
        "LayerNorm/RMSNorm to the input statistics the norm predicts (data-free; BERT- and "
        "Llama-style models), instead of plain least squares.",
    ),
    click.Option(
        ["--workers"],
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Hugging Face directories: tensors read and quantized at once.",
    ),
)
_HF_NAMES = tuple(str(o.name) for o in HF_OPTIONS)


def add_options(command: click.Command) -> None:
    """Attach :data:`HF_OPTIONS` to ``nqtool convert``; its callback never sees them."""
    command.params.extend(HF_OPTIONS)
    callback = command.callback
    if callback is None:
        return

    @functools.wraps(callback)
    def wrapped(**kwargs: Any) -> Any:
        for name in _HF_NAMES:
            kwargs.pop(name, None)
        return callback(**kwargs)

    command.callback = wrapped
    command.help = (command.help or "") + (
        "\n\nMODEL may also be a local Hugging Face model directory (config.json with "
        "model.safetensors, sharded safetensors or pytorch_model.bin): it is streamed tensor by "
        "tensor, see docs/transformers.md.\n\n\b\n  nqtool convert ./all-MiniLM-L6-v2 --n 8 --h 6"
    )


def convert_dir(ctx: click.Context) -> None:
    """Convert the directory ``ctx.params["model"]`` with the command's options."""
    from nqformat.cli._common import fail
    from nqformat.cli.convert import NAME_WIDTH, _mib, _progress
    from nqformat.hf.convert import convert_directory, resolve_h

    p = ctx.params
    used = [flag for name, flag in _ZOO_ONLY.items() if p.get(name) not in (None, False)]
    if used:
        raise click.UsageError(f"{', '.join(used)} do(es) not apply to a Hugging Face directory")
    directory = pathlib.Path(p["model"])
    n, h, quiet = p["n"], p["h"], p["quiet"]
    output = p["output"]
    if output is None:
        h_value = resolve_h(directory, n, h)
        output = pathlib.Path(f"{directory.resolve().name}-n{n}h{h_value}.nq")
        if output.exists() and not p["force"]:
            fail(f"{output}: exists; pass --force to overwrite it (or choose another -o)")
    start = time.perf_counter()
    bar = _progress(quiet, f"{directory.name} INT({n}|{h})")
    callback = None
    if bar is not None:
        task = bar.add_task("", total=None)

        def callback(name: str, done: int, total: int) -> None:
            short = name if len(name) <= NAME_WIDTH else "…" + name[-(NAME_WIDTH - 1) :]
            bar.update(task, completed=done, total=total, description=short)

    try:
        if bar is not None:
            bar.start()
        report = convert_directory(
            directory,
            output,
            n=n,
            h=h,
            rounding=p["rounding"],
            part_params=p["part_params"],
            keep_float=p["keep_float"],
            keep_embeddings_float=p["keep_embeddings_float"],
            ln_fit=p["ln_fit"],
            compress=p["compress"],
            workers=p["workers"],
            progress=callback,
        )
    finally:
        if bar is not None:
            bar.stop()
    if quiet:
        return
    elapsed = time.perf_counter() - start
    click.echo(f"wrote {report.path}")
    click.echo(f"  model        transformers directory {directory}")
    click.echo(
        f"  INT({report.n}|{report.h}), rounding {p['rounding']}, part params "
        f"{p['part_params']}{', LayerNorm-informed fit' if p['ln_fit'] else ''}"
    )
    click.echo(
        f"  tensors      {report.nested_tensors} nested ({report.nested_elements:,} weights), "
        f"{report.raw_tensors} raw ({report.raw_elements:,} elements)"
    )
    click.echo(f"  file size    {_mib(report.file_size)}, {report.bits_per_weight:.3f} bits/weight")
    click.echo(f"  part-bit     {_mib(report.part_end)} (part_end)")
    click.echo(f"  FP32 model   {_mib(report.fp32_bytes)}")
    rate = report.elements / report.seconds if report.seconds else 0.0
    click.echo(f"  time         {elapsed:.1f} s total, {rate / 1e6:.2f} M weights/s")
