"""Timing primitives: one timed call, the median of several, ratios, phases and profiles."""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Phases", "Timing", "profile_rows", "ratio", "timed"]


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated measurements, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            "reps": len(self.samples),
        }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call, with the garbage collector off (as ``timeit`` does)."""
    gc.disable()
    try:
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    finally:
        gc.enable()


def ratio(num: Timing | float | None, den: Timing | float | None) -> float | None:
    """num / den on the medians; None where either is missing or den is not positive."""
    a = num.median if isinstance(num, Timing) else num
    b = den.median if isinstance(den, Timing) else den
    if a is None or b is None or b <= 0:
        return None
    return a / b


def profile_rows(prof: cProfile.Profile, top: int) -> dict[str, list[dict[str, Any]]]:
    """cProfile's top functions by own time and by cumulative time, JSON-ready."""
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = [
        {
            "function": f"{Path(func[0]).name}:{func[1]}({func[2]})",
            "calls": calls,
            "tottime_s": tottime,
            "cumtime_s": cumtime,
        }
        for func, (_cc, calls, tottime, cumtime, _callers) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    return {
        "top_by_tottime": sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:top],
        "top_by_cumtime": sorted(rows, key=lambda r: r["cumtime_s"], reverse=True)[:top],
    }


class Phases:
    """Wall seconds per phase of the run, so a slow run shows where its time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Any:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
