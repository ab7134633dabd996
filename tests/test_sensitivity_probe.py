"""The probe's synthetic batch (nqformat.torch.sensitivity.probe_batch): seeded, photo-like
(1/f) noise by default, white noise on request and for inputs without two spatial axes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nqformat.torch.sensitivity import (  # noqa: E402
    PROBE_INPUTS,
    ProbeInputs,
    probe_batch,
)


def _radial_power(x: torch.Tensor) -> tuple[float, float]:
    """Mean power of the lowest and the highest quarter of spatial frequencies."""
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x.double()).abs() ** 2
    fy, fx = torch.fft.fftfreq(h), torch.fft.fftfreq(w)
    f = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    low = (f > 0) & (f <= f.max() / 4)
    high = f >= 3 * f.max() / 4
    return float(power[..., low].mean()), float(power[..., high].mean())


def test_default_probe_batch_is_pink_zero_mean_unit_variance_per_image_and_channel() -> None:
    assert PROBE_INPUTS is ProbeInputs.PINK
    x = probe_batch((3, 32, 40), images=4, seed=0)
    assert x.shape == (4, 3, 32, 40) and x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(x.std(dim=(-2, -1)), torch.ones(4, 3), atol=1e-5)
    low, high = _radial_power(x)
    assert low > 20 * high  # 1/f amplitude: power falls as 1/f² (white noise: about 1)


def test_white_probe_batch_has_a_flat_spectrum() -> None:
    x = probe_batch((3, 32, 40), images=4, seed=0, inputs="white")
    low, high = _radial_power(x)
    assert 0.5 < low / high < 2.0
    assert torch.equal(x, torch.randn((4, 3, 32, 40), generator=torch.Generator().manual_seed(0)))


def test_probe_batch_is_deterministic_per_seed() -> None:
    a, b = probe_batch((3, 16, 16), 2, 7), probe_batch((3, 16, 16), 2, 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, probe_batch((3, 16, 16), 2, 8))


def test_inputs_without_two_spatial_axes_get_white_noise() -> None:
    x = probe_batch((4,), images=5, seed=0)
    assert torch.equal(x, torch.randn((5, 4), generator=torch.Generator().manual_seed(0)))


def test_unknown_input_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="blue"):
        probe_batch((3, 8, 8), inputs="blue")
