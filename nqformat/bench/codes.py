"""Issue 10's figures for the codes-resident runtime (``load(..., resident="codes")``), each
against a baseline measured in the same run.

Per INT(8|6) case, with the method of the rest of the bench (interleaved rounds, medians after a
warm-up, one torch thread, bit-identity checked):

- ``codes_part_load_vs_int8_load``: ``load(path, "part", module=m, resident="codes")`` against
  loading the INT-n safetensors baseline into a float module (the baseline of
  ``part_load_vs_int8_load``), warm page cache;
- ``codes_upgrade_vs_int8_load``: ``switch(m, "full")`` on that module, same baseline;
- ``codes_weight_mb_part_vs_fp32`` / ``_full_``: resident memory the weights add (current RSS
  after load minus current RSS of the same fresh process right before it, no forward) over the
  same figure for an FP32 module whose float32 weights are really resident: the bare module
  (its own float32 tensors, written by its initialisation) filled by copying from the FP32
  safetensors file, whose mapping is then dropped. ``load_file`` alone with ``assign=True``
  leaves tensors backed by file pages not yet touched, which undercounts the weights (resnet50:
  25 MB for 98 MB of float32); that reading is kept as ``fp32-mapped`` for the record;
- ``codes_forward_vs_float_b1`` / ``_b32``: median forward latency (``inference_mode``,
  ``cache_bytes=0``) of the codes module against the float-runtime module in the same mode,
  outputs compared bit for bit, for the models in ``FORWARD_MODELS``.

The run measurement ``fused`` adds ``fused_dequant_vs_memcpy`` (``nqformat.bench.fused_dequant``).
Each top-level key is the worst case over the cases it applies to, the median beside it in
``across_cases``.
"""

from __future__ import annotations

import gc
import json
import linecache
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nqformat.bench.baselines import load_baseline, save_fp32, states_equal
from nqformat.bench.fused_dequant import FUSED_SIZE, measure_fused
from nqformat.bench.measurement import Measurement
from nqformat.bench.models import skeleton
from nqformat.bench.process import bench_child, run_bench_child
from nqformat.bench.timing import timed

__all__ = [
    "CODES_KEYS",
    "CODES_RSS_MODES",
    "FORWARD_MODELS",
    "FUSED_MEASUREMENT",
    "MEASUREMENT",
    "codes_rss_child",
    "time_forwards",
    "time_loads",
    "write_warmup",
]

#: the configuration the codes keys are stated for (issue 10: "at INT(8|6)")
CODES_CONFIG = (8, 6)
#: models the forward keys are stated for
FORWARD_MODELS = frozenset({"resnet50", "tf_efficientnet_lite0"})
#: (warm-up, timed) rounds of the loads and of the forwards, per mode
LOAD_REPS = {"quick": (1, 5), "full": (1, 9)}
FORWARD_REPS = {"quick": (1, 5), "full": (2, 9)}
#: the fresh processes of the resident-memory figure; "fp32" is the denominator
CODES_RSS_MODES = ("fp32", "fp32-mapped", "codes-part", "codes-full", "float-part")
#: per-case keys, in the order of the issue (the fused key comes from the run measurement)
CODES_KEYS = (
    "codes_part_load_vs_int8_load",
    "codes_upgrade_vs_int8_load",
    "codes_weight_mb_part_vs_fp32",
    "codes_weight_mb_full_vs_fp32",
    "codes_forward_vs_float_b1",
    "codes_forward_vs_float_b32",
)


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def time_loads(meta: dict[str, Any], nq: Path, intn: Path, n: int, reps: tuple[int, int]) -> dict:
    """Codes part load, upgrade and downgrade against the INT-n baseline load (warm cache)."""
    import torch

    from nqformat import torch as nqt

    m_codes = skeleton(meta)
    m_base = skeleton(meta)

    def part_load() -> None:
        nqt.load(nq, "part", module=m_codes, resident="codes")

    names = ("codes_part_load", "codes_upgrade", "codes_downgrade", "intn_load")
    times: dict[str, list[float]] = {k: [] for k in names}
    warmup, count = reps
    for i in range(warmup + count):
        nqt.close(m_codes)  # untimed: the previous round's file
        for key, fn in (
            ("codes_part_load", part_load),
            ("codes_upgrade", lambda: nqt.switch(m_codes, "full")),
            ("codes_downgrade", lambda: nqt.switch(m_codes, "part")),
            ("intn_load", lambda: load_baseline(m_base, intn, n)),
        ):
            seconds, _ = timed(fn)
            if i >= warmup:
                times[key].append(seconds)
    nqt.switch(m_codes, "full")
    with torch.no_grad():
        equal = states_equal(m_codes, load_baseline(m_base, intn, n))
    nqt.close(m_codes)
    return {
        "times_s": {k: statistics.median(v) for k, v in times.items()},
        "codes_part_load_vs_int8_load": _median_ratio(times["codes_part_load"], times["intn_load"]),
        "codes_upgrade_vs_int8_load": _median_ratio(times["codes_upgrade"], times["intn_load"]),
        "baseline_equal_full": equal,
    }


