"""The run of ``nqtool bench``: every case, then every run measurement, then the headline.

The measurements themselves live in their own modules and are listed in
``nqformat.bench.registry``; this module only sequences them and records the method.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from nqformat.bench.baselines import save_fp32, write_baselines
from nqformat.bench.cases import (
    FULL_CASES,
    QUICK_CASES,
    REFERENCE,
    REPS,
    SCHEMA,
    TIMING_TORCH_THREADS,
    BenchOptions,
    Case,
    Progress,
    noop,
)
from nqformat.bench.machine import machine_facts
from nqformat.bench.measurement import CaseContext, RunContext
from nqformat.bench.models import build_model, convert_case, weights_source
from nqformat.bench.pagecache import page_cache_method
from nqformat.bench.registry import CASE_MEASUREMENTS, RUN_MEASUREMENTS
from nqformat.bench.summary import case_dict, evaluate_targets, headline
from nqformat.bench.timing import Phases

__all__ = ["run_bench"]


def run_bench(options: BenchOptions, progress: Progress = noop) -> dict[str, Any]:
    """Run every measurement of the chosen mode and return the JSON-ready result."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(TIMING_TORCH_THREADS)
    try:
        return _run_bench(options, progress, default_threads=threads)
    finally:
        torch.set_num_threads(threads)


def _run_bench(
    options: BenchOptions, progress: Progress, *, default_threads: int
) -> dict[str, Any]:
    started = time.perf_counter()
    mode = options.mode
    cases = options.cases or (QUICK_CASES if options.quick else FULL_CASES)
    reference = REFERENCE[mode]
    if reference not in cases:
        reference = cases[0]
    warmup, reps = REPS[mode]
    phase = Phases()
    cache = page_cache_method()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": mode,
        "command": options.command,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine_facts(), "torch_threads_default": default_threads},
        "method": {
            "page_cache": cache,
            "torch_threads": TIMING_TORCH_THREADS,
            "warmup_runs": warmup,
            "timed_reps": reps,
            "statistic": "median of the timed reps; ratio = median(.nq) / median(baseline)",
            "baselines": (
                "safetensors files holding the .nq file's own codes and per-channel params: "
                "INT-n = full codes (int8 as they are for n = 8, else packed with "
                "nqformat.bitpack), INT-h = high codes packed with nqformat.bitpack; float32 "
                "scale/offset per channel; raw tensors as stored. Load = "
                "safetensors.numpy.load_file + the same unpack + float32 codes*scale+offset + "
                "copy into the module's tensors"
            ),
            "modules": (
                "timings: the module is built once (random init) and each load fills it in "
                "place; RSS: a fresh process builds the module and loads it"
            ),
            "weights": {m: weights_source(m) for m in sorted({c.model for c in cases})},
        },
        "reference": case_dict(reference),
        "cases": [],
    }
    work_ctx = (
        contextlib.nullcontext(options.workdir)
        if options.workdir
        else tempfile.TemporaryDirectory(prefix="nqbench-")
    )
    with work_ctx as wd:
        ctx = RunContext(
            options=options,
            workdir=Path(wd),
            reference=reference,
            phase=phase,
            progress=progress,
            page_cache=cache,
            reps=(warmup, reps),
        )
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        by_model: dict[str, list[Case]] = {}
        for case in cases:
            by_model.setdefault(case.model, []).append(case)
        for model, model_cases in by_model.items():
            result["cases"] += _run_model(ctx, model, model_cases)
        for m in RUN_MEASUREMENTS:
            result[m.key] = m.measure(ctx)

    result["machine"]["loadavg_end"] = list(os.getloadavg())
    headline(result, reference)
    result["targets"] = evaluate_targets(result)
    result["phase_seconds"] = phase.seconds
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _rss_modes(quick: bool, case: Case, reference: Case, need_fp32: bool) -> tuple[str, ...]:
    """Which peak-RSS processes a case gets: every mode in full mode (FP32 once per model);
    in quick mode the three the JSON needs, for the reference case only (time budget)."""
    if quick:
        return ("part", "full", "fp32") if case == reference else ()
    return ("part", "full", "intn", "inth") + (("fp32",) if need_fp32 else ())


def _run_model(ctx: RunContext, model: str, cases: list[Case]) -> list[dict[str, Any]]:
    """Every case of one model: the FP32 module is built once and converted per case."""
    ctx.progress(f"{model}: building ({weights_source(model)})")
    with ctx.phase("build models"):
        module, meta = build_model(model)
        fp32_path = ctx.workdir / f"{model}.fp32.safetensors"
        save_fp32(module, fp32_path)
    rows = []
    fp32_rss = None
    for case in cases:
        modes = _rss_modes(ctx.quick, case, ctx.reference, fp32_rss is None)
        row = _run_case(ctx, case, module, meta, fp32_path, modes)
        # the FP32 module is the same for every case of the model: measured once, shown in each
        fp32_rss = row["rss"].get("fp32", fp32_rss)
        if fp32_rss is not None:
            row["rss"]["fp32"] = fp32_rss
        rows.append(row)
    fp32_path.unlink(missing_ok=True)
    del module
    gc.collect()
    return rows


def _run_case(
    ctx: RunContext,
    case: Case,
    module: Any,
    meta: dict[str, Any],
    fp32_path: Path,
    rss_modes: tuple[str, ...],
) -> dict[str, Any]:
    """Convert one case, write its baselines, then take every case measurement."""
    nq_path = ctx.workdir / f"{case.model}-int{case.n}-{case.h}.nq"
    ctx.progress(f"{case.label}: converting")
    with ctx.phase("convert in process"):
        convert_s = convert_case(module, meta, case, nq_path)
    with ctx.phase("baselines and sizes"):
        full_b, part_b = write_baselines(nq_path, ctx.workdir)
    case_ctx = CaseContext(ctx, case, module, meta, nq_path, full_b, part_b, fp32_path, rss_modes)
    row: dict[str, Any] = {
        **case_dict(case),
        "weights": weights_source(case.model),
        "convert_in_process_s": convert_s,
    }
    try:
        for m in CASE_MEASUREMENTS:
            row[m.key] = m.measure(case_ctx)
    finally:
        for p in (nq_path, full_b, part_b):
            p.unlink(missing_ok=True)
    return row
