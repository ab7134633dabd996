"""nest_levels (spec §14): every level recomposes exactly from the coarser one, code ranges hold,
the finest two levels are nest_quantize's, and each level's parameters are fitted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nqformat.errors import QuantizationError
from nqformat.quant import nest_levels, nest_quantize
from nqformat.quant.nest import check_widths

F32 = np.float32

#: strictly increasing width tuples of 3 or more levels (spec §14.1)
_WIDTHS = st.lists(st.integers(1, 8), min_size=3, max_size=5, unique=True).map(
    lambda ws: tuple(sorted(ws))
)


def _weight(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    _WIDTHS,
    st.sampled_from([(5, 3, 3, 3), (7, 11), (3, 2, 1, 5)]),
    st.sampled_from(["squant", "rtn", "bitshift"]),
)
def test_every_level_recomposes_exactly_from_the_coarser(seed, widths, shape, rounding):
    res = nest_levels(_weight(shape, seed), widths[::-1], rounding=rounding)
    assert res.widths == widths
    assert len(res.codes) == len(widths) and len(res.residuals) == len(widths) - 1
    for j, (code, width) in enumerate(zip(res.codes, widths, strict=True)):
        assert code.dtype == np.int8 and code.shape == shape
        q = code.astype(np.int32)
        assert -(2 ** (width - 1)) <= q.min() and q.max() <= 2 ** (width - 1) - 1
        if j:
            d = width - widths[j - 1]
            low = res.residuals[j - 1].astype(np.int32)
            assert -(2**d) <= low.min() and low.max() <= 2**d - 1
            np.testing.assert_array_equal(q, res.codes[j - 1].astype(np.int32) * 2**d + low)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), _WIDTHS)
def test_finest_two_levels_are_nest_quantize(seed, widths):
    w = _weight((6, 4, 3, 3), seed)
    res = nest_levels(w, widths)
    ref = nest_quantize(w, widths[-1], widths[-2])
    np.testing.assert_array_equal(res.codes[-1], ref.w_int)
    np.testing.assert_array_equal(res.codes[-2], ref.w_high)
    np.testing.assert_array_equal(res.residuals[-1], ref.w_low)
    np.testing.assert_array_equal(res.scales[-1], ref.scale_full)
    np.testing.assert_array_equal(res.scales[-2], ref.scale_part)
    np.testing.assert_array_equal(res.offsets[-2], ref.offset_part)


def test_coarser_level_is_the_second_rounding_of_the_finer_code():
    # nesting q6 into 4 bits is the same second rounding nest_quantize applies to an n-bit code:
    # the INT4 codes of INT(8|6|4) equal those of a two-level split of q6 itself
    w = _weight((8, 4, 3, 3), 3)
    res = nest_levels(w, (4, 6, 8), rounding="rtn")
    q6 = res.codes[1].astype(np.int32)
    expected = np.clip(np.rint(q6 / 4.0), -8, 7)
    np.testing.assert_array_equal(res.codes[0], expected)


def test_each_level_has_its_own_fitted_parameters_and_error_falls_with_width():
    w = _weight((32, 16, 3, 3), 1)
    res = nest_levels(w, (8, 6, 4))
    errors = [float(np.mean((res.dequantize(j) - w) ** 2)) for j in range(3)]
    assert errors[0] > errors[1] > errors[2]
    # the middle pair is a least-squares fit: no better pair for the same codes (per channel)
    q = res.codes[1].reshape(32, -1).astype(np.float64)
    w2 = w.reshape(32, -1).astype(np.float64)
    for c in range(32):
        a, b = np.polyfit(q[c], w2[c], 1)
        np.testing.assert_allclose(res.scales[1][c], a, rtol=1e-4)
        np.testing.assert_allclose(res.offsets[1][c], b, rtol=1e-4, atol=1e-6)


def test_inherited_middle_parameters_are_the_reference_grid():
    w = _weight((4, 8), 2)
    res = nest_levels(w, (3, 5, 8), part_params="inherited")
    s = res.top.scale.astype(np.float64)
    np.testing.assert_array_equal(res.scales[1], (2.0**3 / s).astype(F32))
    np.testing.assert_array_equal(res.offsets[1], (res.top.zero_point / s).astype(F32))


@pytest.mark.parametrize(
    "widths", [(8,), (8, 8, 4), (9, 6, 4), (8, 6, 0), ("8", 6, 4), tuple(range(0, 9)), (True, 2, 4)]
)
def test_invalid_widths_are_refused(widths):
    with pytest.raises(QuantizationError):
        nest_levels(_weight((2, 3), 0), widths)


def test_widths_are_given_in_any_order():
    assert check_widths((8, 4, 6)) == (4, 6, 8)
    assert check_widths([2, 8]) == (2, 8)
