"""SQuant adaptive rounding (E, K and C stages), vectorised and bit-exact with the reference.

Terminology follows docs/quantizer.md step 2. Every element starts at round-half-to-even; the K
stage then flips, in each kernel (the kh*kw taps of one input channel), the ``round(|Σ error|)``
cheapest elements toward the other integer neighbour, and the C stage does the same over each
output channel. Candidates, priorities and flip targets always refer to the *original* rounding.

Orders are "stable descending": higher priority first, equal priorities by ascending index. We
realise that with unique int64 keys ``priority_bits << b | (L - 1 - index)`` (priorities are
non-negative float32, whose bit patterns order like the values), so any sort is stable.

Row sums of errors are taken in float64. The reference sums float32 in torch's order; both agree
on every public vector, and float64 makes the result independent of summation order and platform
(the nest pass, where decisions are most sensitive, has exact dyadic sums either way).

Speed (see docs/quantizer.md): the K stage works "kernel-major", on the transposed [taps, kernels]
array, so every per-kernel quantity is a long vector and the per-kernel sort is a fixed sorting
network of element-wise min/max. The C stage after a K stage sees at most one non-zero priority
per kernel (the K stage's boundary element), so it sorts one candidate per kernel instead of whole
channels; the rare row that needs more flips than it has candidates continues with zero-priority
elements in index order, exactly as a full sort would.
"""

from __future__ import annotations

import functools

import numpy as np

from nqformat.errors import QuantizationError

__all__ = ["round_half_even", "sorting_network", "squant_round"]

F32 = np.float32
_ABSENT = np.int64(-1)  # key of "no candidate": below every real key (real keys are >= 0)
_NEVER = np.iinfo(np.int64).max  # threshold that no key reaches (k = 0: flip nothing)


