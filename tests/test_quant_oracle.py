"""A slow, literal transcription of SQuant/NestQuant (docs/quantizer.md steps 1-5), a test
oracle.

It follows the pseudo-code line by line with per-row Python loops and full stable sorts, so it is
easy to check by eye. It is validated here against the published reference vectors and then used
(in test_quant_squant.py) to check the fast vectorised implementation on random inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

VECTORS = Path("/work/shared/vectors/squant_nest_public.npz")
F32 = np.float32


def oracle_affine(weight: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S, Z and X = S*W - Z of docs/quantizer.md step 1, all float32."""
    w = np.asarray(weight, dtype=F32).reshape(weight.shape[0], -1)
    rng = np.maximum(w.max(axis=1) - w.min(axis=1), F32(1e-8))
    s = F32(2**n - 1) / rng
    z = np.rint(s * w.min(axis=1)) + F32(2 ** (n - 1))
    x = s[:, None] * w
    x = x - z[:, None]
    return s, z, x.reshape(weight.shape)


def _order(p: np.ndarray) -> np.ndarray:
    # Stable descending order: equal priorities keep ascending index.
    return np.argsort(-p, kind="stable")


def oracle_squant_round(
    x: np.ndarray, tmin: int, tmax: int, use_k: bool = True, use_c: bool = True
) -> np.ndarray:
    """SQUANT_ROUND of docs/quantizer.md step 2 (float32 X in, float32 integer-valued codes out)."""
    x = np.asarray(x, dtype=F32)
    o = x.shape[0]
    i = x.shape[1] if x.ndim > 1 else 1
    k_taps = x.size // (o * i)
    xf = x.reshape(-1)
    r = np.rint(xf)
    e = r - xf
    cu = (e < 0) & (xf < tmax)
    cd = (e > 0) & (xf > tmin)
    upv = np.where(cu, r + 1, r)
    upe = np.where(cu, e + F32(1), F32(0))
    pu = np.where(cu, -e, F32(0))
    dnv = np.where(cd, r - 1, r)
    dne = np.where(cd, e - F32(1), F32(0))
    pd = np.where(cd, e, F32(0))

    def flip_stage(rows: int, length: int, ord_u: list, ord_d: list) -> None:
        for g in range(rows):
            ix = np.arange(g * length, (g + 1) * length)
            s = float(np.sum(e[ix], dtype=np.float64))
            go_up = s < 0
            a = abs(s)
            k = int(np.rint(a))
            over = k >= a
            if go_up:
                v, ne, p_same, p_other, order = upv, upe, pu, pd, ord_u[g]
            else:
                v, ne, p_same, p_other, order = dnv, dne, pd, pu, ord_d[g]
            for j in order[:k]:
                r[ix[j]] = v[ix[j]]
                e[ix[j]] = ne[ix[j]]
            if over:
                c = ix[order[k - 1]] if k > 0 else ix[order[length - 1]]
                p_other[c] = abs(e[c])
            else:
                c = ix[order[k]]
                p_same[c] = abs(e[c])

    if k_taps == 1:
        use_k = False
    if use_k:
        rows = o * i
        ord_u = [_order(pu[g * k_taps : (g + 1) * k_taps]) for g in range(rows)]
        ord_d = [_order(pd[g * k_taps : (g + 1) * k_taps]) for g in range(rows)]
        pu[:] = 0
        pd[:] = 0
        flip_stage(rows, k_taps, ord_u, ord_d)
    if use_c:
        length = i * k_taps
        ord_u = [_order(pu[g * length : (g + 1) * length]) for g in range(o)]
        ord_d = [_order(pd[g * length : (g + 1) * length]) for g in range(o)]
        flip_stage(o, length, ord_u, ord_d)
    return np.clip(r, tmin, tmax).reshape(x.shape)


def oracle_nest(
    weight: np.ndarray, n: int, h: int, use_k: bool = True, use_c: bool = True
) -> dict[str, np.ndarray]:
    """w_int, w_high, w_low, S, Z of docs/quantizer.md steps 1-4 (SQuant rounding for the high
    part)."""
    low_bits = n - h
    s, z, x = oracle_affine(weight, n)
    q = np.clip(
        oracle_squant_round(x, -(2 ** (n - 1)), 2 ** (n - 1) - 1, use_k, use_c),
        -(2 ** (n - 1)),
        2 ** (n - 1) - 1,
    )
    xh = np.clip(q / F32(2**low_bits), -(2 ** (h - 1)), 2 ** (h - 1) - 1).astype(F32)
    hi = oracle_squant_round(xh, -(2 ** (h - 1)), 2 ** (h - 1) - 1, use_k, use_c)
    lo = np.clip(q - hi * F32(2**low_bits), -(2**low_bits), 2**low_bits - 1)
    return {"w_int": q, "w_high": hi, "w_low": lo, "scale": s, "zero_point": z}


def _cases() -> list[str]:
    with np.load(VECTORS) as d:
        return sorted({k.split(".")[0] for k in d.files})


@pytest.mark.parametrize("case", _cases())
def test_oracle_matches_reference_vectors(case: str) -> None:
    with np.load(VECTORS) as d:
        got = oracle_nest(d[f"{case}.weight"], int(d[f"{case}.n"]), int(d[f"{case}.h"]))
        for field in ("w_int", "w_high", "w_low"):
            np.testing.assert_array_equal(got[field], d[f"{case}.{field}"].astype(F32), field)
        for field in ("scale", "zero_point"):
            np.testing.assert_array_equal(got[field], d[f"{case}.{field}"].reshape(-1), field)


def test_oracle_matches_note_squant_vector() -> None:
    x = np.array(
        [
            [[0.4, 0.3, 0.45, 1.2], [2.4, -0.35, 0.1, 0.2]],
            [[-1.3, -0.4, 0.6, 0.7], [3.5, 2.5, -0.5, 0.45]],
        ],
        dtype=F32,
    ).reshape(2, 2, 2, 2)
    rtn = oracle_squant_round(x, -128, 127, use_k=False, use_c=False)
    k_only = oracle_squant_round(x, -128, 127, use_k=True, use_c=False)
    k_c = oracle_squant_round(x, -128, 127)
    np.testing.assert_array_equal(
        rtn.reshape(2, 2, 4), [[[0, 0, 0, 1], [2, 0, 0, 0]], [[-1, 0, 1, 1], [4, 2, 0, 0]]]
    )
    np.testing.assert_array_equal(
        k_only.reshape(2, 2, 4), [[[0, 0, 1, 1], [2, 0, 0, 0]], [[-1, -1, 1, 1], [4, 2, 0, 0]]]
    )
    np.testing.assert_array_equal(
        k_c.reshape(2, 2, 4), [[[0, 0, 1, 1], [3, 0, 0, 0]], [[-1, -1, 1, 1], [4, 2, 0, 0]]]
    )
