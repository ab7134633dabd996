"""Issue 10's figures for the codes-resident runtime, against baselines measured in the same run.

Per case (a model at INT(n|h)), with the method of docs/benchmarks.md (interleaved rounds,
medians after a warm-up, bit-identity checked):

- ``codes_part_load_vs_int8_load``: ``load(path, "part", module=m, resident="codes")`` against
  loading the separate INT-n safetensors model into a float module
  (``bench_resources.load_baseline``, the baseline of ``part_load_vs_int8_load``);
- ``codes_upgrade_vs_int8_load``: ``switch(m, "full")`` on that module, same baseline;
- ``codes_forward_vs_float_b1`` / ``_b32``: median forward latency (``inference_mode``,
  ``cache_bytes=0``) of the codes module against the float-runtime module in the same mode,
  outputs compared bit for bit;
- ``codes_weight_mb_part_vs_fp32`` / ``_full_``: resident memory the weights add (current RSS
  after load minus current RSS of the same fresh process right before it, no forward) over the
  same figure for the float runtime's module (float32 weights); each in a fresh process;
- ``fused_dequant_vs_memcpy``: tools/bench_fused.py.

Each key is the worst case over the cases it applies to; ``<key>_median`` is the median over
them. Timing uses one torch thread (as bench_resources: a shared 2-core machine makes OpenMP
threads wait on each other), which the fused kernel follows.

    python tools/bench_codes.py [--quick] [--json out.json] [--models resnet50,...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import bench_fused  # noqa: E402
import bench_resources as br  # noqa: E402

__all__ = ["CODES_KEYS", "CODES_TARGETS", "measure_codes"]

#: (key, limit): every key is "<=" and the worst case over the cases it covers (issue 10)
CODES_TARGETS = (
    ("codes_part_load_vs_int8_load", 0.5),
    ("codes_upgrade_vs_int8_load", 0.25),
    ("codes_weight_mb_part_vs_fp32", 0.25),
    ("codes_weight_mb_full_vs_fp32", 0.35),
    ("codes_forward_vs_float_b1", 1.3),
    ("codes_forward_vs_float_b32", 1.1),
    ("fused_dequant_vs_memcpy", 2.0),
)
CODES_KEYS = tuple(k for k, _ in CODES_TARGETS)
#: models the forward keys are stated for
FORWARD_MODELS = ("resnet50", "tf_efficientnet_lite0")
QUICK_CASES = (br.Case("tf_efficientnet_lite0", 8, 6), br.Case("resnet50", 8, 6))
FULL_CASES = (
    br.Case("tf_efficientnet_lite0", 8, 6),
    br.Case("resnet50", 8, 6),
    br.Case("resnet101", 8, 6),
)
#: (warm-up, timed) rounds for loads and for forwards, per mode
REPS = {"quick": (1, 5), "full": (1, 9)}
FORWARD_REPS = {"quick": (1, 5), "full": (2, 9)}
RSS_MODES = ("fp32", "codes-part", "codes-full", "float-part", "float-full")


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def _interleaved(fns: dict[str, Callable[[], Any]], warmup: int, reps: int) -> dict[str, list]:
    """Each function once per round, in turn; returns the timed rounds' seconds."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for key, fn in fns.items():
            seconds, _ = br.timed(fn)
            if i >= warmup:
                out[key].append(seconds)
    return out


def time_loads(case: br.Case, meta: dict, nq: Path, intn: Path, reps: tuple[int, int]) -> dict:
    """Codes part load, upgrade and downgrade against the INT-n baseline load (warm cache)."""
    import torch

    from nqformat import torch as nqt

    m_codes = br.skeleton(meta)
    m_base = br.skeleton(meta)

    def part_load() -> None:
        nqt.load(nq, "part", module=m_codes, resident="codes")

    times: dict[str, list[float]] = {"codes_part_load": [], "codes_upgrade": [], "intn_load": []}
    times["codes_downgrade"] = []
    warmup, n = reps
    for i in range(warmup + n):
        nqt.close(m_codes)  # untimed: the previous round's file
        for key, fn in (
            ("codes_part_load", part_load),
            ("codes_upgrade", lambda: nqt.switch(m_codes, "full")),
            ("codes_downgrade", lambda: nqt.switch(m_codes, "part")),
            ("intn_load", lambda: br.load_baseline(m_base, intn, case.n)),
        ):
            seconds, _ = br.timed(fn)
            if i >= warmup:
                times[key].append(seconds)
    nqt.switch(m_codes, "full")
    with torch.no_grad():
        equal = br.states_equal(m_codes, br.load_baseline(m_base, intn, case.n))
    nqt.close(m_codes)
    return {
        "times_s": {k: statistics.median(v) for k, v in times.items()},
        "codes_part_load_vs_int8_load": _median_ratio(times["codes_part_load"], times["intn_load"]),
        "codes_upgrade_vs_int8_load": _median_ratio(times["codes_upgrade"], times["intn_load"]),
        "baseline_equal_full": equal,
    }


