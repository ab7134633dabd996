"""Speed of the fused unpack + dequantize kernel (nqformat.fused) against a memcpy of its
float32 output, measured side by side in one run.

For every width h = 1..8, part-bit (H alone) and full-bit (q = H*2^l + L with l = 8 - h, so
n = 8; h = 8 has l = 0, a 1-bit LOW), on ``--count`` random codes split over ``--rows``
channels, one thread. Each repetition times the kernel and then
``np.copyto`` of a float32 array of the same size into the same destination (interleaved, so
both see the same machine load); the figures are medians over ``--reps``.

Keys (issue 10): ``fused_dequant_vs_memcpy`` = the worst (h, mode) of median(kernel) /
median(memcpy), with the median over the cases beside it; ``fused_weights_per_s_min`` = the
slowest single-thread rate in weights/s.

    python tools/bench_fused.py --json fused.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nqformat.bench.fused_dequant import measure_fused

__all__ = ["measure_fused"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1 << 22)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = measure_fused(args.count, args.rows, args.reps)
    print(f"backend {res['backend']}, {res['count']} weights, loadavg {res['loadavg']}")
    print(f"{'h':>2} {'l':>2} {'mode':5} {'Gweights/s':>11} {'vs memcpy':>10}")
    for c in res["cases"]:
        print(
            f"{c['h']:>2} {c['l']:>2} {c['mode']:5} {c['weights_per_s'] / 1e9:>11.2f} "
            f"{c['ratio']:>9.2f}x"
        )
    print(
        f"fused_dequant_vs_memcpy {res['fused_dequant_vs_memcpy']:.2f} (median "
        f"{res['fused_dequant_vs_memcpy_median']:.2f}); slowest "
        f"{res['fused_weights_per_s_min'] / 1e9:.2f} Gweights/s"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
