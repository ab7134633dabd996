"""Throughput of ``nqformat.bitpack`` unpack against ``memcpy`` of the same packed bytes.

``bench_width`` is the measurement; ``tools/bench_bitpack.py`` prints it for every width and
``nqtool bench`` records the slowest width in use (2..8).

* memcpy: ``np.copyto`` of the packed bytes into a preallocated array (a floor no decoder can
  beat: it reads the same input but writes k/8 as many bytes), and
* naive: a plain numpy decoder (one uint64 window per group of 8, then shift, mask and sign
  extend each of the 8 fields), the obvious vectorised implementation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nqformat.bench.measurement import Measurement
from nqformat.bitpack import pack, packed_size, unpack

__all__ = [
    "MEASUREMENT",
    "UNPACK_SIZE",
    "UNPACK_WIDTHS",
    "bench_width",
    "median_seconds",
    "naive_unpack",
    "unpack_figures",
]


def median_seconds(
    fn: Callable[[], object], reps: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median of ``reps`` timed calls of ``fn`` after one untimed warm-up call."""
    fn()  # warm-up: tables, thread pool, page faults of preallocated buffers
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def naive_unpack(buf: np.ndarray, width: int, count: int) -> np.ndarray:
    """Straightforward numpy decoder: uint64 window per group, 8 shift-and-mask passes."""
    n_groups = -(-count // 8)
    padded = np.zeros(n_groups * width + 8, dtype=np.uint8)
    padded[: buf.size] = buf
    windows = np.ndarray((n_groups,), dtype="<u8", buffer=padded, strides=(width,))
    out = np.empty((n_groups, 8), dtype=np.int8)
    mask = np.uint64((1 << width) - 1)
    for j in range(8):
        field = (windows >> np.uint64(j * width)) & mask
        out[:, j] = field.astype(np.uint8).view(np.int8)
    flat = out.reshape(-1)[:count]
    shift = np.int8(8 - width)
    return (flat << shift) >> shift


def bench_width(width: int, count: int, reps: int, threads: int | None, naive: bool) -> dict:
    """Pack and unpack rates at one width on random codes, against memcpy of the packed bytes
    (and the naive decoder where ``naive``); medians of ``reps`` runs after a warm-up."""
    rng = np.random.default_rng(width)
    lo, hi = -(1 << (width - 1)), 1 << (width - 1)
    codes = rng.integers(lo, hi, size=count, dtype=np.int8)
    packed = pack(codes, width)
    if not np.array_equal(unpack(packed, width, count), codes):
        raise RuntimeError(f"width {width}: unpack(pack(x)) != x")
    out = np.empty(count, dtype=np.int8)
    copy_dst = np.empty_like(packed)

    t_copy = median_seconds(lambda: np.copyto(copy_dst, packed), reps)
    t_out = median_seconds(lambda: unpack(packed, width, count, out=out, threads=threads), reps)
    t_new = median_seconds(lambda: unpack(packed, width, count, threads=threads), reps)
    t_pack = median_seconds(lambda: pack(codes, width, threads=threads), reps)
    # CPU time of one thread: what an idle core would take, even when others share the machine.
    t_cpu = median_seconds(
        lambda: unpack(packed, width, count, out=out, threads=1), reps, time.thread_time
    )
    result = {
        "packed_bytes": packed_size(count, width),
        "memcpy_bytes_per_s": packed.size / t_copy,
        "unpack_elements_per_s": count / t_out,
        "unpack_alloc_elements_per_s": count / t_new,
        "unpack_vs_memcpy": t_out / t_copy,
        "pack_elements_per_s": count / t_pack,
        "unpack_1thread_cpu_time_elements_per_s": count / t_cpu,
    }
    if naive:
        if not np.array_equal(naive_unpack(packed, width, count), codes):
            raise RuntimeError(f"width {width}: naive baseline is wrong")
        t_naive = median_seconds(lambda: naive_unpack(packed, width, count), reps)
        result["naive_unpack_elements_per_s"] = count / t_naive
        result["speedup_vs_naive"] = t_naive / t_out
    return result


#: (elements per width, timed reps) of the unpack measurement
UNPACK_SIZE = {"quick": (1 << 22, 3), "full": (1 << 25, 5)}
#: the widths a file uses are h and l + 1 with n >= 2, so 2..8 (1 only for h = 1)
UNPACK_WIDTHS = range(2, 9)


def unpack_figures(quick: bool) -> dict[str, Any]:
    """The unpack kernel against memcpy at every width in use (``bench_width``, the measurement
    tools/bench_bitpack.py prints); the headline is the slowest width."""
    count, reps = UNPACK_SIZE["quick" if quick else "full"]
    widths = {str(w): bench_width(w, count, reps, None, False) for w in UNPACK_WIDTHS}
    return {
        "tool": "nqformat.bench.unpack.bench_width (as tools/bench_bitpack.py)",
        "count": count,
        "reps": reps,
        "widths": widths,
        "unpack_elements_per_s": min(r["unpack_elements_per_s"] for r in widths.values()),
        "unpack_vs_memcpy": max(r["unpack_vs_memcpy"] for r in widths.values()),
    }


def _measure(ctx: Any) -> dict[str, Any]:
    ctx.progress("unpack kernel against memcpy (nqformat.bench.unpack)")
    with ctx.phase("unpack kernel"):
        return unpack_figures(ctx.quick)


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    unpack_ = result["unpack"]
    return {
        "unpack_vs_memcpy": unpack_["unpack_vs_memcpy"],
        "unpack_elements_per_s": unpack_["unpack_elements_per_s"],
    }


#: run measurement ``unpack``: the kernel against memcpy; top level: the slowest width
MEASUREMENT = Measurement("unpack", _measure, _headline)
