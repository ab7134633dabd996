"""SQuant adaptive rounding (E, K and C stages), vectorised and bit-exact with the reference.

Terminology follows research note §1.2-§1.4. Every element starts at round-half-to-even; the K
stage then flips, in each kernel (the kh*kw taps of one input channel), the ``round(|Σ error|)``
cheapest elements toward the other integer neighbour, and the C stage does the same over each
output channel. Candidates, priorities and flip targets always refer to the *original* rounding.

Orders are "stable descending": higher priority first, equal priorities by ascending index. We
realise that with unique int64 keys ``priority_bits << b | (L - 1 - index)`` (priorities are
non-negative float32, whose bit patterns order like the values), so a plain sort is stable.

Row sums of errors are taken in float64. The reference sums float32 in torch's order; both agree
on every public vector, and float64 makes the result independent of summation order and platform
(the nest pass, where decisions are most sensitive, has exact dyadic sums either way).

Speed: the C stage after a K stage sees at most one non-zero priority per kernel (the K stage's
boundary element), so it sorts one candidate per kernel instead of whole channels; the rare row
that needs more flips than it has candidates falls back to zero-priority elements in index order,
exactly as a full sort would.
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_half_even", "squant_round"]

F32 = np.float32
_ABSENT = np.int64(-1)  # key of "no candidate": below every real key (real keys are >= 0)


def round_half_even(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties to even (SQuant-E / RTN), as torch.round does."""
    return np.rint(x)


def _keys(p: np.ndarray) -> np.ndarray:
    """Unique int64 keys of rows of priorities p >= 0: by value, then by ascending index."""
    length = p.shape[-1]
    bits = max(1, (length - 1).bit_length())
    rev = np.arange(length - 1, -1, -1, dtype=np.int64)
    return (p.view(np.int32).astype(np.int64) << bits) | rev, bits


