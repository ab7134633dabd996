"""nest_quantize: exact recomposition, code ranges, edge cases, parameters and input checks."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nqformat.errors import QuantizationError
from nqformat.quant import (
    NestQuantResult,
    activation_moments,
    nest_quantize,
    per_element_inputs,
    refit_part_params,
)

F32 = np.float32
ALL_BITS = [(n, h) for n in range(2, 9) for h in range(1, n)]


def _weight(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _assert_codes_valid(res: NestQuantResult) -> None:
    n, h, low_bits = res.n, res.h, res.l
    assert low_bits == n - h
    for field in ("w_int", "w_high", "w_low"):
        assert getattr(res, field).dtype == np.int8
    q = res.w_int.astype(np.int32)
    hi = res.w_high.astype(np.int32)
    lo = res.w_low.astype(np.int32)
    np.testing.assert_array_equal(q, hi * 2**low_bits + lo)
    assert -(2 ** (n - 1)) <= q.min() and q.max() <= 2 ** (n - 1) - 1
    assert -(2 ** (h - 1)) <= hi.min() and hi.max() <= 2 ** (h - 1) - 1
    assert -(2**low_bits) <= lo.min() and lo.max() <= 2**low_bits - 1


@pytest.mark.parametrize(("n", "h"), ALL_BITS)
@pytest.mark.parametrize("rounding", ["squant", "rtn", "bitshift"])
def test_recomposition_is_exact_and_ranges_hold_for_every_bit_pair(
    n: int, h: int, rounding: str
) -> None:
    res = nest_quantize(_weight((6, 4, 3, 3), seed=n * 10 + h), n, h, rounding=rounding)
    _assert_codes_valid(res)
    assert res.w_int.shape == (6, 4, 3, 3)
    # the full n-bit range is used by min/max quantization
    assert res.w_int.min() == -(2 ** (n - 1))
    assert res.w_int.max() >= 2 ** (n - 1) - 2


@pytest.mark.parametrize(("n", "h"), [(8, 4), (8, 1), (2, 1), (5, 3)])
def test_bitshift_high_is_floor_and_low_is_nonnegative(n: int, h: int) -> None:
    res = nest_quantize(_weight((5, 3, 3, 3)), n, h, rounding="bitshift")
    np.testing.assert_array_equal(res.w_high, res.w_int.astype(np.int32) >> (n - h))
    assert res.w_low.min() >= 0


def test_rtn_high_is_round_half_even_of_clipped_quotient() -> None:
    res = nest_quantize(_weight((8, 4, 3, 3)), 8, 4, rounding="rtn")
    expected = np.rint(np.clip(res.w_int / F32(16), -8, 7))
    np.testing.assert_array_equal(res.w_high, expected)


def test_squant_and_rtn_share_the_n_bit_codes_but_not_the_high_codes() -> None:
    w = _weight((16, 16, 3, 3))
    sq, rtn = nest_quantize(w, 8, 4), nest_quantize(w, 8, 4, rounding="rtn")
    np.testing.assert_array_equal(sq.w_int, rtn.w_int)
    assert not np.array_equal(sq.w_high, rtn.w_high)
    # SQuant keeps the per-channel sum of high-rounding errors small; RTN does not.
    xh = np.clip(sq.w_int / F32(16), -8, 7)
    err_sq = np.abs((sq.w_high - xh).reshape(16, -1).sum(axis=1)).max()
    err_rtn = np.abs((rtn.w_high - xh).reshape(16, -1).sum(axis=1)).max()
    assert err_sq <= 0.5 < err_rtn


def test_stages_off_is_round_to_nearest() -> None:
    w = _weight((4, 3, 3, 3))
    res = nest_quantize(w, 8, 4, k_stage=False, c_stage=False)
    expected = np.clip(
        np.rint(res.scale[:, None, None, None] * w - res.zero_point[:, None, None, None]), -128, 127
    )
    np.testing.assert_array_equal(res.w_int, expected)


@pytest.mark.parametrize(("n", "h"), [(8, 4), (8, 7), (4, 2), (2, 1)])
@pytest.mark.parametrize("part_params", ["refit", "inherited"])
def test_all_zero_channel_dequantizes_to_exact_zero(n: int, h: int, part_params: str) -> None:
    w = _weight((3, 4, 3, 3))
    w[1] = 0.0
    res = nest_quantize(w, n, h, part_params=part_params)
    assert res.scale[1] == F32(2**n - 1) / F32(1e-8)
    assert res.zero_point[1] == 2 ** (n - 1)
    assert (res.w_int[1] == -(2 ** (n - 1))).all()
    assert (res.w_high[1] == -(2 ** (h - 1))).all()
    assert (res.w_low[1] == 0).all()
    for mode in ("full", "part"):
        out = res.dequantize(mode)
        assert (out[1] == 0).all()
        assert np.isfinite(out).all()


@pytest.mark.parametrize("part_params", ["refit", "inherited"])
@pytest.mark.parametrize(("value", "code"), [(0.012, -128), (1e-5, -128), (0.37, 0), (-0.37, 0)])
def test_constant_channel_gets_one_code_and_dequantizes_close_to_the_constant(
    part_params: str, value: float, code: int
) -> None:
    # Z = round(S*c) + 2^(n-1) is huge (S = 255e8); the float32 addition keeps the 128 only
    # while it is exact, so large constants land on code 0 instead of -128 (as in the reference).
    w = _weight((3, 2, 3, 3))
    w[2] = value
    res = nest_quantize(w, 8, 4, part_params=part_params)
    assert (res.w_int[2] == code).all()
    assert (res.w_high[2] == code // 16).all()
    assert abs(res.zero_point[2]) > 1e5
    for mode in ("full", "part"):
        np.testing.assert_allclose(res.dequantize(mode)[2], value, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 1, 1, 1), (1, 1), (5, 1)])
def test_single_element_channels_are_constant_channels(shape: tuple[int, ...]) -> None:
    w = _weight(shape, seed=3)
    res = nest_quantize(w, 8, 4)
    _assert_codes_valid(res)
    np.testing.assert_allclose(res.dequantize("full"), w, rtol=1e-6)
    np.testing.assert_allclose(res.dequantize("part"), w, rtol=1e-6)


@pytest.mark.parametrize(
    "shape", [(8, 1, 3, 3), (8, 2, 3, 3), (6, 3, 5, 5), (4, 3, 1, 7), (5, 4, 3), (5, 4, 2, 2, 2)]
)
def test_depthwise_grouped_and_other_conv_shapes_are_valid(shape: tuple[int, ...]) -> None:
    res = nest_quantize(_weight(shape), 8, 5)
    _assert_codes_valid(res)
    assert res.w_high.shape == shape
    assert res.scale.shape == (shape[0],)


def test_full_and_inherited_part_parameters_follow_the_reference_scale_and_zero_point() -> None:
    res = nest_quantize(_weight((6, 5, 3, 3)), 8, 6, part_params="inherited")
    s = res.scale.astype(np.float64)
    z = res.zero_point.astype(np.float64)
    assert res.scale_full.tobytes() == (1.0 / s).astype(F32).tobytes()
    assert res.offset_full.tobytes() == (z / s).astype(F32).tobytes()
    assert res.scale_part.tobytes() == (4.0 / s).astype(F32).tobytes()
    assert res.offset_part.tobytes() == (z / s).astype(F32).tobytes()


@pytest.mark.parametrize("mode", ["full", "part"])
def test_dequantize_is_float32_multiply_then_add(mode: str) -> None:
    res = nest_quantize(_weight((6, 5, 3, 3)), 8, 4)
    codes, scale, offset = (
        (res.w_int, res.scale_full, res.offset_full)
        if mode == "full"
        else (res.w_high, res.scale_part, res.offset_part)
    )
    out = res.dequantize(mode)
    assert out.dtype == np.float32
    for c in range(codes.shape[0]):
        for q, got in zip(codes[c].ravel(), out[c].ravel(), strict=True):
            prod = F32(F32(int(q)) * scale[c])
            assert got == F32(prod + offset[c])


def test_full_bit_dequantization_reproduces_the_reference_formula_closely() -> None:
    w = _weight((8, 4, 3, 3))
    res = nest_quantize(w, 8, 4)
    ref = (res.w_int.astype(np.float64) + res.zero_point[:, None, None, None]) / res.scale[
        :, None, None, None
    ]
    np.testing.assert_allclose(res.dequantize("full"), ref, rtol=0, atol=1e-6)
    step = 1.0 / res.scale[:, None, None, None]
    # SQuant moves an element at most to the other neighbour: error below one step
    assert (np.abs(res.dequantize("full") - w) <= step * 1.001).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(8, 4), (8, 6), (6, 3), (4, 2), (8, 1)]))
def test_refit_part_error_never_exceeds_inherited(seed: int, bits: tuple[int, int]) -> None:
    w = np.random.default_rng(seed).laplace(size=(12, 6, 3, 3)).astype(F32)
    refit = nest_quantize(w, *bits)
    inherited = nest_quantize(w, *bits, part_params="inherited")
    np.testing.assert_array_equal(refit.w_high, inherited.w_high)
    err_r = ((refit.dequantize("part") - w) ** 2).reshape(12, -1).sum(axis=1)
    err_i = ((inherited.dequantize("part") - w) ** 2).reshape(12, -1).sum(axis=1)
    assert (err_r <= err_i * (1 + 1e-5) + 1e-12).all()
    assert np.isfinite(refit.scale_part).all() and np.isfinite(refit.offset_part).all()
    # least squares with an intercept keeps each channel's mean
    np.testing.assert_allclose(
        refit.dequantize("part").reshape(12, -1).mean(axis=1),
        w.reshape(12, -1).mean(axis=1),
        atol=1e-5,
    )


def test_refit_constant_high_channel_keeps_inherited_step_and_matches_mean() -> None:
    w = _weight((4, 3, 3, 3))
    w[0] = np.linspace(0.5, 0.5001, 27).reshape(3, 3, 3)  # tiny spread, still one high code?
    w[3] = -2.0
    res = nest_quantize(w, 8, 1)  # h = 1: codes -1/0 only, often constant per channel
    inherited = nest_quantize(w, 8, 1, part_params="inherited")
    const = [c for c in range(4) if np.unique(res.w_high[c]).size == 1]
    assert 3 in const
    for c in const:
        assert res.scale_part[c] == inherited.scale_part[c]
        assert np.isclose(res.dequantize("part")[c].mean(), w[c].mean(), atol=1e-6)


def test_torch_tensor_input_gives_the_same_result_as_numpy() -> None:
    torch = pytest.importorskip("torch")  # imported here: it costs seconds at collection
    w = _weight((8, 3, 3, 3))
    a = nest_quantize(w, 8, 4)
    b = nest_quantize(torch.from_numpy(w.copy()).requires_grad_(), 8, 4)
    for f in dataclasses.fields(NestQuantResult):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray):
            assert va.tobytes() == vb.tobytes(), f.name
        else:
            assert va == vb
    half = nest_quantize(torch.from_numpy(w).to(torch.bfloat16), 8, 4)
    _assert_codes_valid(half)


def test_float64_input_is_quantized_as_float32() -> None:
    w = _weight((4, 3, 3, 3))
    a = nest_quantize(w, 8, 4)
    b = nest_quantize(w.astype(np.float64), 8, 4)
    np.testing.assert_array_equal(a.w_high, b.w_high)


def test_result_is_frozen_and_its_arrays_read_only() -> None:
    res = nest_quantize(_weight((3, 2, 3, 3)), 8, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        res.w_high[0, 0, 0, 0] = 1


@pytest.mark.parametrize(
    ("n", "h"),
    [(1, 0), (9, 4), (8, 8), (8, 0), (8, -1), (0, 0), (4, 5), (8.0, 4), ("8", 4), (True, 1)],
)
def test_invalid_bit_widths_raise_quantization_error(n: object, h: object) -> None:
    with pytest.raises(QuantizationError):
        nest_quantize(_weight((2, 2, 3, 3)), n, h)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_raises_quantization_error(bad: float) -> None:
    w = _weight((3, 2, 3, 3))
    w[1, 1, 2, 0] = bad
    with pytest.raises(QuantizationError, match="non-finite"):
        nest_quantize(w, 8, 4)


def test_float64_weight_overflowing_float32_raises() -> None:
    w = np.ones((2, 3)) * 1e300
    with pytest.raises(QuantizationError, match="non-finite"):
        nest_quantize(w, 8, 4)


@pytest.mark.parametrize(
    "weight", [np.zeros((0, 3)), np.zeros((3, 0, 3, 3)), np.zeros(5, F32), np.array(1.0)]
)
def test_empty_or_one_dimensional_weight_raises(weight: np.ndarray) -> None:
    with pytest.raises(QuantizationError):
        nest_quantize(weight, 8, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rounding": "floor"},
        {"part_params": "fit"},
        {"k_stage": 1},
        {"c_stage": None},
    ],
)
def test_invalid_options_raise_quantization_error(kwargs: dict) -> None:
    with pytest.raises(QuantizationError):
        nest_quantize(_weight((2, 2, 3, 3)), 8, 4, **kwargs)


def test_non_numeric_weight_raises() -> None:
    with pytest.raises(QuantizationError, match="dtype"):
        nest_quantize(np.array([["a", "b"]]), 8, 4)


def test_unknown_dequantize_mode_raises() -> None:
    res = nest_quantize(_weight((2, 2, 3, 3)), 8, 4)
    with pytest.raises(QuantizationError, match="mode"):
        res.dequantize("half")


def test_quantization_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        nest_quantize(_weight((2, 2)), 8, 9)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([(3, 2, 3, 3), (4, 7), (5, 1, 3, 3), (2, 3, 1, 1)]),
    st.integers(2, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))),
    st.sampled_from(["squant", "rtn", "bitshift"]),
    st.booleans(),
    st.booleans(),
)
def test_any_input_gives_valid_codes_and_finite_weights(
    seed: int, shape: tuple, bits: tuple[int, int], rounding: str, k_stage: bool, c_stage: bool
) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 3)).astype(F32)
    w[rng.random(shape) < 0.2] = 0.0
    res = nest_quantize(w, *bits, rounding=rounding, k_stage=k_stage, c_stage=c_stage)
    _assert_codes_valid(res)
    for mode in ("full", "part"):
        assert np.isfinite(res.dequantize(mode)).all()


def test_refit_without_weights_is_ordinary_least_squares() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 40)).astype(F32)
    high = rng.integers(-8, 8, size=(6, 40)).astype(F32)
    a, b = refit_part_params(w, high, np.ones(6, F32))
    for c in range(6):
        slope, intercept = np.polyfit(high[c].astype(np.float64), w[c].astype(np.float64), 1)
        assert np.isclose(a[c], slope, rtol=1e-6)
        assert np.isclose(b[c], intercept, rtol=1e-5, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_refit_with_input_statistics_minimises_expected_output_error(seed: int) -> None:
    # E[(r·x)²] = Σ d r² + (Σ μ r)² for inputs of mean μ and variance d, r = w - a*H - b.
    rng = np.random.default_rng(seed)
    rows, length = 5, 24
    w = rng.standard_normal((rows, length)).astype(F32)
    high = np.clip(np.rint(w * 3 + rng.normal(0, 0.6, w.shape)), -8, 7).astype(F32)
    d = rng.uniform(0.1, 3.0, size=(1, length))
    mu = rng.uniform(0.0, 2.0, size=(1, length))

    def cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r = w.astype(np.float64) - a[:, None].astype(np.float64) * high - b[:, None]
        return (d * r * r).sum(axis=1) + ((mu * r).sum(axis=1)) ** 2

    fb = np.ones(rows, F32)
    best = cost(*refit_part_params(w, high, fb, weights=d, input_mean=mu))
    ols = cost(*refit_part_params(w, high, fb))
    assert (best <= ols * (1 + 1e-5) + 1e-9).all()
    for da, db in [(1e-3, 0.0), (-1e-3, 0.0), (0.0, 1e-3), (0.0, -1e-3)]:
        a, b = refit_part_params(w, high, fb, weights=d, input_mean=mu)
        assert (best <= cost(a + F32(da), b + F32(db)) * (1 + 1e-6)).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(60)
def test_quantizing_in_a_forked_child_does_not_hang_on_the_parents_thread_pool() -> None:
    w = _weight((64, 64, 3, 3))  # several blocks: uses the worker pool
    parent = nest_quantize(w, 8, 4)
    pid = os.fork()
    if pid == 0:  # child: the parent's pool threads do not exist here
        child = nest_quantize(w, 8, 4)
        os._exit(0 if np.array_equal(child.w_high, parent.w_high) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_activation_moments_match_known_values() -> None:
    # ReLU of N(0, 1): mean 1/sqrt(2*pi), variance 1/2 - 1/(2*pi)
    m, v = activation_moments(np.array([0.0]), np.array([1.0]), 0.0)
    assert np.isclose(m[0], 1 / np.sqrt(2 * np.pi), atol=1e-6)
    assert np.isclose(v[0], 0.5 - 1 / (2 * np.pi), atol=1e-6)
    # no activation: the normal's own moments; std 0: a constant, clipped
    m, v = activation_moments(np.array([1.5, 9.0, -2.0]), np.array([-0.7, 0.0, 0.0]), 0.0, 6.0)
    assert np.isclose(m[1], 6.0) and np.isclose(m[2], 0.0) and np.allclose(v[1:], 0.0)
    m, v = activation_moments(np.array([0.3]), np.array([2.0]))
    assert np.isclose(m[0], 0.3, atol=1e-9) and np.isclose(v[0], 4.0, rtol=1e-5)


def test_per_element_inputs_follows_grouped_conv_layout() -> None:
    per_channel = np.arange(8.0)
    dense = per_element_inputs((3, 8, 1, 1), 1, per_channel)
    np.testing.assert_array_equal(dense, np.tile(per_channel, (3, 1)))
    depthwise = per_element_inputs((8, 1, 3, 3), 8, per_channel)
    np.testing.assert_array_equal(depthwise, np.repeat(per_channel[:, None], 9, axis=1))
    grouped = per_element_inputs((4, 4, 1, 2), 2, per_channel)  # groups of 2 outputs, 4 inputs
    np.testing.assert_array_equal(grouped[0], [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(grouped[3], [4, 4, 5, 5, 6, 6, 7, 7])
    with pytest.raises(ValueError):
        per_element_inputs((4, 4, 1, 1), 3, per_channel)
