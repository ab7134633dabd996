"""Per-output-channel affine parameters of SQuant and the dequantization pairs stored in a file.

The quantizer follows the reference's ZeroQ conventions (docs/quantizer.md step 1): ``S`` is the
*inverse* step and the zero point enters with a plus sign, ``W ≈ (q + Z) / S``. The file stores
instead ``scale``/``offset`` pairs so that a reader dequantizes with one multiply and one add
(spec/nq-v1.md §7.2); this module derives both.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MIN_RANGE",
    "affine_params",
    "dequantize_codes",
    "full_params",
    "inherited_part_params",
    "to_integer_domain",
]

F32 = np.float32

#: Floor on a channel's max - min, so S stays finite for constant channels (docs/quantizer.md
#: step 1).
MIN_RANGE = F32(1e-8)


def affine_params(w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference S and Z (float32[C]) of the float32 rows ``w`` [C, -1] for n-bit codes.

    ``S = (2^n - 1) / max(mx - mn, 1e-8)`` is a true float32 division (a reciprocal-multiply is
    1 ulp off for some channels and changes rounding decisions), and
    ``Z = round_half_even(S * mn) + 2^(n-1)``, all in float32 as the reference computes them.
    """
    mx = w.max(axis=1)
    mn = w.min(axis=1)
    s = F32(2**n - 1) / np.maximum(mx - mn, MIN_RANGE)
    z = np.rint(s * mn) + F32(2 ** (n - 1))
    return s, z


def to_integer_domain(w: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``X = S*W - Z`` as two separate float32 operations (no fused multiply-add)."""
    x = w * s[:, None]
    x -= z[:, None]
    return x


def full_params(s: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-bit (scale, offset) = float32(1/S), float32(Z/S), computed in float64, rounded once."""
    s64 = s.astype(np.float64)
    return (1.0 / s64).astype(F32), (z.astype(np.float64) / s64).astype(F32)


def inherited_part_params(
    s: np.ndarray, z: np.ndarray, low_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's part-bit pair: step ``2^l / S`` and offset ``Z / S``, l = low_bits.

    This is the reference's ``S_nest = S / 2^l``, ``Z_nest = Z / 2^l`` written as scale/offset:
    ``(H + Z/2^l) / (S/2^l) = H * 2^l/S + Z/S`` (docs/quantizer.md steps 3-5).
    """
    s64 = s.astype(np.float64)
    return (float(2**low_bits) / s64).astype(F32), (z.astype(np.float64) / s64).astype(F32)


def dequantize_codes(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """spec §7.2: ``fl32(fl32(float32(code) * scale[c]) + offset[c])``, c = first index."""
    bshape = (-1,) + (1,) * (codes.ndim - 1)
    w = codes.astype(F32) * scale.astype(F32).reshape(bshape)
    w += offset.astype(F32).reshape(bshape)
    return w
