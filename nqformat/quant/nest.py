"""NestQuant: n-bit SQuant codes split exactly into h-bit high and (l+1)-bit low codes.

``w_int = w_high * 2^l + w_low`` (l = n - h) holds exactly for every element. The full-bit model
dequantizes ``w_int``; the part-bit model dequantizes ``w_high`` alone (``w_low`` treated as 0)
with parameters of its own (docs/quantizer.md steps 3-5, spec/nq-v1.md §7.2).
"""

from __future__ import annotations

import math
import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from nqformat._workers import shared_pool
from nqformat.container import spec
from nqformat.errors import QuantizationError
from nqformat.quant.affine import (
    affine_params,
    dequantize_codes,
    full_params,
    inherited_part_params,
    to_integer_domain,
)
from nqformat.quant.refit import refit_part_params
from nqformat.quant.squant import squant_round

__all__ = [
    "H_MIN",
    "N_MAX",
    "N_MIN",
    "QUANTIZER_VERSION",
    "NestLevelsResult",
    "NestQuantResult",
    "PartParams",
    "Rounding",
    "StageTimes",
    "check_widths",
    "nest_levels",
    "nest_quantize",
    "nest_quantize_timed",
]

F32 = np.float32

#: Version of the numerics (META ``quant.quantizer_version``, spec/metadata.md). Bump it when
#: the codes or parameters produced for the same input change.
QUANTIZER_VERSION = 1

#: Bit-width limits of spec/nq-v1.md §3.1 (defined once, in the container's spec module).
N_MIN = spec.MIN_N
N_MAX = spec.MAX_N
H_MIN = spec.MIN_H

#: Output channels are processed in blocks of about this many elements, so that every
#: intermediate array stays in cache (the passes are memory-bound; see docs/quantizer.md).
BLOCK_ELEMENTS = 1 << 16

#: Worker threads for blocks of output channels (numpy releases the GIL inside array loops).
THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

CODE_FIELDS = ("w_int", "w_high", "w_low")


class Rounding(StrEnum):
    """How w_high is derived from w_int."""

    SQUANT = "squant"  # SQuant (K+C) on clamp(w_int / 2^l): the reference with --adaround
    RTN = "rtn"  # round half to even of clamp(w_int / 2^l): the reference's intended default
    BITSHIFT = "bitshift"  # floor(w_int / 2^l): the paper's Table 6 baseline


class PartParams(StrEnum):
    """Where the part-bit (scale, offset) come from."""

    REFIT = "refit"  # per-channel least squares of w ≈ a*H + b on the FP32 weights
    INHERITED = "inherited"  # the paper's: step 2^l/S, offset Z/S


class DequantMode(StrEnum):
    FULL = "full"
    PART = "part"


@dataclass(frozen=True, eq=False)
class NestQuantResult:
    """Codes and per-output-channel parameters of one nested weight (arrays are read-only)."""

    n: int
    h: int
    l: int  # noqa: E741 (the paper's name, fixed by docs/ARCHITECTURE.md)
    rounding: str
    part_params: str
    w_int: np.ndarray  # int8, the weight's shape, in [-2^(n-1), 2^(n-1) - 1]
    w_high: np.ndarray  # int8, in [-2^(h-1), 2^(h-1) - 1]
    w_low: np.ndarray  # int8, in [-2^l, 2^l - 1]
    scale: np.ndarray  # float32[C]: the reference S (an inverse step)
    zero_point: np.ndarray  # float32[C]: the reference Z (W ≈ (q + Z) / S)
    scale_full: np.ndarray  # float32[C]
    offset_full: np.ndarray  # float32[C]
    scale_part: np.ndarray  # float32[C]
    offset_part: np.ndarray  # float32[C]

    def dequantize(self, mode: str = "full") -> np.ndarray:
        """float32 weights of the full-bit or part-bit model, with spec §7.2 arithmetic."""
        try:
            which = DequantMode(mode)
        except ValueError:
            raise QuantizationError(
                f"dequantize mode must be 'full' or 'part', got {mode!r}"
            ) from None
        if which is DequantMode.FULL:
            return dequantize_codes(self.w_int, self.scale_full, self.offset_full)
        return dequantize_codes(self.w_high, self.scale_part, self.offset_part)


