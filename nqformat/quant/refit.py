"""Part-bit parameters of their own: per-channel least squares on the fixed high codes.

The paper's part-bit model reuses the full-bit grid (step ``2^l/S``, offset ``Z/S``), which is
biased: the high codes are rounded from the *integer* codes, and the top of each channel's range
is clipped (research note §2.1). With ``w_high`` fixed we instead fit ``w ≈ a*H + b`` per output
channel to the FP32 weights. The integer codes never change, only the two floats per channel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["refit_part_params"]

F32 = np.float32
F64 = np.float64


def refit_part_params(
    w: np.ndarray,
    high: np.ndarray,
    fallback_scale: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float32[C] minimising Σ weights·(w - (scale*H + offset))² per row.

    ``w`` is float32 [C, L], ``high`` the integer codes [C, L] (any real dtype), ``weights`` an
    optional non-negative importance per element ([C, L] or broadcastable). Sums are float64
    (products of a float32 and a small integer are exact there). A row whose codes are constant
    has no slope to fit: it keeps ``fallback_scale`` and gets the offset that matches the
    (weighted) mean, so results are always finite.
    """
    if weights is None:
        total = np.full(w.shape[0], float(w.shape[1]))
        s_h = high.sum(axis=1, dtype=F64)
        s_hh = np.einsum("ij,ij->i", high, high, dtype=F64)
        s_w = w.sum(axis=1, dtype=F64)
        s_wh = np.einsum("ij,ij->i", w, high, dtype=F64)
    else:
        wt = np.broadcast_to(np.asarray(weights, dtype=F64), w.shape)
        total = wt.sum(axis=1)
        s_h = np.einsum("ij,ij->i", wt, high, dtype=F64)
        s_hh = np.einsum("ij,ij,ij->i", wt, high, high, dtype=F64)
        s_w = np.einsum("ij,ij->i", wt, w, dtype=F64)
        s_wh = np.einsum("ij,ij,ij->i", wt, w, high, dtype=F64)
    # n² times the (weighted) variance of H and covariance of H and w.
    var = total * s_hh - s_h * s_h
    cov = total * s_wh - s_h * s_w
    slope_ok = (high.max(axis=1) > high.min(axis=1)) & (var > 0) & (total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(slope_ok, cov / np.where(slope_ok, var, 1.0), fallback_scale)
    a = np.where(np.isfinite(a), a, fallback_scale).astype(F32)
    # Offset from the float32 slope actually stored, so the fitted mean survives its rounding.
    safe_total = np.where(total > 0, total, 1.0)
    b = ((s_w - a.astype(F64) * s_h) / safe_total).astype(F32)
    return a, b
