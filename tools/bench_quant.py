"""Benchmark nest_quantize on every Conv2d/Linear weight of pytorchcv ResNet-101 (issue 3 §5).

Random-init weights (timing only; no accuracy is claimed). Prints per-stage wall and CPU time
(affine, SQuant rounding of w_int, nest rounding + split, part-bit refit), the total, the
ratio to a plain-RTN run of the same pipeline measured in the same process, and peak memory.

    python tools/bench_quant.py [--model resnet101] [--n 8 --h 4] [--repeat 1]

The target is <= 5 s total wall time on the project's 2-core machine. The quantizer is
single-threaded numpy, so CPU time is the figure that does not depend on other load; wall time
is printed too, with the load average, because other jobs share the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

from nqformat.quant import nest
from nqformat.quant.nest import StageTimes, nest_quantize_timed

STAGE_LABELS = {
    "affine": "affine (S, Z, X)",
    "round_int": "SQuant E/K/C of w_int",
    "round_high": "nest rounding + split",
    "refit": "part-bit refit",
}


def _weights(model: str, seed: int) -> list[tuple[str, np.ndarray]]:
    import torch
    from pytorchcv.model_provider import get_model

    torch.manual_seed(seed)
    net = get_model(model, pretrained=False)
    return [
        (name, m.weight.detach().numpy().copy())
        for name, m in net.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _run(weights: list[tuple[str, np.ndarray]], n: int, h: int, **kw: object) -> StageTimes:
    times = StageTimes()
    for _, w in weights:
        nest_quantize_timed(w, n, h, times=times, **kw)  # results dropped: transient memory
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet101")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--h", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="take the best of this many runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: auto)")
    args = ap.parse_args()
    if args.threads is not None:
        nest.THREADS = args.threads

    weights = _weights(args.model, args.seed)
    count = sum(w.size for _, w in weights)
    rss_before = _peak_rss_mib()
    print(f"{args.model}: {len(weights)} Conv2d/Linear weights, {count / 1e6:.1f}M elements")
    print(f"n={args.n} h={args.h}, load average before: {os.getloadavg()[0]:.2f}")

    best: StageTimes | None = None
    best_wall = best_cpu = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        times = _run(weights, args.n, args.h)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best_wall:
            best, best_wall, best_cpu = times, wall, cpu
    assert best is not None
    rss_peak = _peak_rss_mib()

    t0 = time.perf_counter()
    c0 = time.process_time()
    rtn = _run(
        weights,
        args.n,
        args.h,
        rounding="rtn",
        k_stage=False,
        c_stage=False,
        part_params="inherited",
    )
    rtn_wall, rtn_cpu = time.perf_counter() - t0, time.process_time() - c0
    del rtn

    print(f"\nthreads: {nest.THREADS} (per-stage wall is summed over threads)")
    print(f"{'stage':<26}{'wall s':>9}{'cpu s':>9}")
    for key, label in STAGE_LABELS.items():
        print(f"{label:<26}{best.wall[key]:>9.3f}{best.cpu[key]:>9.3f}")
    print(f"{'total elapsed / process':<26}{best_wall:>9.3f}{best_cpu:>9.3f}")
    print(
        f"\nthroughput: {count / best_wall / 1e6:.1f} M weights/s wall; "
        f"target <= 5 s wall: {'met' if best_wall <= 5.0 else 'NOT met'}"
    )
    print(
        f"baseline (same pipeline, RTN for both roundings, no refit): {rtn_wall:.3f} s wall, "
        f"{rtn_cpu:.3f} s cpu -> SQuant+nest+refit costs {best_wall / rtn_wall:.2f}x RTN"
    )
    print(
        f"peak RSS (getrusage): {rss_peak:.0f} MiB; with model + weights loaded it was already "
        f"{rss_before:.0f} MiB (delta {rss_peak - rss_before:.0f} MiB)"
    )
    tracemalloc.start()
    _run(weights[-12:], args.n, args.h)  # the largest layers are at the end of ResNets
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    largest = max(w.size for _, w in weights)
    print(
        f"quantizer working memory (tracemalloc peak over the last 12 layers, largest "
        f"{largest / 1e6:.2f}M weights): {peak / 2**20:.1f} MiB"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