def _check_bits(n: Any, h: Any) -> tuple[int, int]:
    if isinstance(n, bool) or isinstance(h, bool):
        raise QuantizationError(f"bit widths must be integers, got n={n!r}, h={h!r}")
    try:
        n, h = operator.index(n), operator.index(h)
    except TypeError:
        raise QuantizationError(f"bit widths must be integers, got n={n!r}, h={h!r}") from None
    if not spec.bits_valid(n, h):
        raise QuantizationError(f"need {spec.BITS_RULE}, got n={n}, h={h}")
    return n, h


def _choice(enum: type[StrEnum], value: Any, field: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise QuantizationError(f"{field} must be one of {allowed}, got {value!r}") from None


def _as_float32(weight: Any) -> np.ndarray:
    """A C-contiguous float32 copy-or-view of a numpy array or torch tensor (no torch import)."""
    if type(weight).__module__.partition(".")[0] == "torch" and hasattr(weight, "detach"):
        weight = weight.detach().cpu().float().numpy()
    arr = np.asarray(weight)
    if arr.dtype.kind not in "fiu":
        raise QuantizationError(f"weight must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise QuantizationError(
            f"weight must have shape [O, I, ...] (2 or more dims), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise QuantizationError(f"weight is empty, shape {arr.shape}")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        arr = np.ascontiguousarray(arr, dtype=F32)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise QuantizationError(f"weight has {bad} non-finite value(s) (NaN/inf, or overflow)")
    return arr


def _high_codes(
    q: np.ndarray,
    h: int,
    low_bits: int,
    taps: int,
    rounding: Rounding,
    k_stage: bool,
    c_stage: bool,
) -> np.ndarray:
    """w_high (float32, integer-valued) from the n-bit codes q (docs/quantizer.md steps 3-5)."""
    hmin, hmax = spec.code_range(h)
    if rounding is Rounding.BITSHIFT:
        return np.floor(q * F32(2.0**-low_bits))
    # Clip before rounding: w_int above 2^(n-1) - 2^l all map to the top high code.
    xh = np.clip(q * F32(2.0**-low_bits), hmin, hmax)
    if rounding is Rounding.RTN:
        return np.rint(xh)
    return squant_round(xh, taps, hmin, hmax, k_stage=k_stage, c_stage=c_stage)


class StageTimes:
    """Seconds spent per stage of :func:`nest_quantize`, accumulated over calls (benchmarks).

    ``cpu`` is per-thread CPU time summed over worker threads; ``wall`` sums each thread's
    elapsed time per stage, so with several threads it can exceed the elapsed total.
    """

    STAGES = ("affine", "round_int", "round_high", "refit")

    def __init__(self) -> None:
        self.wall = dict.fromkeys(self.STAGES, 0.0)
        self.cpu = dict.fromkeys(self.STAGES, 0.0)
        self._lock = threading.Lock()
        self._local = threading.local()

    def start(self) -> None:
        self._local.mark = (time.perf_counter(), time.thread_time())

    def lap(self, stage: str) -> None:
        now = (time.perf_counter(), time.thread_time())
        then = self._local.mark
        with self._lock:
            self.wall[stage] += now[0] - then[0]
            self.cpu[stage] += now[1] - then[1]
        self._local.mark = now


class _NoTimes(StageTimes):
    def start(self) -> None:
        pass

    def lap(self, stage: str) -> None:
        pass


def nest_quantize(
    weight: Any,
    n: int,
    h: int,
    *,
    rounding: str = "squant",
    k_stage: bool = True,
    c_stage: bool = True,
    part_params: str = "refit",
) -> NestQuantResult:
    """Quantize a Conv/Linear weight [O, I, *kernel] to nested n|h-bit codes.

    ``k_stage``/``c_stage`` switch SQuant's kernel and channel stages for both the n-bit codes
    and (with ``rounding="squant"``) the high codes; both off is RTN. All checks run before any
    work: invalid arguments or non-finite weights raise QuantizationError. Output channels are
    independent, so blocks of them run on up to ``THREADS`` threads; results do not depend on it.
    """
    return nest_quantize_timed(
        weight,
        n,
        h,
        rounding=rounding,
        k_stage=k_stage,
        c_stage=c_stage,
        part_params=part_params,
        times=None,
    )


@dataclass(frozen=True)
class _Job:
    """Everything one block of output channels needs (shared, read-only) and where it writes."""

    w2: np.ndarray
    n: int
    h: int
    taps: int
    rounding: Rounding
    k_stage: bool
    c_stage: bool
    part: PartParams
    out: dict[str, np.ndarray]
    clock: StageTimes


def _run_block(job: _Job, lo: int, hi: int) -> None:
    n, h, out, clock = job.n, job.h, job.out, job.clock
    low_bits = n - h
    blk = job.w2[lo:hi]
    clock.start()
    s_b, z_b = affine_params(blk, n)
    x = to_integer_domain(blk, s_b, z_b)
    clock.lap("affine")
    q = squant_round(x, job.taps, *spec.code_range(n), k_stage=job.k_stage, c_stage=job.c_stage)
    clock.lap("round_int")
    hcodes = _high_codes(q, h, low_bits, job.taps, job.rounding, job.k_stage, job.c_stage)
    low = q - hcodes * F32(2**low_bits)  # exact: small integers in float32
    lmin, lmax = spec.code_range(low_bits + 1)
    if low.min() < lmin or low.max() > lmax:
        raise QuantizationError(f"internal error: low codes outside the {low_bits + 1}-bit range")
    out["w_int"][lo:hi] = q
    out["w_high"][lo:hi] = hcodes
    out["w_low"][lo:hi] = low
    out["scale"][lo:hi] = s_b
    out["zero_point"][lo:hi] = z_b
    clock.lap("round_high")
    if job.part is PartParams.REFIT:
        fallback, _ = inherited_part_params(s_b, z_b, low_bits)
        out["scale_part"][lo:hi], out["offset_part"][lo:hi] = refit_part_params(
            blk, hcodes, fallback
        )
        clock.lap("refit")


def _pool() -> ThreadPoolExecutor:
    """The quantizer's worker pool (recreated in a forked child: see nqformat._workers)."""
    return shared_pool("quant", THREADS)


def nest_quantize_timed(
    weight: Any,
    n: int,
    h: int,
    *,
    rounding: str = "squant",
    k_stage: bool = True,
    c_stage: bool = True,
    part_params: str = "refit",
    times: StageTimes | None,
) -> NestQuantResult:
    """:func:`nest_quantize` that also adds its per-stage times to ``times`` (if given)."""
    n, h = _check_bits(n, h)
    mode = _choice(Rounding, rounding, "rounding")
    part = _choice(PartParams, part_params, "part_params")
    if not isinstance(k_stage, bool) or not isinstance(c_stage, bool):
        raise QuantizationError(f"k_stage and c_stage must be bool, got {k_stage!r}, {c_stage!r}")
    w = _as_float32(weight)

    low_bits = n - h
    shape = w.shape
    channels = shape[0]
    w2 = w.reshape(channels, -1)
    length = w2.shape[1]
    out = {name: np.empty((channels, length), dtype=np.int8) for name in CODE_FIELDS}
    for name in ("scale", "zero_point", "scale_part", "offset_part"):
        out[name] = np.empty(channels, dtype=F32)
    job = _Job(
        w2=w2,
        n=n,
        h=h,
        taps=math.prod(shape[2:]),
        rounding=mode,
        k_stage=k_stage,
        c_stage=c_stage,
        part=part,
        out=out,
        clock=times if times is not None else _NoTimes(),
    )
    step = max(1, BLOCK_ELEMENTS // length)
    blocks = [(lo, min(channels, lo + step)) for lo in range(0, channels, step)]
    if THREADS > 1 and len(blocks) > 1:
        for fut in [_pool().submit(_run_block, job, lo, hi) for lo, hi in blocks]:
            fut.result()  # re-raises a worker's exception
    else:
        for lo, hi in blocks:
            _run_block(job, lo, hi)

    s, z = out["scale"], out["zero_point"]
    out["scale_full"], out["offset_full"] = full_params(s, z)
    if part is PartParams.INHERITED:
        out["scale_part"], out["offset_part"] = inherited_part_params(s, z, low_bits)
    for name in CODE_FIELDS:
        out[name] = out[name].reshape(shape)
    for arr in out.values():
        arr.flags.writeable = False
    return NestQuantResult(n=n, h=h, l=low_bits, rounding=mode.value, part_params=part.value, **out)


# --- several nested levels (spec §14) -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NestLevelsResult:
    """Codes and parameters of one weight nested at several widths (spec §14); level 0 is the
    coarsest. ``codes[j]`` is q_j (int8, the weight's shape, ``widths[j]`` bits),
    ``residuals[j - 1]`` is L_j = q_j - q_(j-1) * 2^(w_j - w_(j-1)) for j >= 1, and ``scales[j]``,
    ``offsets[j]`` are level j's float32[C] pair. ``top`` is the two-level result the finest
    two levels come from (its reference S and Z are the whole weight's)."""

    widths: tuple[int, ...]
    codes: tuple[np.ndarray, ...]
    residuals: tuple[np.ndarray, ...]
    scales: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]
    top: NestQuantResult

    def dequantize(self, level: int) -> np.ndarray:
        """float32 weights of level ``level`` (0 = coarsest), with spec §7.2 arithmetic."""
        if not 0 <= level < len(self.widths):
            raise QuantizationError(f"level must be in 0..{len(self.widths) - 1}, got {level}")
        return dequantize_codes(self.codes[level], self.scales[level], self.offsets[level])


def check_widths(widths: Any) -> tuple[int, ...]:
    """The level widths, coarsest first (given in any order), checked against spec §14.1:
    at least two, at most ``MAX_LEVELS``, distinct, each a valid n|h pair with the next."""
    try:
        values = sorted(operator.index(w) for w in widths if not isinstance(w, bool))
    except TypeError:
        raise QuantizationError(f"widths must be integers, got {widths!r}") from None
    if len(values) != len(list(widths)) or len(set(values)) != len(values):
        raise QuantizationError(f"widths must be distinct integers, got {widths!r}")
    if not 2 <= len(values) <= spec.MAX_LEVELS:
        raise QuantizationError(f"need 2 to {spec.MAX_LEVELS} widths, got {widths!r}")
    if not spec.bits_valid(values[-1], values[0]):
        raise QuantizationError(f"need {spec.BITS_RULE} for n, h = {values[-1]}, {values[0]}")
    return tuple(values)


def nest_levels(
    weight: Any,
    widths: Any,
    *,
    rounding: str = "squant",
    k_stage: bool = True,
    c_stage: bool = True,
    part_params: str = "refit",
) -> NestLevelsResult:
    """Quantize a weight to codes nested at every width of ``widths`` (spec §14).

    The finest two widths are exactly :func:`nest_quantize` (n | w_(m-2)); each coarser code is
    then nested into the next narrower width by the same second rounding, from its finer code
    alone: q_(j-1) = round(q_j / 2^d_j) with the high-code rounding of ``rounding``, and
    L_j = q_j - q_(j-1) * 2^d_j exactly. Every level below the finest gets its own pair as the
    part-bit pair is fitted (``refit``: least squares on the weights; ``inherited``: step
    2^(n - w_j) / S, offset Z / S)."""
    levels = check_widths(widths)
    n = levels[-1]
    top = nest_quantize(
        weight,
        n,
        levels[-2],
        rounding=rounding,
        k_stage=k_stage,
        c_stage=c_stage,
        part_params=part_params,
    )
    mode = Rounding(top.rounding)
    part = PartParams(top.part_params)
    shape = top.w_int.shape
    rows = shape[0]
    taps = math.prod(shape[2:])
    w2 = _as_float32(weight).reshape(rows, -1)
    codes = [top.w_int, top.w_high]
    residuals = [top.w_low]
    scales = [top.scale_full, top.scale_part]
    offsets = [top.offset_full, top.offset_part]
    for j in range(len(levels) - 2, 0, -1):  # split q_j into q_(j-1) and L_j
        width, coarser = levels[j], levels[j - 1]
        d = width - coarser
        finer = codes[-1].reshape(rows, -1).astype(F32)
        high = _high_codes(finer, coarser, d, taps, mode, k_stage, c_stage)
        low = finer - high * F32(2**d)  # exact: small integers in float32
        lmin, lmax = spec.code_range(d + 1)
        if low.min() < lmin or low.max() > lmax:
            raise QuantizationError(f"internal error: level residual outside {d + 1} bits")
        inherited = inherited_part_params(top.scale, top.zero_point, n - coarser)
        pair = refit_part_params(w2, high, inherited[0]) if part is PartParams.REFIT else inherited
        codes.append(high.astype(np.int8).reshape(shape))
        residuals.append(low.astype(np.int8).reshape(shape))
        scales.append(pair[0].astype(F32))
        offsets.append(pair[1].astype(F32))
    for arr in (*codes, *residuals, *scales, *offsets):
        arr.flags.writeable = False
    return NestLevelsResult(
        widths=levels,
        codes=tuple(reversed(codes)),
        residuals=tuple(reversed(residuals)),
        scales=tuple(reversed(scales)),
        offsets=tuple(reversed(offsets)),
        top=top,
    )