def round_half_even(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties to even (SQuant-E / RTN), as torch.round does."""
    return np.rint(x)


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for n inputs."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sort_axis0(key: np.ndarray) -> np.ndarray:
    """key sorted ascending along axis 0 (one sorting network applied to all columns at once),
    with one extra last row of ``_NEVER`` so that "the 0-th largest" is a threshold no key meets.
    """
    rows = list(key)
    for i, j in sorting_network(len(rows)):
        a, b = rows[i], rows[j]
        rows[i] = np.minimum(a, b)
        rows[j] = np.maximum(a, b)
    rows.append(np.full(key.shape[1], _NEVER))
    return np.stack(rows)


def _index_bits(length: int) -> int:
    return max(1, (length - 1).bit_length())


def _decide(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: go up (Σ < 0; Σ == 0 goes down), k = round(|Σ|) and whether k >= |Σ| (over)."""
    up = s < 0
    a = np.abs(s)
    k = np.rint(a)
    return up, k.astype(np.int64), k >= a


def _candidates(
    x: np.ndarray, e: np.ndarray, sign: np.ndarray, lim: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Priorities in the row's direction (as ``t``) and the mask of elements that may flip.

    ``sign`` is -1 for rows going up, +1 for rows going down (broadcast over the rows), so
    ``t = sign*e > 0`` exactly for errors of the flippable sign; the element also needs room to
    move, X < tmax going up (``-x > -tmax``) and X > tmin going down, i.e. ``sign*x > lim``.
    """
    t = e * sign
    cand = (x * sign) > lim
    cand &= t > 0
    return t, cand


def _keys(t: np.ndarray, cand: np.ndarray, rev: np.ndarray, bits: int) -> np.ndarray:
    """int64 keys: priority bits (0 for non-candidates) then reversed index ``rev``.

    Consumes ``t`` (overwritten with the masked priorities).
    """
    np.multiply(t, cand, out=t)
    t += F32(0)  # -0.0 (a masked negative) -> +0.0, whose bit pattern is 0
    key = np.left_shift(t.view(np.int32), bits, dtype=np.int64)
    key |= rev
    return key


def _flip_to_original_neighbour(
    x: np.ndarray,
    r: np.ndarray,
    idx: tuple[np.ndarray, np.ndarray],
    up: np.ndarray,
    tmin: int,
    tmax: int,
) -> None:
    """Set r[idx] to the UPV/DNV value of the original rounding (docs/quantizer.md step 2)."""
    xv = x[idx]
    r0 = np.rint(xv)
    e0 = r0 - xv
    cu = (e0 < 0) & (xv < tmax)
    cd = (e0 > 0) & (xv > tmin)
    r[idx] = np.where(up, r0 + cu, r0 - cd)


def _k_stage(
    xt: np.ndarray, r: np.ndarray, e: np.ndarray, tmin: int, tmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel-wise flip stage on kernel-major [T, G] arrays; updates r and e in place.

    Returns, per kernel, the boundary element (tap), its new priority |E|, whether that priority
    goes into the up list (the only non-zero priorities the C stage sees), and the new error sum.
    """
    taps, g = xt.shape
    up, k, over = _decide(e.sum(axis=0, dtype=np.float64))
    sign = np.where(up, F32(-1), F32(1))
    t, cand = _candidates(xt, e, sign, np.where(up, F32(-tmax), F32(tmin)))
    bits = _index_bits(taps)
    key = _keys(t, cand, np.arange(taps - 1, -1, -1, dtype=np.int64)[:, None], bits)
    srt = _sort_axis0(key)
    cols = np.arange(g)
    k = np.minimum(k, taps)
    # The k flipped elements are those with a key >= the k-th largest key (row taps: _NEVER).
    flip = key >= srt.ravel().take((taps - k) * g + cols)
    moved = flip & cand
    step = moved * -sign
    r += step
    e += step  # e + d for moved elements, unchanged (e + 0) for the others
    stray = flip & ~cand
    if stray.any():  # a flipped non-candidate keeps its value; its error is booked as 0
        e[stray] = 0
    # Boundary: the last flipped element when over (the last of the order if k == 0), else the
    # best unflipped one.
    rank = np.where(over, (k - 1) % taps, np.minimum(k, taps - 1))
    bkey = srt.ravel().take((taps - 1 - rank) * g + cols)
    btap = (taps - 1) - (bkey & ((1 << bits) - 1))
    bprio = np.abs(e.ravel().take(btap * g + cols))
    return btap, bprio, over != up, e.sum(axis=0, dtype=np.float64)


def _c_stage_boundaries(
    xt: np.ndarray,
    r: np.ndarray,
    kernel_sums: np.ndarray,
    btap: np.ndarray,
    bprio: np.ndarray,
    b_up: np.ndarray,
    tmin: int,
    tmax: int,
    o: int,
) -> None:
    """Channel-wise flip stage after a K stage, on kernel-major [T, O*I]; updates r in place."""
    taps, g = xt.shape
    inputs = g // o
    length = inputs * taps
    up, k, _ = _decide(kernel_sums.reshape(o, inputs).sum(axis=1))
    k = np.minimum(k, length)
    bprio2 = bprio.reshape(o, inputs)
    live = (b_up.reshape(o, inputs) == up[:, None]) & (bprio2 > 0)
    bits = _index_bits(inputs)
    rev = np.arange(inputs - 1, -1, -1, dtype=np.int64)
    key = np.where(live, (bprio2.view(np.int32).astype(np.int64) << bits) | rev, _ABSENT)
    asc = np.sort(key, axis=1)
    kk = np.minimum(k, inputs)
    has = kk > 0
    thr = np.where(has, asc[np.arange(o), np.where(has, inputs - kk, 0)], _NEVER)
    flip = key >= thr[:, None]
    flip &= live
    fo, fi = np.nonzero(flip)
    fg = fo * inputs + fi
    _flip_to_original_neighbour(xt, r, (btap[fg], fg), up[fo], tmin, tmax)
    # More flips than candidates: the order continues with zero-priority elements by index.
    m = live.sum(axis=1)
    for row in np.flatnonzero(k > m):
        zero = np.ones(length, dtype=bool)
        live_i = np.flatnonzero(live[row])
        zero[live_i * taps + btap[row * inputs + live_i]] = False
        flat = np.flatnonzero(zero)[: k[row] - m[row]]  # row-major index i*T + tap
        idx = (flat % taps, row * inputs + flat // taps)
        _flip_to_original_neighbour(xt, r, idx, np.full(flat.size, up[row]), tmin, tmax)


def _c_stage_full(x: np.ndarray, r: np.ndarray, e: np.ndarray, tmin: int, tmax: int) -> None:
    """Channel-wise flip stage with original priorities (no K stage ran); updates r in place."""
    o, length = x.shape
    up, k, _ = _decide(e.sum(axis=1, dtype=np.float64))
    k = np.minimum(k, length)
    kmax = int(k.max())
    if kmax == 0:
        return
    sign = np.where(up, F32(-1), F32(1))[:, None]
    t, cand = _candidates(x, e, sign, np.where(up, F32(-tmax), F32(tmin))[:, None])
    key = _keys(t, cand, np.arange(length - 1, -1, -1, dtype=np.int64), _index_bits(length))
    # Only the kmax largest keys of a row matter: partition, then sort that slice.
    top = np.partition(key, length - kmax, axis=1)[:, length - kmax :]
    top.sort(axis=1)
    has = k > 0
    thr = np.where(has, top[np.arange(o), np.where(has, kmax - k, 0)], _NEVER)
    flip = key >= thr[:, None]
    flip &= cand  # a flipped non-candidate keeps its original value, which r still holds
    r += flip * -sign


def squant_round(
    x: np.ndarray, taps: int, tmin: int, tmax: int, *, k_stage: bool = True, c_stage: bool = True
) -> np.ndarray:
    """SQuant codes (float32, integer-valued, clamped to [tmin, tmax]) of float32 rows x.

    ``x`` is [O, I*taps] in PyTorch weight layout: row o is output channel o, and each run of
    ``taps`` consecutive elements is one kernel. With both stages off this is plain RTN.
    """
    if x.ndim != 2 or taps < 1 or x.shape[1] % taps or x.dtype != F32:
        raise QuantizationError(
            f"squant_round needs float32 rows [O, I*taps]; got {x.dtype} {x.shape}, taps={taps}"
        )
    o, length = x.shape
    if k_stage and taps > 1:
        xt = np.ascontiguousarray(x.reshape(-1, taps).T)  # kernel-major [T, O*I]
        r = np.rint(xt)
        e = r - xt
        btap, bprio, b_up, kernel_sums = _k_stage(xt, r, e, tmin, tmax)
        if c_stage:
            _c_stage_boundaries(xt, r, kernel_sums, btap, bprio, b_up, tmin, tmax, o)
        np.clip(r, tmin, tmax, out=r)
        return np.ascontiguousarray(r.T).reshape(o, length)
    r = np.rint(x)
    if c_stage:
        _c_stage_full(x, r, r - x, tmin, tmax)
    np.clip(r, tmin, tmax, out=r)
    return r