def time_forwards(case: br.Case, meta: dict, nq: Path, reps: tuple[int, int]) -> dict:
    """Median forward latency, codes (cache_bytes=0) vs float runtime, batch 1 and 32."""
    import torch

    from nqformat import torch as nqt

    out: dict[str, Any] = {}
    shape = tuple(meta["data_config"]["input_size"])
    for mode in ("part", "full"):
        codes = nqt.load(nq, mode, resident="codes", cache_bytes=0)
        flt = nqt.load(nq, mode)
        for batch in (1, 32):
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                equal = torch.equal(codes(x), flt(x))
                t = _interleaved(
                    {
                        "codes": lambda m=codes, x=x: m(x),
                        "float": lambda m=flt, x=x: m(x),
                    },
                    *reps,
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


# --- resident memory, each in a fresh process -----------------------------------------------------


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _rss_child(mode: str, meta: dict, path: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: RSS right before and right after building a ready module."""
    import importlib

    import torch

    from nqformat import torch as nqt

    importlib.import_module(br._ZOO_MODULES.get(meta.get("zoo", ""), "nqformat.zoo"))
    torch.set_num_threads(1)
    # Construct the architecture once on the meta device (no weights): the library code that
    # construction runs for the first time is paged in here, not counted as weights.
    with torch.device("meta"):
        br.skeleton(meta)
    if mode == "fp32":
        import safetensors.torch  # noqa: F401
    gc.collect()
    before = _current_rss_mb()
    if mode == "fp32":
        from safetensors.torch import load_file

        module = br.skeleton(meta)
        module.load_state_dict(load_file(path), assign=True)
    else:
        resident, which = mode.split("-")
        module = nqt.load(Path(path), which, resident=resident)
    gc.collect()
    after = _current_rss_mb()
    x = torch.zeros(1, *meta["data_config"]["input_size"])
    with torch.inference_mode():
        module(x)
    gc.collect()
    return {
        "mode": mode,
        "rss_before_mb": before,
        "weights_mb": after - before,
        "after_forward_b1_mb": _current_rss_mb() - before,
    }


def measure_rss(meta: dict, nq: Path, fp32: Path) -> dict[str, dict]:
    rows = {}
    for mode in RSS_MODES:
        path = fp32 if mode == "fp32" else nq
        # a forking shell gives the child its own RSS accounting (see bench_resources)
        cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, __file__, "_rss", mode]
        cmd += [json.dumps(meta), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=br._child_env(), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child {mode} failed: {proc.stderr[-2000:]}")
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


# --- the whole measurement ------------------------------------------------------------------


def _worst(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return max(values), statistics.median(values)


def measure_codes(
    *,
    quick: bool = True,
    cases: tuple[br.Case, ...] | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run every codes-runtime measurement; returns the issue's keys, their medians and the
    per-case rows."""
    import torch

    mode = "quick" if quick else "full"
    cases = cases or (QUICK_CASES if quick else FULL_CASES)
    threads = torch.get_num_threads()
    torch.set_num_threads(br.TIMING_TORCH_THREADS)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nqbench-codes-") as tmp:
            work = workdir or Path(tmp)
            for case in cases:
                progress(f"{case.label}: converting")
                module, meta = br.build_model(case.model)
                nq = work / f"{case.model}-{case.n}-{case.h}.nq"
                br.convert_case(module, meta, case, nq)
                fp32 = work / f"{case.model}.fp32.safetensors"
                br.save_fp32(module, fp32)
                del module
                gc.collect()
                intn, _ = br.write_baselines(nq, work)
                progress(f"{case.label}: loads")
                row: dict[str, Any] = {"case": case.label, "model": case.model}
                row["load"] = time_loads(case, meta, nq, intn, REPS[mode])
                progress(f"{case.label}: resident memory")
                rss = measure_rss(meta, nq, fp32)
                row["rss"] = rss
                # The FP32 module is the float runtime's (float32 weights, loaded and touched):
                # safetensors' load_file can leave tensors backed by untouched mapped pages, so
                # its RSS (kept in the rows as "fp32") undercounts the weights (resnet50: 25 MB
                # for 98 MB of float32).
                float_mb = rss["float-part"]["weights_mb"]
                row["codes_weight_mb_part_vs_fp32"] = rss["codes-part"]["weights_mb"] / float_mb
                row["codes_weight_mb_full_vs_fp32"] = rss["codes-full"]["weights_mb"] / float_mb
                if case.model in FORWARD_MODELS:
                    progress(f"{case.label}: forwards")
                    row["forward"] = time_forwards(case, meta, nq, FORWARD_REPS[mode])
                rows.append(row)
            progress("fused kernel")
            fused = bench_fused.measure_fused(count=1 << 22, reps=5 if quick else 9)
    finally:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {"loadavg": os.getloadavg(), "torch_threads": 1}
    per_key: dict[str, list[float]] = {
        "codes_part_load_vs_int8_load": [r["load"]["codes_part_load_vs_int8_load"] for r in rows],
        "codes_upgrade_vs_int8_load": [r["load"]["codes_upgrade_vs_int8_load"] for r in rows],
        "codes_weight_mb_part_vs_fp32": [r["codes_weight_mb_part_vs_fp32"] for r in rows],
        "codes_weight_mb_full_vs_fp32": [r["codes_weight_mb_full_vs_fp32"] for r in rows],
    }
    for batch in (1, 32):
        per_key[f"codes_forward_vs_float_b{batch}"] = [
            r["forward"][f"{m}_b{batch}"]["ratio"]
            for r in rows
            if "forward" in r
            for m in ("part", "full")
        ]
    for key, values in per_key.items():
        result[key], result[f"{key}_median"] = _worst(values)
    result["fused_dequant_vs_memcpy"] = fused["fused_dequant_vs_memcpy"]
    result["fused_dequant_vs_memcpy_median"] = fused["fused_dequant_vs_memcpy_median"]
    result["fused_weights_per_s_min"] = fused["fused_weights_per_s_min"]
    result["codes_bit_identical"] = all(
        r["load"]["baseline_equal_full"]
        and all(f["outputs_equal"] for f in r.get("forward", {}).values())
        for r in rows
    )
    result["codes_targets"] = {
        key: {
            "limit": limit,
            "value": result[key],
            "met": None if result[key] is None else result[key] <= limit,
        }
        for key, limit in CODES_TARGETS
    }
    result["codes_cases"] = rows
    result["fused"] = fused
    return result


def render_text(res: dict[str, Any]) -> str:
    lines = [f"loadavg {tuple(round(x, 2) for x in res['loadavg'])}, torch threads 1"]
    for key, limit in CODES_TARGETS:
        v, med = res[key], res.get(f"{key}_median")
        met = res["codes_targets"][key]["met"]
        flag = "met" if met else "NOT met"
        lines.append(f"{key:32} {v:8.3f}  (median {med:.3f}; target <= {limit}: {flag})")
    lines.append(f"bit-identical: {res['codes_bit_identical']}")
    for r in res["codes_cases"]:
        rss = r["rss"]
        lines.append(
            f"{r['case']}: weights MB fp32 {rss['fp32']['weights_mb']:.1f}, codes part "
            f"{rss['codes-part']['weights_mb']:.1f} / full {rss['codes-full']['weights_mb']:.1f},"
            f" float part {rss['float-part']['weights_mb']:.1f} / full "
            f"{rss['float-full']['weights_mb']:.1f}; load {r['load']['times_s']}"
        )
        for k, f in r.get("forward", {}).items():
            lines.append(
                f"  forward {k}: codes {f['codes_s'] * 1e3:.1f} ms, float "
                f"{f['float_s'] * 1e3:.1f} ms, x{f['ratio']:.3f}, equal {f['outputs_equal']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_rss":
        print(json.dumps(_rss_child(argv[1], json.loads(argv[2]), argv[3])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", help="comma-separated models (INT(8|6)); default: the mode's")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    cases = None
    if args.models:
        cases = tuple(br.Case(m, 8, 6) for m in args.models.split(","))
    start = time.perf_counter()
    res = measure_codes(quick=args.quick, cases=cases, progress=lambda s: print(s, flush=True))
    res["seconds"] = time.perf_counter() - start
    print(render_text(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
