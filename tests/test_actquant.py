"""Activation fake-quantization: runtime formula, calibration rules, META round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nqformat.errors import MetadataError, NQError
from nqformat.torch import actquant as aq
from nqformat.torch.actquant import ActCalibration, ActRange

SHAPE = (3, 16, 16)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),  # signed input for the next conv
        nn.Conv2d(8, 6, 1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def cal(model: nn.Module, bits: int = 4, **kw) -> ActCalibration:
    kw.setdefault("batch_size", 4)
    kw.setdefault("input_shape", SHAPE)
    return aq.calibrate(model, bits, **kw)


# --- the runtime formula -------------------------------------------------------------------------


def test_fake_quantize_unsigned_matches_hand_computed_values() -> None:
    # S = 3/3 = 1, Z = 0; round half to even: 0.5 -> 0, 2.5 -> 2; clamp to [0, 3]
    x = torch.tensor([-1.0, 0.4, 0.5, 1.5, 2.5, 3.7])
    out = aq.fake_quantize(x, ActRange(0.0, 3.0, 2, False))
    assert out.tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 3.0]


def test_fake_quantize_unsigned_with_offset_range_uses_zero_point() -> None:
    # S = 3/1.5 = 2, Z = round(2*0.5) = 1; q = clamp(round(2x - 1), 0, 3); x_hat = (q + 1)/2
    x = torch.tensor([0.0, 0.5, 1.2, 2.4])
    out = aq.fake_quantize(x, ActRange(0.5, 2.0, 2, False))
    assert out.tolist() == [0.5, 0.5, 1.0, 2.0]


def test_fake_quantize_signed_symmetric_has_zero_point_zero() -> None:
    # S = 7/4 = 1.75; round(S*lo) = round(-3.5) = -4 (half even), Z = -4 + 4 = 0; q in [-4, 3]
    x = torch.tensor([-3.0, -1.0, 0.3, 1.0, 2.5])
    out = aq.fake_quantize(x, ActRange(-2.0, 2.0, 3, True))
    expected = np.array([-4, -2, 1, 2, 3], dtype=np.float32) / np.float32(1.75)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_fake_quantize_keeps_dtype_and_shape() -> None:
    x = torch.rand(2, 3, 4, dtype=torch.float64)
    out = aq.fake_quantize(x, ActRange(0.0, 1.0, 8, False))
    assert out.dtype == torch.float64 and out.shape == x.shape


def test_zero_width_range_gives_finite_output_and_maps_zero_to_zero() -> None:
    out = aq.fake_quantize(torch.tensor([0.0, 0.0, 1.0]), ActRange(0.0, 0.0, 8, False))
    assert torch.isfinite(out).all()
    assert out[0].item() == 0.0


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    alpha=st.floats(1e-3, 1e3),
    signed=st.booleans(),
    values=st.lists(st.floats(-2e3, 2e3, width=32), min_size=1, max_size=32),
)
def test_fake_quantize_is_idempotent_and_close_inside_the_range(
    bits: int, alpha: float, signed: bool, values: list[float]
) -> None:
    r = ActRange(-alpha if signed else 0.0, alpha, bits, signed)
    x = torch.tensor(values, dtype=torch.float32)
    once = aq.fake_quantize(x, r)
    assert torch.equal(aq.fake_quantize(once, r), once)
    step = (r.hi - r.lo) / (2**bits - 1)
    # top of a symmetric signed range is one step short (q max = 2^(b-1)-1), like the reference
    top = r.hi - (step if signed else 0.0)
    inside = (x >= r.lo) & (x <= top)
    err = (once - x).abs()[inside]
    assert bool((err <= step * 0.5 * (1 + 1e-4) + 1e-6).all())


# --- compute_range -------------------------------------------------------------------------------


def test_unsigned_sigma_rule_uses_std_of_positive_values() -> None:
    a = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])  # std([1, 2, 3], unbiased) = 1
    r, fell_back = aq.compute_range(a, 8, sigma=2.0)
    assert (r.lo, r.hi, r.bits, r.signed, fell_back) == (0.0, 2.0, 8, False, False)


def test_sigma_range_is_capped_at_max_below_six_bits_only() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert aq.compute_range(a, 5, sigma=5.0)[0].hi == 3.0
    assert aq.compute_range(a, 6, sigma=5.0)[0].hi == 5.0


def test_signed_sigma_rule_divides_by_1_25() -> None:
    a = torch.tensor([-1.0, 1.0])  # unbiased std = sqrt(2)
    r, _ = aq.compute_range(a, 8, sigma=3.0)
    expected = float(np.float32(3.0 * math.sqrt(2.0) / 1.25))
    assert r.signed and r.hi == pytest.approx(expected, rel=1e-6) and r.lo == -r.hi


def test_percent_rule_applies_when_sigma_is_zero() -> None:
    r, _ = aq.compute_range(torch.tensor([-4.0, 2.0]), 8, sigma=0.0, percent=50.0)
    assert (r.lo, r.hi, r.signed) == (-2.0, 2.0, True)


@pytest.mark.parametrize(
    ("values", "hi"),
    [([0.0, 0.0, 0.0], 0.0), ([0.0, 0.0, 5.0], 5.0), ([-3.0], 3.0), ([2.0, 2.0], 2.0)],
)
def test_undefined_std_falls_back_to_max_abs_instead_of_nan(values: list[float], hi: float) -> None:
    r, fell_back = aq.compute_range(torch.tensor(values), 8, sigma=25.0)
    assert fell_back and r.hi == hi and not math.isnan(r.lo)


def test_non_finite_activation_raises() -> None:
    with pytest.raises(NQError, match="NaN or inf"):
        aq.compute_range(torch.tensor([1.0, float("nan")]), 8, sigma=25.0)


@pytest.mark.parametrize("bits", [1, 17, 4.0, True])
def test_invalid_bits_raise(bits: object) -> None:
    with pytest.raises(NQError, match="bits"):
        aq.compute_range(torch.ones(3), bits, sigma=1.0)  # type: ignore[arg-type]


# --- calibration ---------------------------------------------------------------------------------


def test_calibration_batch_is_torch_rand_after_manual_seed_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    batch = aq.calibration_batch(2, SHAPE, 0)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(0)
    assert torch.equal(batch, torch.rand(2, *SHAPE))


def test_calibration_is_deterministic() -> None:
    a, b = cal(small_cnn()), cal(small_cnn())
    assert a == b
    assert a.ranges != cal(small_cnn(), seed=1).ranges


def test_first_layer_input_is_not_quantized_and_last_is_eight_bits() -> None:
    c = cal(small_cnn(), bits=4)
    assert c.unquantized == ("0",)
    assert list(c.ranges) == ["2", "4", "8"]
    assert [r.bits for r in c.ranges.values()] == [4, 4, 8]
    assert c.ranges["4"].signed and not c.ranges["2"].signed


def test_default_sigma_follows_the_reference_table_and_needs_explicit_value_otherwise() -> None:
    assert cal(small_cnn(), bits=6).sigma == 14.0
    with pytest.raises(NQError, match="no default sigma"):
        cal(small_cnn(), bits=5)
    assert cal(small_cnn(), bits=5, sigma=10.0).sigma == 10.0


def test_ranges_are_computed_sequentially_through_the_quantized_network() -> None:
    model = small_cnn()
    c = cal(model, bits=4)
    seen: dict[str, torch.Tensor] = {}
    layers = dict(model.named_modules())
    for name in c.ranges:  # prepend: see the input before this layer's own quantizer
        layers[name].register_forward_pre_hook(
            lambda _m, args, name=name: seen.setdefault(name, args[0].clone()), prepend=True
        )
    with aq.apply(model, c):
        model(aq.calibration_batch(4, SHAPE, 0))
    for name, r in c.ranges.items():
        assert aq.compute_range(seen[name], r.bits, sigma=c.sigma)[0] == r


def test_calibration_removes_its_hooks_and_keeps_weights() -> None:
    model = small_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cal(model)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --- applying ------------------------------------------------------------------------------------


def test_apply_changes_output_and_remove_restores_it() -> None:
    model = small_cnn()
    c = cal(model, bits=4)
    x = torch.rand(2, *SHAPE)
    plain = model(x)
    with aq.apply(model, c) as handle:
        assert handle.active
        quantized = model(x)
    assert not torch.equal(plain, quantized)
    assert torch.equal(model(x), plain)


def test_apply_twice_raises_instead_of_stacking_quantizers() -> None:
    model = small_cnn()
    c = cal(model)
    handle = aq.apply(model, c)
    with pytest.raises(NQError, match="already applied"):
        aq.apply(model, c)
    handle.remove()
    aq.apply(model, c).remove()


def test_apply_to_a_different_network_raises() -> None:
    c = cal(small_cnn())
    with pytest.raises(NQError, match="does not have"):
        aq.apply(nn.Sequential(nn.Linear(2, 2)), c)


def test_metadata_round_trips_through_json() -> None:
    c = cal(small_cnn(), bits=4)
    meta = json.loads(json.dumps(c.to_metadata(), sort_keys=True))
    assert ActCalibration.from_metadata(meta) == c
    last = c.ranges["8"]
    assert meta["layers"]["8"] == [last.lo, last.hi, 8, last.signed]


def test_apply_from_metadata_without_key_raises() -> None:
    with pytest.raises(NQError, match="no activation ranges"):
        aq.apply_from_metadata(small_cnn(), {"model": {}})


@pytest.mark.parametrize(
    "meta",
    [
        [],
        {"bits": 4},
        {"bits": 4, "layers": {"2": [0.0, 1.0, 4]}},
        {"bits": 4, "layers": {"2": [0.0, "1", 4, False]}},
        {"bits": 4, "layers": {"2": [0.0, 1.0, 4, 0]}},
        {"bits": 4, "layers": {"2": [1.0, 0.0, 4, False]}},
        {"bits": 4, "layers": {"2": [0.0, 1.0, 40, False]}},
    ],
)
def test_malformed_metadata_raises_metadata_error(meta: object) -> None:
    with pytest.raises(MetadataError):
        ActCalibration.from_metadata(meta)  # type: ignore[arg-type]


# --- with .nq files ------------------------------------------------------------------------------


@pytest.fixture
def nq_file(tmp_path):
    """A converted small CNN whose META carries ranges calibrated on its part-bit model."""
    import nqformat.torch as nqt

    path = tmp_path / "small.nq"
    nqt.convert_model(small_cnn(), path, n=8, h=4)
    calibration = aq.calibrate_file(path, 4, module=small_cnn(1), batch_size=4, input_shape=SHAPE)
    nqt.convert_model(
        small_cnn(), path, n=8, h=4, metadata={aq.META_KEY: calibration.to_metadata()}
    )
    return path, calibration


def test_calibrate_file_uses_the_part_bit_model(nq_file) -> None:
    import nqformat.torch as nqt

    path, calibration = nq_file
    part = nqt.load(path, "part", module=small_cnn(1))
    full = nqt.load(path, "full", module=small_cnn(1))
    assert calibration.calibrated_on == "part"
    assert cal(part, bits=4).ranges == calibration.ranges
    assert cal(full, bits=4).ranges != calibration.ranges


def test_loading_a_file_with_ranges_leaves_activations_float_by_default(nq_file) -> None:
    import nqformat
    import nqformat.torch as nqt

    path, calibration = nq_file
    model = nqt.load(path, "part", module=small_cnn(1))
    assert all(not m._forward_pre_hooks for m in model.modules())
    with nqformat.open(path) as f:
        assert ActCalibration.from_metadata(f.metadata[aq.META_KEY]) == calibration


def test_ranges_from_file_metadata_stay_applied_across_a_switch(nq_file) -> None:
    import nqformat
    import nqformat.torch as nqt

    path, _ = nq_file
    x = torch.rand(2, *SHAPE)
    model = nqt.load(path, "part", module=small_cnn(1))
    with nqformat.open(path) as f:
        meta = f.metadata
    handle = aq.apply_from_metadata(model, meta)
    nqt.switch(model, "full")
    quantized_full = model(x)
    handle.remove()
    assert not torch.equal(quantized_full, model(x))
    with aq.apply_from_metadata(model, meta):
        assert torch.equal(model(x), quantized_full)


def test_calibrate_file_takes_the_batch_shape_from_the_file_metadata(tmp_path) -> None:
    import nqformat.torch as nqt

    path = tmp_path / "sized.nq"
    meta = {"model": {"data_config": {"input_size": [3, 20, 20]}}}
    nqt.convert_model(small_cnn(), path, n=8, h=4, metadata=meta)
    calibration = aq.calibrate_file(path, 8, module=small_cnn(1), batch_size=2)
    assert calibration.input_shape == (3, 20, 20)


def _documented_fake_quantize(x: np.ndarray, lo: float, hi: float, bits: int, signed: bool):
    """spec/metadata.md's bit-exact statement, in numpy: width in binary64 then rounded once to
    binary32, lo rounded to binary32 before the zero point, every other step a binary32 op."""
    f32 = np.float32
    width = f32(max(hi - lo, 1e-8))
    scale = f32(f32(2**bits - 1) / width)
    zero = f32(np.round(f32(scale * f32(lo))))
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if signed:
        zero = f32(zero + f32(2 ** (bits - 1)))
    q = np.clip(np.round((x.astype(f32) * scale).astype(f32) - zero), qmin, qmax).astype(f32)
    return ((q + zero).astype(f32) / scale).astype(f32)


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-50, 0, allow_subnormal=False),
    width=st.floats(0, 100, allow_subnormal=False),
    bits=st.integers(2, 10),
    seed=st.integers(0, 2**16),
)
def test_fake_quantize_is_the_bit_exact_formula_of_metadata_md(
    lo: float, width: float, bits: int, seed: int
) -> None:
    # lo and hi are arbitrary binary64 values (most not binary32), as another tool may write
    hi = lo + width
    signed = lo < 0
    x = np.random.default_rng(seed).uniform(lo - 1, hi + 1, 257).astype(np.float32)
    got = aq.fake_quantize(torch.from_numpy(x), ActRange(lo, hi, bits, signed)).numpy()
    want = _documented_fake_quantize(x, lo, hi, bits, signed)
    assert got.tobytes() == want.tobytes()
