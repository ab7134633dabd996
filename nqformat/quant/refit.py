"""Part-bit parameters of their own: per-channel least squares on the fixed high codes.

The paper's part-bit model reuses the full-bit grid (step ``2^l/S``, offset ``Z/S``), which is
biased: the high codes are rounded from the *integer* codes, and the top of each channel's range
is clipped (docs/quantizer.md steps 3-5). With ``w_high`` fixed we instead fit ``w ≈ a*H + b``
per output channel to the FP32 weights. The integer codes never change, only the two floats per
channel.

Optionally the fit minimises the expected output error instead of the weight error: with inputs
of per-element mean ``μ`` and variance ``d`` (both broadcast over rows), the error of one output
is ``r·x`` with ``r = w - a*H - b`` and ``E[(r·x)²] = Σ d r² + (Σ μ r)²``. Plain least squares is
``d = 1, μ = 0``.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from nqformat.errors import QuantizationError

__all__ = [
    "DEFAULT_PARAMS",
    "Params",
    "activation_moments",
    "per_element_inputs",
    "refit_part_params",
]

F32 = np.float32
F64 = np.float64


class Params(StrEnum):
    """Where each quantized layer's (scale, offset) pairs come from; the codes never change.

    The choice is made per file (``nqtool convert --params``); docs/quantizer.md and
    docs/accuracy.md measure the three on real weights and photos.
    """

    #: data-free BN/LN-informed fit (nqformat.torch.graphstats): full-bit and part-bit pairs
    #: minimise the expected output error for the predicted input moments; layers without a
    #: prediction get LSQ's part-bit pair and the reference's full-bit pair
    BN = "bn"
    #: part-bit: per-channel least squares on the weights; full-bit: the reference's
    LSQ = "lsq"
    #: the paper's: full-bit 1/S, Z/S of reference SQuant; part-bit inherited (2^l/S, Z/S)
    REFERENCE = "reference"


#: the best measured choice (docs/accuracy.md)
DEFAULT_PARAMS = Params.BN


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise Σ u*v in float64 (u or v may broadcast over rows)."""
    u, v = np.broadcast_arrays(u, v)
    return np.einsum("ij,ij->i", u, v, dtype=F64)


def refit_part_params(
    w: np.ndarray,
    high: np.ndarray,
    fallback_scale: np.ndarray,
    weights: np.ndarray | None = None,
    input_mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float32[C] of the per-row fit ``w ≈ scale*H + offset``.

    ``w`` is float32 [C, L], ``high`` the integer codes [C, L] (any real dtype). Without
    ``weights``/``input_mean`` this is ordinary least squares. ``weights`` (input variance per
    element, > 0) and ``input_mean`` are [C, L] or broadcastable ([1, L]). Sums are float64
    (products of a float32 and a small integer are exact there). A row whose codes are constant
    has no slope to fit: it keeps ``fallback_scale`` and gets the offset that is optimal for it
    (the mean, without weights), so results are always finite.
    """
    rows = w.shape[0]
    if weights is None:
        g22 = np.full(rows, float(w.shape[1]))
        g12 = high.sum(axis=1, dtype=F64)
        g11 = _dot(high, high)
        r1 = _dot(w, high)
        r2 = w.sum(axis=1, dtype=F64)
    else:
        d = np.asarray(weights, dtype=F64)
        dh = d * high
        g22 = np.broadcast_to(d, w.shape).sum(axis=1)
        g12 = np.broadcast_to(dh, w.shape).sum(axis=1)
        g11 = _dot(dh, high)
        r1 = _dot(dh, w)
        r2 = _dot(d, w)
    if input_mean is not None:
        mu = np.asarray(input_mean, dtype=F64)
        mu_h, mu_1, mu_w = _dot(mu, high), np.broadcast_to(mu, w.shape).sum(axis=1), _dot(mu, w)
        g11 = g11 + mu_h * mu_h
        g12 = g12 + mu_h * mu_1
        g22 = g22 + mu_1 * mu_1
        r1 = r1 + mu_h * mu_w
        r2 = r2 + mu_1 * mu_w
    # Normal equations of the 2x2 problem; det is n² times the variance of H when unweighted
    # (an exact integer then), so "det > 0" means H varies.
    det = g11 * g22 - g12 * g12
    slope_ok = (high.max(axis=1) > high.min(axis=1)) & (det > 1e-12 * g11 * g22) & (g22 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(slope_ok, (r1 * g22 - r2 * g12) / np.where(slope_ok, det, 1.0), 0.0)
    a = np.where(slope_ok & np.isfinite(a), a, fallback_scale).astype(F32)
    # Offset from the float32 slope actually stored, so the fit survives the slope's rounding.
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (r2 - a.astype(F64) * g12) / g22
    b = np.where(np.isfinite(b), b, 0.0).astype(F32)
    return a, b


def activation_moments(
    mean: np.ndarray, std: np.ndarray, lo: float = -np.inf, hi: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (float64) of ``clip(z, lo, hi)`` for ``z ~ N(mean, std²)`` per channel.

    The data-free model of a BatchNorm output (``mean = beta``, ``std = |gamma|``) followed by
    ReLU (``lo = 0``), ReLU6 (``lo = 0, hi = 6``) or nothing. Quadrature on a
    fixed grid of ±8 standard deviations: exact for ``std = 0``, accurate to ~1e-6 otherwise.
    """
    t = np.linspace(-8.0, 8.0, _QUAD_POINTS)
    p = np.exp(-0.5 * t * t)
    p /= p.sum()
    m = np.asarray(mean, dtype=F64).reshape(-1, 1)
    s = np.abs(np.asarray(std, dtype=F64)).reshape(-1, 1)
    x = np.clip(m + s * t, lo, hi)
    m1 = x @ p
    return m1, np.maximum((x * x) @ p - m1 * m1, 0.0)


_QUAD_POINTS = 1601


def per_element_inputs(
    weight_shape: tuple[int, ...], groups: int, per_channel: np.ndarray
) -> np.ndarray:
    """Spread a per-input-channel value over the rows [O, I/groups * taps] of a weight.

    Element (o, i, tap) of a grouped conv reads input channel ``(o // (O/groups)) * I_g + i``.
    """
    out_ch, in_g = weight_shape[0], weight_shape[1]
    taps = int(np.prod(weight_shape[2:], dtype=np.int64))
    if groups < 1 or out_ch % groups:
        raise QuantizationError(f"groups={groups} does not divide {out_ch} output channels")
    chan = (np.arange(out_ch)[:, None] // (out_ch // groups)) * in_g + np.arange(in_g)[None, :]
    if chan.max() >= len(per_channel):
        raise QuantizationError(f"need {chan.max() + 1} input channels, got {len(per_channel)}")
    return np.asarray(per_channel, dtype=F64)[np.repeat(chan, taps, axis=1)]
