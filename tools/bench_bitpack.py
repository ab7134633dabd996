"""Throughput of nqformat.bitpack pack/unpack against baselines measured in the same run.

For each width 1..8 it prints pack and unpack rates in elements/s on random codes (uniform over
the width's range: the worst case for the lookup-table paths), and compares them with

* memcpy: ``np.copyto`` of the same packed bytes into a preallocated array (a floor no
  decoder can beat: it reads the same input but writes k/8 as many bytes), and
* naive: a plain numpy decoder (one uint64 window per group of 8, then shift, mask and sign
  extend each of the 8 fields), the obvious vectorised implementation.

The measurement is ``nqformat.bench.unpack.bench_width`` (``nqtool bench`` records the same);
this script prints it for every width. Each figure is the median of ``--reps`` timed runs
after one warm-up run. ``unpack`` is timed both into a preallocated ``out=`` array and with a
fresh result array (page faults included), and once more single-threaded in CPU time
(``time.thread_time``), which estimates an idle core when other jobs share the machine; the load
average is recorded for the same reason.

    python tools/bench_bitpack.py --count 33554432 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from nqformat.bench.unpack import bench_width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1 << 25, help="elements per width")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--threads", type=int, default=None, help="default: automatic")
    parser.add_argument("--no-naive", action="store_true", help="skip the slow naive baseline")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    # Shared machines: the load average says how far the figures are from an idle machine.
    load_before = os.getloadavg()[0]
    print(
        f"bitpack: {args.count} elements, median of {args.reps}, threads={args.threads or 'auto'}"
        f", {os.cpu_count()} CPUs, numpy {np.__version__}, load average {load_before:.2f}"
    )
    header = (
        f"{'k':>2} {'unpack/s':>10} {'alloc/s':>10} {'pack/s':>10} {'naive/s':>10} "
        f"{'x naive':>8} {'memcpy GB/s':>11} {'t/t_memcpy':>10} {'1t cpu/s':>10}"
    )
    print(header)
    figures: dict[str, dict] = {}
    for width in args.widths:
        r = bench_width(width, args.count, args.reps, args.threads, not args.no_naive)
        figures[str(width)] = r
        naive = r.get("naive_unpack_elements_per_s", float("nan"))
        speedup = r.get("speedup_vs_naive", float("nan"))
        print(
            f"{width:>2} {r['unpack_elements_per_s']:>10.3g} "
            f"{r['unpack_alloc_elements_per_s']:>10.3g} {r['pack_elements_per_s']:>10.3g} "
            f"{naive:>10.3g} {speedup:>8.1f} {r['memcpy_bytes_per_s'] / 1e9:>11.2f} "
            f"{r['unpack_vs_memcpy']:>10.2f} {r['unpack_1thread_cpu_time_elements_per_s']:>10.3g}",
            flush=True,
        )
    practical = [figures[str(w)] for w in args.widths if w >= 2]
    summary = {
        "count": args.count,
        "reps": args.reps,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "widths": figures,
        # The widths used in practice are h and l + 1 with n >= 2: report the slowest of 2..8.
        "unpack_elements_per_s": min(r["unpack_elements_per_s"] for r in practical)
        if practical
        else None,
        "unpack_vs_memcpy": max(r["unpack_vs_memcpy"] for r in practical) if practical else None,
    }
    print(
        f"min unpack over widths 2..8: {summary['unpack_elements_per_s']:.3g} elements/s; "
        f"worst unpack time / memcpy time of the packed bytes: {summary['unpack_vs_memcpy']:.2f}"
        f"; load average after {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
