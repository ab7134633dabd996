"""NestQuant: n-bit SQuant codes split exactly into h-bit high and (l+1)-bit low codes.

``w_int = w_high * 2^l + w_low`` (l = n - h) holds exactly for every element. The full-bit model
dequantizes ``w_int``; the part-bit model dequantizes ``w_high`` alone (``w_low`` treated as 0)
with parameters of its own (research note §2.1, spec/nq-v1.md §7.2).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

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
    "NestQuantResult",
    "PartParams",
    "Rounding",
    "nest_quantize",
]

F32 = np.float32

#: Bit-width limits of spec/nq-v1.md §3.1: 2 <= n <= 8 and 1 <= h <= n - 1.
N_MIN = 2
N_MAX = 8
H_MIN = 1

#: Output channels are processed in blocks of about this many elements, so that every
#: intermediate array stays in cache (the passes are memory-bound; see docs/quantizer.md).
BLOCK_ELEMENTS = 1 << 16


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
    if not N_MIN <= n <= N_MAX:
        raise QuantizationError(f"n must be in [{N_MIN}, {N_MAX}], got {n}")
    if not H_MIN <= h <= n - 1:
        raise QuantizationError(f"h must be in [{H_MIN}, n - 1 = {n - 1}], got {h}")
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
    """w_high (float32, integer-valued) from the n-bit codes q (research note §2.1)."""
    hmin, hmax = -(2 ** (h - 1)), 2 ** (h - 1) - 1
    if rounding is Rounding.BITSHIFT:
        return np.floor(q * F32(2.0**-low_bits))
    # Clip before rounding: w_int above 2^(n-1) - 2^l all map to the top high code.
    xh = np.clip(q * F32(2.0**-low_bits), hmin, hmax)
    if rounding is Rounding.RTN:
        return np.rint(xh)
    return squant_round(xh, taps, hmin, hmax, k_stage=k_stage, c_stage=c_stage)


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
    work: invalid arguments or non-finite weights raise QuantizationError.
    """
    n, h = _check_bits(n, h)
    mode = _choice(Rounding, rounding, "rounding")
    part = _choice(PartParams, part_params, "part_params")
    if not isinstance(k_stage, bool) or not isinstance(c_stage, bool):
        raise QuantizationError(f"k_stage and c_stage must be bool, got {k_stage!r}, {c_stage!r}")
    w = _as_float32(weight)

    low_bits = n - h
    qmin, qmax = -(2 ** (n - 1)), 2 ** (n - 1) - 1
    shape = w.shape
    channels = shape[0]
    taps = math.prod(shape[2:])
    w2 = w.reshape(channels, -1)
    length = w2.shape[1]
    w_int = np.empty((channels, length), dtype=np.int8)
    w_high = np.empty_like(w_int)
    w_low = np.empty_like(w_int)
    low_min, low_max = -(2**low_bits), 2**low_bits - 1
    s = np.empty(channels, dtype=F32)
    z = np.empty(channels, dtype=F32)
    a = np.empty(channels, dtype=F32)
    b = np.empty(channels, dtype=F32)
    step = max(1, BLOCK_ELEMENTS // length)
    for lo in range(0, channels, step):
        hi = min(channels, lo + step)
        blk = w2[lo:hi]
        s_b, z_b = affine_params(blk, n)
        x = to_integer_domain(blk, s_b, z_b)
        q = squant_round(x, taps, qmin, qmax, k_stage=k_stage, c_stage=c_stage)
        hcodes = _high_codes(q, h, low_bits, taps, mode, k_stage, c_stage)
        low = q - hcodes * F32(2**low_bits)  # exact: small integers in float32
        if low.min() < low_min or low.max() > low_max:
            raise QuantizationError(
                f"internal error: low codes outside the {low_bits + 1}-bit range"
            )
        w_int[lo:hi] = q
        w_high[lo:hi] = hcodes
        w_low[lo:hi] = low
        s[lo:hi] = s_b
        z[lo:hi] = z_b
        if part is PartParams.REFIT:
            fallback, _ = inherited_part_params(s_b, z_b, low_bits)
            a[lo:hi], b[lo:hi] = refit_part_params(blk, hcodes, fallback)

    scale_full, offset_full = full_params(s, z)
    if part is PartParams.INHERITED:
        a, b = inherited_part_params(s, z, low_bits)
    arrays = {
        "w_int": w_int.reshape(shape),
        "w_high": w_high.reshape(shape),
        "w_low": w_low.reshape(shape),
        "scale": s,
        "zero_point": z,
        "scale_full": scale_full,
        "offset_full": offset_full,
        "scale_part": a,
        "offset_part": b,
    }
    for arr in arrays.values():
        arr.flags.writeable = False
    return NestQuantResult(
        n=n, h=h, l=low_bits, rounding=mode.value, part_params=part.value, **arrays
    )
