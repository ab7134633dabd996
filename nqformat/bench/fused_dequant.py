"""Speed of the fused unpack + dequantize kernel (``nqformat.fused``) against a memcpy of its
float32 output, measured side by side in one run (issue 10's ``fused_dequant_vs_memcpy``).

For every width h = 1..8, part-bit (H alone) and full-bit (q = H*2^l + L with l = 8 - h, so
n = 8; h = 8 has l = 0, a 1-bit LOW), on random codes split over ``rows`` channels, one thread.
Each repetition times the kernel and then ``np.copyto`` of a float32 array of the same size into
the same destination (interleaved, so both see the same machine load); figures are medians.
``tools/bench_fused.py`` prints it per width; ``nqtool bench`` records the worst (h, mode).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from nqformat import bitpack, fused

__all__ = ["FUSED_SIZE", "measure_fused"]

#: (weights, timed reps) of the measurement in ``nqtool bench``, per mode
FUSED_SIZE = {"quick": (1 << 22, 5), "full": (1 << 22, 9)}


def _cases() -> list[tuple[int, int, bool]]:
    """(h, l, full) for h in 1..8, part and full, with n = h + l = 8."""
    out = []
    for h in range(1, 9):
        lbits = 8 - h
        out.append((h, lbits, False))
        out.append((h, lbits, True))
    return out


def measure_fused(count: int = 1 << 22, rows: int = 512, reps: int = 9) -> dict[str, Any]:
    """Single-thread kernel rates and kernel/memcpy ratios; returns the issue's keys."""
    rng = np.random.default_rng(0)
    count -= count % rows
    out = np.empty(count, np.float32)
    src = rng.standard_normal(count).astype(np.float32)
    scale = rng.standard_normal(rows).astype(np.float32)
    offset = rng.standard_normal(rows).astype(np.float32)
    cases = []
    for h, lbits, full in _cases():
        hb = bitpack.pack(rng.integers(-(1 << (h - 1)), 1 << (h - 1), count), h)
        lc = rng.integers(-(1 << lbits), 1 << lbits, count)
        lb = bitpack.pack(lc, lbits + 1) if full else None
        kw = dict(h=h, lbits=lbits, count=count, rows=rows, scale=scale, offset=offset, out=out)
        fused.dequantize_packed(hb, lb, threads=1, **kw)  # warm-up
        np.copyto(out, src)
        t_kernel, t_copy = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            fused.dequantize_packed(hb, lb, threads=1, **kw)
            t1 = time.perf_counter()
            np.copyto(out, src)
            t2 = time.perf_counter()
            t_kernel.append(t1 - t0)
            t_copy.append(t2 - t1)
        k, c = statistics.median(t_kernel), statistics.median(t_copy)
        cases.append(
            {
                "h": h,
                "l": lbits,
                "mode": "full" if full else "part",
                "weights_per_s": count / k,
                "kernel_s": k,
                "memcpy_s": c,
                "ratio": k / c,
            }
        )
    ratios = [c["ratio"] for c in cases]
    rates = [c["weights_per_s"] for c in cases]
    return {
        "backend": fused.BACKEND,
        "count": count,
        "rows": rows,
        "reps": reps,
        "loadavg": os.getloadavg(),
        "fused_dequant_vs_memcpy": max(ratios),
        "fused_dequant_vs_memcpy_median": statistics.median(ratios),
        "fused_weights_per_s_min": min(rates),
        "fused_weights_per_s_median": statistics.median(rates),
        "cases": cases,
    }
