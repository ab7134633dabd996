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


def refit_part_params(
    w: np.ndarray,
    high: np.ndarray,
    fallback_scale: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float32[C] minimising Σ weights·(w - (scale*H + offset))² per row.

    ``w`` is float32 [C, L], ``high`` the integer codes [C, L], ``weights`` an optional
    non-negative [C, L] (or broadcastable) importance per element. Accumulation is in float64.
    A row whose codes are constant (no slope to fit) keeps ``fallback_scale`` and gets the offset
    that matches the (weighted) mean, so results are always finite.
    """
    hv = high.astype(np.float64)
    wv = w.astype(np.float64)
    if weights is None:
        wt = np.ones((1, 1))
        total = np.full(w.shape[0], float(w.shape[1]))
    else:
        wt = np.broadcast_to(np.asarray(weights, dtype=np.float64), w.shape)
        total = wt.sum(axis=1)
    total = np.where(total > 0, total, 1.0)
    mean_h = (wt * hv).sum(axis=1) / total
    mean_w = (wt * wv).sum(axis=1) / total
    hc = hv - mean_h[:, None]
    var = (wt * hc * hc).sum(axis=1)
    cov = (wt * hc * (wv - mean_w[:, None])).sum(axis=1)
    # var is a sum of squares of exact small integers' deviations: "> tiny" means H varies.
    slope_ok = var > 1e-9 * total
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(slope_ok, cov / np.where(slope_ok, var, 1.0), fallback_scale)
    a = np.where(np.isfinite(a), a, fallback_scale).astype(F32)
    # Offset from the float32 slope actually stored, so the fitted mean is kept after rounding.
    b = (mean_w - a.astype(np.float64) * mean_h).astype(F32)
    return a, b
