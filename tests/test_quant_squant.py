"""The vectorised SQuant rounding and nest split are bit-exact with the reference and the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_quant_oracle import VECTORS, oracle_squant_round

from nqformat.errors import QuantizationError
from nqformat.quant import affine_params, nest_quantize, squant_round, to_integer_domain

F32 = np.float32


def _cases() -> list[str]:
    with np.load(VECTORS) as d:
        return sorted({k.split(".")[0] for k in d.files})


@pytest.mark.parametrize("case", _cases())
def test_nest_quantize_reproduces_reference_vector_exactly(case: str) -> None:
    with np.load(VECTORS) as d:
        res = nest_quantize(d[f"{case}.weight"], int(d[f"{case}.n"]), int(d[f"{case}.h"]))
        for field in ("w_int", "w_high", "w_low"):
            np.testing.assert_array_equal(getattr(res, field), d[f"{case}.{field}"], field)
        # float32 equality, to the last bit (not just allclose)
        assert res.scale.tobytes() == d[f"{case}.scale"].reshape(-1).tobytes()
        assert res.zero_point.tobytes() == d[f"{case}.zero_point"].reshape(-1).tobytes()


def _note_vector_x() -> np.ndarray:
    rows = [
        [[0.4, 0.3, 0.45, 1.2], [2.4, -0.35, 0.1, 0.2]],
        [[-1.3, -0.4, 0.6, 0.7], [3.5, 2.5, -0.5, 0.45]],
    ]
    return np.array(rows, dtype=F32).reshape(2, 8)


@pytest.mark.parametrize(
    ("k_stage", "c_stage", "expected"),
    [
        (False, False, [[0, 0, 0, 1, 2, 0, 0, 0], [-1, 0, 1, 1, 4, 2, 0, 0]]),
        (True, False, [[0, 0, 1, 1, 2, 0, 0, 0], [-1, -1, 1, 1, 4, 2, 0, 0]]),
        (True, True, [[0, 0, 1, 1, 3, 0, 0, 0], [-1, -1, 1, 1, 4, 2, 0, 0]]),
    ],
)
def test_squant_round_matches_note_vector(k_stage: bool, c_stage: bool, expected: list) -> None:
    got = squant_round(_note_vector_x(), 4, -128, 127, k_stage=k_stage, c_stage=c_stage)
    np.testing.assert_array_equal(got, expected)


def test_high_codes_match_note_nest_vector() -> None:
    # docs/quantizer.md steps 3-5: w_int (1, 2, 2, 2), n = 8, h = 4 -> H and L below.
    w_int = np.array([[127, -128, 8, 24, -9, 40, 56, 7]], dtype=F32)
    xh = np.clip(w_int / F32(16), -8, 7).astype(F32)
    high = squant_round(xh, 4, -8, 7)
    np.testing.assert_array_equal(high, [[7, -8, 0, 2, -1, 3, 4, 0]])
    np.testing.assert_array_equal(w_int - 16 * high, [[15, 0, 8, -8, 7, -8, -8, 7]])


_SHAPES = [(4, 3, 3, 3), (5, 1, 3, 3), (6, 7), (3, 4, 1, 1), (2, 2, 7, 7), (3, 5, 2), (2, 40, 3, 3)]


@st.composite
def _layers(draw: st.DrawFn) -> tuple[np.ndarray, int, int, bool, bool]:
    shape = draw(st.sampled_from(_SHAPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "ties", "saturated", "laplace", "constant"]))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        w = rng.standard_normal(shape)
    elif kind == "ties":  # many equal priorities and exactly-half sums
        w = rng.integers(-3, 4, size=shape) * 0.25
    elif kind == "saturated":  # many elements at the channel max: X can sit above tmax
        w = np.where(rng.random(shape) < 0.5, 1.0, rng.standard_normal(shape))
    elif kind == "laplace":
        w = rng.laplace(size=shape)
    else:
        w = np.full(shape, rng.standard_normal()) * (rng.random(shape) < 0.9)
    n = draw(st.integers(2, 8))
    h = draw(st.integers(1, n - 1))
    return w.astype(F32), n, h, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(_layers())
def test_squant_round_equals_literal_oracle(layer: tuple) -> None:
    w, n, h, k_stage, c_stage = layer
    channels, taps = w.shape[0], math.prod(w.shape[2:])
    s, z = affine_params(w.reshape(channels, -1), n)
    x = to_integer_domain(w.reshape(channels, -1), s, z)
    qmin, qmax = -(2 ** (n - 1)), 2 ** (n - 1) - 1
    got = squant_round(x, taps, qmin, qmax, k_stage=k_stage, c_stage=c_stage)
    want = oracle_squant_round(x.reshape(w.shape), qmin, qmax, k_stage, c_stage)
    np.testing.assert_array_equal(got, want.reshape(channels, -1))
    # The nest pass: dyadic inputs full of exact ties and zero sums.
    hmin, hmax = -(2 ** (h - 1)), 2 ** (h - 1) - 1
    xh = np.clip(want.reshape(channels, -1) / F32(2 ** (n - h)), hmin, hmax).astype(F32)
    got_h = squant_round(xh, taps, hmin, hmax, k_stage=k_stage, c_stage=c_stage)
    want_h = oracle_squant_round(xh.reshape(w.shape), hmin, hmax, k_stage, c_stage)
    np.testing.assert_array_equal(got_h, want_h.reshape(channels, -1))


def test_squant_round_does_not_modify_its_input() -> None:
    x = np.random.default_rng(0).uniform(-100, 100, size=(8, 36)).astype(F32)
    before = x.copy()
    squant_round(x, 9, -128, 127)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(16, 8, 3, 3), (16, 64), (8, 1, 5, 5)]))
def test_channel_error_sum_is_at_most_half_after_squant(seed: int, shape: tuple) -> None:
    # SQuant's purpose: the C stage brings each channel's accumulated rounding error to <= 0.5
    # (inputs kept away from the clamp so the final clamp cannot move anything).
    rng = np.random.default_rng(seed)
    x = rng.uniform(-100, 100, size=(shape[0], math.prod(shape[1:]))).astype(F32)
    taps = math.prod(shape[2:])
    q = squant_round(x, taps, -128, 127)
    rtn = np.rint(x)
    channel_sum = np.abs((q.astype(np.float64) - x).sum(axis=1))
    assert channel_sum.max() <= 0.5 + 1e-4
    assert np.abs(q - rtn).max() <= 1  # each element moves to a neighbour at most
    assert np.abs(q - x).max() < 1


def test_zero_sum_kernel_marks_last_of_down_order_as_up_candidate() -> None:
    # the published SQuant code: Σ == 0 goes "down" with k = 0 and counts as over, so the *last*
    # of the down order becomes an undo candidate in the up list. Kernel 0 (errors +0.3, -0.3)
    # thereby offers its second element (priority 0.3) to the C stage, which beats the 0.2 of
    # kernels 1 and 2; without the rule the C stage would flip element 2 instead.
    x = np.array([[-0.3, 0.3, 0.2, 0.2, 0.2, 0.2]], dtype=F32)
    np.testing.assert_array_equal(squant_round(x, 2, -128, 127), [[0, 1, 0, 0, 0, 0]])


@pytest.mark.parametrize(
    ("x", "taps"),
    [
        (np.zeros((2, 9), F32), 2),  # rows not a whole number of kernels
        (np.zeros(9, F32), 1),  # not [O, L]
        (np.zeros((2, 9), np.float64), 9),  # not float32
        (np.zeros((2, 9), F32), 0),
    ],
)
def test_squant_round_rejects_malformed_input(x: np.ndarray, taps: int) -> None:
    with pytest.raises(QuantizationError):
        squant_round(x, taps, -128, 127)