def _decide(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: go up (Σ < 0; Σ == 0 goes down), k = round(|Σ|) and whether k >= |Σ| (over)."""
    up = s < 0
    a = np.abs(s)
    k = np.rint(a)
    return up, k.astype(np.int64), k >= a


def _direction_priority(
    x: np.ndarray, e: np.ndarray, up: np.ndarray, tmin: int, tmax: int
) -> np.ndarray:
    """PU for rows going up, PD for rows going down (0 for elements that cannot flip that way)."""
    sign = np.where(up, F32(-1), F32(1))[:, None]
    t = e * sign  # > 0 exactly for errors of the flippable sign
    # The element also needs room to move: X < tmax going up, X > tmin going down.
    room = (x * sign) > np.where(up, F32(-tmax), F32(tmin))[:, None]
    room &= t > 0
    return np.where(room, t, F32(0))


def _flip_to_original_neighbour(
    x: np.ndarray,
    r: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    up: np.ndarray,
    tmin: int,
    tmax: int,
) -> None:
    """Set r[rows, cols] to the UPV/DNV value of the original rounding (research note §1.2)."""
    xv = x[rows, cols]
    r0 = np.rint(xv)
    e0 = r0 - xv
    cu = (e0 < 0) & (xv < tmax)
    cd = (e0 > 0) & (xv > tmin)
    r[rows, cols] = np.where(up, r0 + cu, r0 - cd)


def _k_stage(
    x: np.ndarray, r: np.ndarray, e: np.ndarray, tmin: int, tmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel-wise flip stage on [G, T] rows; updates r and e in place.

    Returns the boundary element of each row (tap index), its new priority |E| and whether that
    priority goes into the up list: the only non-zero priorities the C stage will see.
    """
    g, taps = x.shape
    up, k, over = _decide(e.sum(axis=1, dtype=np.float64))
    p = _direction_priority(x, e, up, tmin, tmax)
    key, bits = _keys(p)
    asc = np.sort(key, axis=1)
    rows = np.arange(g)
    k = np.minimum(k, taps)
    has = k > 0
    # The k flipped elements are those with a key >= the k-th largest key.
    flip = key >= asc[rows, np.where(has, taps - k, 0)][:, None]
    flip &= has[:, None]
    cand = p > 0
    d = np.where(up, F32(1), F32(-1))[:, None]
    moved = flip & cand
    r += np.where(moved, d, F32(0))
    # A flipped non-candidate keeps its value but its error is booked as 0 (reference semantics).
    e[...] = np.where(moved, e + d, np.where(flip, F32(0), e))
    # Boundary: the last flipped element when over (the last of the order if k == 0), else the
    # best unflipped one.
    rank = np.where(over, (k - 1) % taps, np.minimum(k, taps - 1))
    bkey = asc[rows, taps - 1 - rank]
    btap = (taps - 1) - (bkey & ((1 << bits) - 1))
    return btap, np.abs(e[rows, btap]), over != up


def _c_stage_boundaries(
    x: np.ndarray,
    r: np.ndarray,
    e: np.ndarray,
    taps: int,
    btap: np.ndarray,
    bprio: np.ndarray,
    b_up: np.ndarray,
    tmin: int,
    tmax: int,
) -> None:
    """Channel-wise flip stage after a K stage, on [O, I*T] rows; updates r in place."""
    o, length = x.shape
    inputs = length // taps
    up, k, _ = _decide(e.sum(axis=1, dtype=np.float64))
    k = np.minimum(k, length)
    btap = btap.reshape(o, inputs)
    bprio = bprio.reshape(o, inputs)
    live = (b_up.reshape(o, inputs) == up[:, None]) & (bprio > 0)
    pos = np.arange(inputs) * taps + btap  # boundary's index in its channel row
    key, _ = _keys(bprio)
    key = np.where(live, key, _ABSENT)
    asc = np.sort(key, axis=1)
    rows = np.arange(o)
    kk = np.minimum(k, inputs)
    has = kk > 0
    flip = key >= asc[rows, np.where(has, inputs - kk, 0)][:, None]
    flip &= has[:, None] & live
    fo, fi = np.nonzero(flip)
    _flip_to_original_neighbour(x, r, fo, pos[fo, fi], up[fo], tmin, tmax)
    # More flips than candidates: the order continues with zero-priority elements by index.
    m = live.sum(axis=1)
    for row in np.flatnonzero(k > m):
        zero = np.ones(length, dtype=bool)
        zero[pos[row, live[row]]] = False
        cols = np.flatnonzero(zero)[: k[row] - m[row]]
        _flip_to_original_neighbour(
            x, r, np.full(cols.size, row), cols, np.full(cols.size, up[row]), tmin, tmax
        )


def _c_stage_full(x: np.ndarray, r: np.ndarray, e: np.ndarray, tmin: int, tmax: int) -> None:
    """Channel-wise flip stage with original priorities (no K stage ran); updates r in place."""
    o, length = x.shape
    up, k, _ = _decide(e.sum(axis=1, dtype=np.float64))
    k = np.minimum(k, length)
    kmax = int(k.max())
    if kmax == 0:
        return
    p = _direction_priority(x, e, up, tmin, tmax)
    key, _ = _keys(p)
    # Only the kmax largest keys of a row matter: partition, then sort that slice.
    top = np.partition(key, length - kmax, axis=1)[:, length - kmax :]
    top.sort(axis=1)
    has = k > 0
    flip = key >= top[np.arange(o), np.where(has, kmax - k, 0)][:, None]
    flip &= has[:, None]
    flip &= p > 0  # a flipped non-candidate keeps its original value, which r still holds
    r += np.where(flip, np.where(up, F32(1), F32(-1))[:, None], F32(0))


def squant_round(
    x: np.ndarray, taps: int, tmin: int, tmax: int, *, k_stage: bool = True, c_stage: bool = True
) -> np.ndarray:
    """SQuant codes (float32, integer-valued, clamped to [tmin, tmax]) of float32 rows x.

    ``x`` is [O, I*taps] in PyTorch weight layout: row o is output channel o, and each run of
    ``taps`` consecutive elements is one kernel. With both stages off this is plain RTN.
    """
    r = np.rint(x)
    if k_stage or c_stage:
        e = r - x
        use_k = k_stage and taps > 1
        if use_k:
            g = x.size // taps
            btap, bprio, b_up = _k_stage(
                x.reshape(g, taps), r.reshape(g, taps), e.reshape(g, taps), tmin, tmax
            )
        if c_stage:
            if use_k:
                _c_stage_boundaries(x, r, e, taps, btap, bprio, b_up, tmin, tmax)
            else:
                _c_stage_full(x, r, e, tmin, tmax)
    np.clip(r, tmin, tmax, out=r)
    return r
