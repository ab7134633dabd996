"""Load and switch timings of one case: the ``.nq`` runtime against the safetensors baselines.

Every time is a ratio of medians (after warm-up runs) to a baseline timed in the same loop,
interleaved. Times are taken *cold* (the file's pages evicted right before each timed step,
verified with ``mincore``) and *warm* (the file cached).
"""

from __future__ import annotations

import cProfile
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nqformat.bench.baselines import load_baseline, states_equal
from nqformat.bench.cases import Case, Progress, noop
from nqformat.bench.measurement import Measurement
from nqformat.bench.models import skeleton
from nqformat.bench.pagecache import evict, resident_fraction
from nqformat.bench.timing import Timing, profile_rows, ratio, timed

__all__ = ["MEASUREMENT", "CaseFiles", "profile_switch", "time_case"]


@dataclass
class _Samples:
    by_key: dict[str, list[float]] = field(default_factory=dict)
    resident: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.by_key.setdefault(key, []).append(seconds)

    def timing(self, key: str) -> Timing:
        return Timing(tuple(self.by_key[key]))


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case and the byte ranges each timed step needs."""

    nq: Path
    intn: Path
    inth: Path
    part_end: int
    low_span: tuple[int, int]

    @classmethod
    def of(cls, nq: Path, intn: Path, inth: Path) -> CaseFiles:
        import nqformat
        from nqformat.report import section_name

        with nqformat.open(nq) as f:
            low = next(s for s in f.sections() if section_name(s) == "LOW")
            return cls(nq, intn, inth, f.part_end, (int(low.offset), int(low.offset + low.length)))


def _switch_bytes(report: Any) -> dict[str, Any]:
    """The bytes a ``SwitchReport`` says it moved, whatever its field names."""
    out: dict[str, Any] = {}
    for key in ("bytes_paged_in", "bytes_paged_out", "bytes_in", "bytes_out", "bytes", "seconds"):
        if hasattr(report, key):
            out[key] = getattr(report, key)
    return out


def _one_pass(
    case: Case,
    files: CaseFiles,
    m_nq: Any,
    m_base: Any,
    acc: _Samples,
    *,
    evict_method: str | None,
    keep: bool,
) -> dict[str, Any]:
    """One timed round: part load, upgrade, downgrade from the ``.nq`` file, then both
    baseline loads. Cold (``evict_method`` set): each file is evicted from the page cache right
    before its step, and the residency of the bytes the step needs is recorded."""
    from nqformat import torch as nqtorch

    def step(key: str, path: Path, fn: Callable[[], Any], span: tuple[int, int | None]) -> Any:
        if evict_method is not None:
            evict(path, evict_method)
            left = resident_fraction(path, *span)
            if left is not None:
                acc.resident.setdefault(key, []).append(left)
        seconds, out = timed(fn)
        if keep:
            acc.add(key, seconds)
        return out

    nq = files.nq
    whole = (0, None)
    # A fresh load: drop the previous load's file handle (and its mappings) untimed.
    nqtorch.close(m_nq)
    step(
        "nq_part_load",
        nq,
        lambda: nqtorch.load(nq, "part", module=m_nq, resident="float"),
        (0, files.part_end),
    )
    up = step("nq_upgrade", nq, lambda: nqtorch.switch(m_nq, "full"), files.low_span)
    # downgrade reads DATA and HIGH, which this process still maps from the part load
    down = step("nq_downgrade", nq, lambda: nqtorch.switch(m_nq, "part"), (0, files.part_end))
    step("intn_load", files.intn, lambda: load_baseline(m_base, files.intn, case.n), whole)
    step("inth_load", files.inth, lambda: load_baseline(m_base, files.inth, case.h), whole)
    return {"upgrade": _switch_bytes(up), "downgrade": _switch_bytes(down)}


def time_case(
    case: Case,
    model_meta: dict[str, Any],
    files: CaseFiles,
    *,
    warmup: int,
    reps: int,
    evict_method: str | None,
    warm: bool = True,
    progress: Progress = noop,
) -> dict[str, Any]:
    """Interleaved load/switch timings of the ``.nq`` runtime against the two baselines, cold
    (when eviction works here) and warm (unless ``warm`` is False), in alternating rounds."""
    from nqformat import torch as nqtorch

    m_nq = skeleton(model_meta)
    m_base = skeleton(model_meta)
    methods: dict[str, str | None] = {"cold": evict_method} if evict_method else {}
    if warm or not methods:
        methods["warm"] = None
    samples = {s: _Samples() for s in methods}
    switch_reports: dict[str, Any] = {}
    for i in range(warmup + reps):
        for state, method in methods.items():
            switch_reports = _one_pass(
                case, files, m_nq, m_base, samples[state], evict_method=method, keep=i >= warmup
            )
        progress(f"  {case.label}: round {i + 1}/{warmup + reps}")

    resident = nqtorch.runtime(m_nq).resident  # "float": these keys' meaning since v0.1
    # The comparison is only fair if both sides produce the same module.
    nqtorch.switch(m_nq, "full")
    load_baseline(m_base, files.intn, case.n)
    equal_full = states_equal(m_nq, m_base)
    nqtorch.switch(m_nq, "part")
    load_baseline(m_base, files.inth, case.h)
    equal_part = states_equal(m_nq, m_base)
    nqtorch.close(m_nq)

    out: dict[str, Any] = {
        "baseline_equal_full": equal_full,
        "baseline_equal_part": equal_part,
        "switch_report": switch_reports,
        "resident": resident,
    }
    for state, acc in samples.items():
        t = {k: acc.timing(k) for k in acc.by_key}
        out[state] = {
            "times": {k: v.to_dict() for k, v in t.items()},
            "part_load_vs_intn_load": ratio(t["nq_part_load"], t["intn_load"]),
            "upgrade_vs_intn_load": ratio(t["nq_upgrade"], t["intn_load"]),
            "downgrade_vs_inth_load": ratio(t["nq_downgrade"], t["inth_load"]),
        }
        if acc.resident:
            # residency of the bytes each step reads, right before it (after eviction)
            out[state]["max_resident_before_step"] = {k: max(v) for k, v in acc.resident.items()}
    del m_nq, m_base
    gc.collect()
    return out


def profile_switch(case: Case, meta: dict[str, Any], files: CaseFiles, top: int = 10) -> dict:
    """cProfile of one part load, one upgrade and one INT-n baseline load (warm cache), to show
    which step dominates each."""
    from nqformat import torch as nqtorch

    m_nq, m_base = skeleton(meta), skeleton(meta)
    nqtorch.load(files.nq, "part", module=m_nq, resident="float")  # warm-up
    nqtorch.switch(m_nq, "full")
    load_baseline(m_base, files.intn, case.n)
    nqtorch.switch(m_nq, "part")
    nqtorch.close(m_nq)
    out: dict[str, Any] = {"case": case.label}
    steps = (
        ("part_load", lambda: nqtorch.load(files.nq, "part", module=m_nq, resident="float")),
        ("upgrade", lambda: nqtorch.switch(m_nq, "full")),
        ("intn_load", lambda: load_baseline(m_base, files.intn, case.n)),
    )
    for name, fn in steps:
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out[name] = profile_rows(prof, top)["top_by_tottime"]
    nqtorch.close(m_nq)
    return out


def _measure(ctx: Any) -> dict[str, Any]:
    run, case = ctx.run, ctx.case
    files = CaseFiles.of(ctx.nq, ctx.intn, ctx.inth)
    run.progress(f"{case.label}: timing loads and switches")
    with run.phase("load and switch timings"):
        timings = time_case(
            case,
            ctx.meta,
            files,
            warmup=run.reps[0],
            reps=run.reps[1],
            evict_method=run.page_cache["method"],
            warm=not run.quick,
            progress=run.progress,
        )
    if not run.quick and case == run.reference:
        with run.phase("switch profile"):
            timings["profile"] = profile_switch(case, ctx.meta, files)
    return timings


#: case measurement ``timings``: cold and warm loads and switches against the baselines
MEASUREMENT = Measurement("timings", _measure)
