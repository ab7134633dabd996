"""Quality against LOW bytes paged in, by upgrade order (writes docs/mixed-precision.md tables).

    python tools/budget_curve.py --models tf_efficientnet_lite0 --candidates --threads 1
    python tools/budget_curve.py --models tf_efficientnet_lite0 tf_efficientnet_lite1 \\
        tf_efficientnet_lite2 --threads 1 --out curves.md

The logic is nqformat.bench.budget_curve; this only parses options and prints.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shlex
import sys

import torch

from nqformat.bench.budget_curve import FRACTIONS, measure_model, read_pool_file, render_markdown
from nqformat.bench.photos import POOLS, pool_by_name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--h", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=5, help="random orders (median reported)")
    ap.add_argument("--candidates", action="store_true", help="also every sensitivity score")
    ap.add_argument("--only", nargs="*", default=(), help="orders whose labels start so")
    ap.add_argument(
        "--sensitivity",
        default="probe",
        choices=["probe", "analytic"],
        help="the converter's score for the 'sensitivity' curve",
    )
    pools = ap.add_mutually_exclusive_group()
    pools.add_argument(
        "--pool",
        choices=sorted(POOLS),
        help="a named photo pool (docs/photos.md; default: extended)",
    )
    pools.add_argument(
        "--pool-file",
        type=pathlib.Path,
        help="photos to measure on, one path a line (default: the project's extended pool)",
    )
    ap.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="budget points, as shares of the file's LOW bytes",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=pathlib.Path, help="write the markdown tables here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool = read_pool_file(args.pool_file) if args.pool_file is not None else None
    if args.pool is not None:
        pool, missing = pool_by_name(args.pool)
        if missing:
            print(f"pool {args.pool}: not installed: {', '.join(missing)}", file=sys.stderr)
    command = "python tools/budget_curve.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    sets = [
        measure_model(
            m,
            n=args.n,
            h=args.h,
            seeds=args.seeds,
            candidates=args.candidates,
            only=args.only,
            sensitivity=True if args.sensitivity == "analytic" else "probe",
            pool=pool,
            fractions=args.fractions,
        )
        for m in args.models
    ]
    env = {
        "torch": torch.__version__,
        "threads": str(args.threads),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    text = render_markdown(sets, command, env)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