def _interleaved(fns: dict[str, Callable[[], Any]], warmup: int, reps: int) -> dict[str, list]:
    """Each function once per round, in turn; returns the timed rounds' seconds."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for key, fn in fns.items():
            seconds, _ = timed(fn)
            if i >= warmup:
                out[key].append(seconds)
    return out


def time_forwards(meta: dict[str, Any], nq: Path, reps: tuple[int, int]) -> dict[str, Any]:
    """Median forward latency, codes (``cache_bytes=0``) vs float runtime, batch 1 and 32."""
    import torch

    from nqformat import torch as nqt

    out: dict[str, Any] = {}
    shape = tuple(meta["data_config"]["input_size"])
    for mode in ("part", "full"):
        codes = nqt.load(nq, mode, resident="codes", cache_bytes=0)
        flt = nqt.load(nq, mode, resident="float")
        for batch in (1, 32):
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                equal = torch.equal(codes(x), flt(x))
                t = _interleaved(
                    {"codes": lambda m=codes, x=x: m(x), "float": lambda m=flt, x=x: m(x)}, *reps
                )
            out[f"{mode}_b{batch}"] = {
                "codes_s": statistics.median(t["codes"]),
                "float_s": statistics.median(t["float"]),
                "ratio": _median_ratio(t["codes"], t["float"]),
                "outputs_equal": equal,
            }
        nqt.close(codes)
        nqt.close(flt)
        del codes, flt
        gc.collect()
    return out


# --- resident memory, each reading in a fresh process ---------------------------------------------


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _file_rss_mb() -> float:
    """Resident file-backed pages (code of the interpreter and libraries, mapped files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _warmup_module() -> Any:
    """A four-layer model (conv, norm, linear) whose files warm every load path up."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )


def write_warmup(folder: Path) -> Path:
    """The warm-up model as ``warm.nq`` (INT(8|6)) and ``warm.safetensors`` (FP32) in
    ``folder``; returns the folder."""
    from nqformat.torch import convert_model

    folder.mkdir(parents=True, exist_ok=True)
    module = _warmup_module()
    convert_model(module, folder / "warm.nq", n=CODES_CONFIG[0], h=CODES_CONFIG[1])
    save_fp32(module, folder / "warm.safetensors")
    return folder


def _warm_up(warm: Path) -> None:
    """Run each way of loading once on the warm-up model's files (every mode of
    ``CODES_RSS_MODES``, whichever is measured): the code a load runs for the first time
    is paged in (file-backed pages of the interpreter and libraries: 0.7 MB for a codes
    load, 1.8 MB for the FP32 one on Lite0) before the window opens, so that the window
    counts what the weights add. The warm-up's own tensors are a few KiB."""
    from safetensors.torch import load_file

    from nqformat import torch as nqt

    for resident in ("codes", "float"):
        for which in ("part", "full"):
            module = nqt.load(warm / "warm.nq", which, module=_warmup_module(), resident=resident)
            nqt.close(module)
    _warmup_module().load_state_dict(load_file(warm / "warm.safetensors"))
    gc.collect()


