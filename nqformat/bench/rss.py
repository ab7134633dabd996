"""Peak RSS of a ready module, each way of building it in its own fresh process.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` right after the module is ready; torch and the zoo's
library are imported first, so the reading after the imports is the runtime's own share.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nqformat.bench.baselines import load_baseline
from nqformat.bench.measurement import Measurement
from nqformat.bench.models import skeleton
from nqformat.bench.process import bench_child, run_bench_child

__all__ = ["MEASUREMENT", "RSS_MODES", "RssJob", "measure_rss", "rss_child"]

RSS_MODES = ("fp32", "part", "full", "intn", "inth")


def rss_child(mode: str, model_meta: dict[str, Any], path: str, width: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: build a ready module one way, report ru_maxrss.

    torch and the model zoo's library are imported first, so ``rss_after_import_mb`` is the
    runtime's own share and the difference to the peak is the model's."""
    import importlib

    import torch  # noqa: F401 - every mode pays for it; imported before the first reading

    from nqformat import torch as nqtorch

    importlib.import_module(_ZOO_MODULES.get(model_meta.get("zoo", ""), "nqformat.zoo"))
    after_import = _maxrss_mb()
    start = time.perf_counter()
    if mode in ("part", "full"):
        # the float runtime, the meaning these keys have had since v0.1 (issue 10's codes
        # runtime has figures of its own, nqformat.bench.codes)
        module = nqtorch.load(Path(path), mode, resident="float")
    else:
        module = skeleton(model_meta)
        if mode == "fp32":
            from safetensors.torch import load_file

            module.load_state_dict(load_file(path), assign=True)
        else:
            load_baseline(module, Path(path), width)
    seconds = time.perf_counter() - start
    peak = _maxrss_mb()
    return {
        "mode": mode,
        "peak_rss_mb": peak,
        "rss_after_import_mb": after_import,
        "model_share_mb": peak - after_import,
        "vm_hwm_mb": _vm_hwm_mb(),
        "ready_seconds": seconds,
        "parameters": sum(p.numel() for p in module.parameters()),
    }


#: the library behind each zoo, imported before the RSS baseline reading
_ZOO_MODULES = {"pytorchcv": "pytorchcv.model_provider", "timm": "timm"}


def _maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb() -> float | None:
    """The kernel's peak RSS of this process image (/proc/self/status VmHWM), a cross-check."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


RssJob = tuple[str, dict[str, Any], Path, int]  # mode, META "model", file, code width


def measure_rss(jobs: Sequence[RssJob], workers: int = 2) -> list[dict[str, Any]]:
    """Peak RSS of each job in its own fresh process, ``workers`` at a time (RSS is per process,
    so running them side by side does not change it)."""

    def one(job: RssJob) -> dict[str, Any]:
        mode, meta, path, width = job
        # Linux keeps ru_maxrss across execve, and subprocess's vfork+exec would hand this big
        # process's peak to the child; a shell that forks (not execs) the child gives it a
        # fresh count.
        cmd = [
            "/bin/sh",
            "-c",
            '"$@"; exit $?',
            "sh",
            *bench_child("_rss", mode, json.dumps(meta), str(path), str(width)),
        ]
        return run_bench_child(cmd, f"RSS child {mode} {path.name}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def _measure(ctx: Any) -> dict[str, Any]:
    case, run = ctx.case, ctx.run
    if not ctx.rss_modes:
        return {}
    run.progress(f"{case.label}: peak RSS in fresh processes ({', '.join(ctx.rss_modes)})")
    files = {
        "part": (ctx.nq, case.h),
        "full": (ctx.nq, case.n),
        "intn": (ctx.intn, case.n),
        "inth": (ctx.inth, case.h),
        "fp32": (ctx.fp32, 32),
    }
    with run.phase("peak RSS processes"):
        # quick mode starts its three at once to fit its time budget
        workers = len(ctx.rss_modes) if run.quick else 2
        rows = measure_rss([(m, ctx.meta, *files[m]) for m in ctx.rss_modes], workers)
    return {r["mode"]: r for r in rows}


#: case measurement ``rss``: peak RSS per way of building the module (modes: ``rss_modes``)
MEASUREMENT = Measurement("rss", _measure)
