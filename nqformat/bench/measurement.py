"""The extension point of ``nqtool bench``: a measurement is a key and a function.

A *run* measurement is taken once per run (``measure(RunContext)``), its object stored under
``result[key]``; a *case* measurement once per model and configuration (``measure(CaseContext)``),
stored under ``result["cases"][i][key]``. ``headline(result)`` returns the top-level keys derived
from it (computed again when a saved result is re-rendered). ``nqformat.bench.registry`` lists
them in the order they run; adding a measurement is one module defining a ``Measurement`` and one
line there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nqformat.bench.cases import BenchOptions, Case, Progress
from nqformat.bench.timing import Phases

__all__ = ["CaseContext", "Measurement", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """What every measurement may use: the options, the scratch directory, the reference case
    (the one whose RSS and convert time the headline reports), phase timer and progress."""

    options: BenchOptions
    workdir: Path
    reference: Case
    phase: Phases
    progress: Progress
    page_cache: dict[str, Any]  # page_cache_method() of this run: method None = warm only
    reps: tuple[int, int]  # (warm-up runs, timed repetitions)

    @property
    def quick(self) -> bool:
        return self.options.quick


@dataclass(frozen=True)
class CaseContext:
    """One case, converted: its ``.nq`` file, the two baseline files and the FP32 model."""

    run: RunContext
    case: Case
    module: Any  # the FP32 torch module, built once per model
    meta: dict[str, Any]  # its META "model" object
    nq: Path
    intn: Path  # the INT-n baseline (safetensors)
    inth: Path  # the INT-h baseline (safetensors)
    fp32: Path  # the FP32 model (safetensors)
    rss_modes: tuple[str, ...]  # which peak-RSS processes this case gets


@dataclass(frozen=True)
class Measurement:
    """A named measurement; ``measure`` gets a RunContext or a CaseContext (see the registry)."""

    key: str
    measure: Callable[[Any], dict[str, Any]]
    headline: Callable[[dict[str, Any]], dict[str, Any]] | None = None