def codes_rss_child(mode: str, meta: dict[str, Any], path: str, warm: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: current RSS right before and right after building a ready
    module one way (``CODES_RSS_MODES``), then after one batch-1 forward. Every way of
    loading has first run once on the small model in ``warm`` (:func:`write_warmup`)."""
    import importlib

    import torch

    from nqformat import torch as nqt
    from nqformat.bench.rss import _ZOO_MODULES

    importlib.import_module(_ZOO_MODULES.get(meta.get("zoo", ""), "nqformat.zoo"))
    torch.set_num_threads(1)
    # Build the architecture once on the meta device (no weights): the library code that
    # construction runs for the first time is paged in here, not counted as weights.
    with torch.device("meta"):
        skeleton(meta)
    # Likewise the codes runtime's module, which load() imports on first use: compiling it
    # (no bytecode cache where PYTHONDONTWRITEBYTECODE is set, as on the bench machine) left
    # 0.25-0.65 MB of interpreter memory inside the measured window, code, not weights.
    from safetensors.torch import load_file

    import nqformat.torch.resident  # noqa: F401

    # zoo.instantiate's torch.manual_seed queues the lazy CUDA seed with a formatted stack,
    # which reads the source of every frame into linecache: the warm-up above cached this
    # module's and the zoo's, but a load's own frames (runtime.py, resident.py) would have
    # counted 0.1 MB of source text as weights (tracemalloc, Lite0)
    for name in ("nqformat.torch.runtime", "nqformat.torch.resident"):
        linecache.getlines(sys.modules[name].__file__ or "")

    _warm_up(Path(warm))
    gc.collect()
    before, before_file = _current_rss_mb(), _file_rss_mb()
    if mode == "fp32":
        # float32 weights really resident: the module's own tensors, filled by a copy
        module = skeleton(meta)
        state = load_file(path)
        module.load_state_dict(state)
        del state
    elif mode == "fp32-mapped":
        module = skeleton(meta)
        module.load_state_dict(load_file(path), assign=True)
    else:
        resident, which = mode.split("-")
        module = nqt.load(Path(path), which, resident=resident)
    gc.collect()
    after, after_file = _current_rss_mb(), _file_rss_mb()
    x = torch.zeros(1, *meta["data_config"]["input_size"])
    with torch.inference_mode():
        module(x)
    gc.collect()
    return {
        "mode": mode,
        "rss_before_mb": before,
        "weights_mb": after - before,
        "weights_file_backed_mb": after_file - before_file,
        "after_forward_b1_mb": _current_rss_mb() - before,
    }


def _measure_rss(meta: dict[str, Any], nq: Path, fp32: Path) -> dict[str, dict[str, Any]]:
    warm = write_warmup(nq.parent / "rss-warmup")
    rows = {}
    for mode in CODES_RSS_MODES:
        path = fp32 if mode.startswith("fp32") else nq
        # a forking shell gives the child its own RSS accounting (see nqformat.bench.rss)
        cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
        cmd += bench_child("_codes_rss", mode, json.dumps(meta), str(path), str(warm))
        rows[mode] = run_bench_child(cmd, f"codes RSS child {mode} {path.name}")
    return rows


# --- the measurements -----------------------------------------------------------------------------


def _measure(ctx: Any) -> dict[str, Any]:
    case, run = ctx.case, ctx.run
    if (case.n, case.h) != CODES_CONFIG:
        return {}
    mode = run.options.mode
    row: dict[str, Any] = {}
    run.progress(f"{case.label}: codes runtime loads")
    with run.phase("codes runtime loads"):
        row["load"] = time_loads(ctx.meta, ctx.nq, ctx.intn, case.n, LOAD_REPS[mode])
    run.progress(f"{case.label}: codes runtime resident memory (fresh processes)")
    with run.phase("codes runtime memory"):
        rss = _measure_rss(ctx.meta, ctx.nq, ctx.fp32)
    row["rss"] = rss
    fp32_mb = rss["fp32"]["weights_mb"]
    row["weight_mb_part_vs_fp32"] = rss["codes-part"]["weights_mb"] / fp32_mb
    row["weight_mb_full_vs_fp32"] = rss["codes-full"]["weights_mb"] / fp32_mb
    if case.model in FORWARD_MODELS:
        run.progress(f"{case.label}: codes runtime forwards")
        with run.phase("codes runtime forwards"):
            row["forward"] = time_forwards(ctx.meta, ctx.nq, FORWARD_REPS[mode])
    row["bit_identical"] = row["load"]["baseline_equal_full"] and all(
        f["outputs_equal"] for f in row.get("forward", {}).values()
    )
    return row


def _per_case(row: dict[str, Any]) -> dict[str, list[float]]:
    c = row.get("codes") or {}
    if not c:
        return {}
    out = {
        "codes_part_load_vs_int8_load": [c["load"]["codes_part_load_vs_int8_load"]],
        "codes_upgrade_vs_int8_load": [c["load"]["codes_upgrade_vs_int8_load"]],
        "codes_weight_mb_part_vs_fp32": [c["weight_mb_part_vs_fp32"]],
        "codes_weight_mb_full_vs_fp32": [c["weight_mb_full_vs_fp32"]],
    }
    for batch in (1, 32):
        values = [f["ratio"] for k, f in c.get("forward", {}).items() if k.endswith(f"_b{batch}")]
        if values:
            out[f"codes_forward_vs_float_b{batch}"] = values
    return out


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """Worst case over the cases (and modes) each key applies to; the median over the same
    values goes to ``across_cases`` and the worst case's label to ``headline_cases``."""
    top: dict[str, Any] = {}
    where = dict(result.get("headline_cases", {}))
    spread = dict(result.get("across_cases", {}))
    pooled: dict[str, list[tuple[float, str]]] = {k: [] for k in CODES_KEYS}
    identical = []
    for row in result["cases"]:
        for key, values in _per_case(row).items():
            pooled[key] += [(v, row["label"]) for v in values]
        if row.get("codes"):
            identical.append(row["codes"]["bit_identical"])
    for key, pairs in pooled.items():
        if not pairs:
            top[key] = None
            continue
        value, label = max(pairs)
        values = [v for v, _ in pairs]
        top[key] = value
        where[key] = label
        spread[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": value,
            "cases": len(values),
        }
    top["codes_bit_identical"] = all(identical) if identical else None
    top["headline_cases"] = where
    top["across_cases"] = spread
    return top


def _measure_fused(ctx: Any) -> dict[str, Any]:
    ctx.progress("fused unpack + dequantize kernel against memcpy (nqformat.bench.fused_dequant)")
    count, reps = FUSED_SIZE[ctx.options.mode]
    with ctx.phase("fused kernel"):
        return measure_fused(count=count, reps=reps)


def _fused_headline(result: dict[str, Any]) -> dict[str, Any]:
    f = result["fused"]
    spread = dict(result.get("across_cases", {}))
    spread["fused_dequant_vs_memcpy"] = {
        "median": f["fused_dequant_vs_memcpy_median"],
        "max": f["fused_dequant_vs_memcpy"],
        "cases": len(f["cases"]),
    }
    return {
        "fused_dequant_vs_memcpy": f["fused_dequant_vs_memcpy"],
        "fused_weights_per_s_min": f["fused_weights_per_s_min"],
        "across_cases": spread,
    }


#: case measurement ``codes``: the codes-resident runtime at INT(8|6) (other cases: empty)
MEASUREMENT = Measurement("codes", _measure, _headline)
#: run measurement ``fused``: the fused kernel against memcpy, worst width and mode
FUSED_MEASUREMENT = Measurement("fused", _measure_fused, _fused_headline)
