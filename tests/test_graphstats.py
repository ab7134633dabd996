"""graphstats: moments through activations, what the graph walk predicts, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nqformat.torch import graphstats
from nqformat.torch.graphstats import input_statistics

F64 = np.float64


def _monte_carlo(m: float, s: float, fn, n: int = 400_000) -> tuple[float, float]:
    z = np.random.default_rng(0).standard_normal(n) * s + m
    y = fn(z)
    return float(y.mean()), float(y.var())


@settings(max_examples=40, deadline=None)
@given(
    m=st.floats(-8, 8),
    s=st.floats(0, 5),
    lo=st.sampled_from([-np.inf, 0.0, -1.0]),
    hi=st.sampled_from([np.inf, 6.0, 1.0]),
)
def test_clip_closed_form_matches_quadrature(m: float, s: float, lo: float, hi: float) -> None:
    mean, var = graphstats._clip_moments(np.array([m]), np.array([s]), lo, hi)
    # a fine grid: the clip's kinks make coarse quadrature error O(step)
    t = np.linspace(-10, 10, 200_001)
    p = np.exp(-0.5 * t * t)
    p /= p.sum()
    y = np.clip(m + s * t, lo, hi)
    qm = y @ p
    assert mean[0] == pytest.approx(qm, abs=1e-7 * (1 + s))
    assert var[0] == pytest.approx((y * y) @ p - qm * qm, abs=1e-6 * (1 + s * s))


def test_rectified_gaussian_of_standard_normal_is_the_textbook_value() -> None:
    mean, var = graphstats._clip_moments(np.array([0.0]), np.array([1.0]), 0.0, np.inf)
    assert mean[0] == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-12)
    assert var[0] == pytest.approx(0.5 - 1 / (2 * np.pi), rel=1e-12)


@pytest.mark.parametrize(
    ("act", "fn"),
    [
        (graphstats._SILU, graphstats._silu),
        (
            graphstats._GELU,
            lambda x: x * 0.5 * (1 + torch.erf(torch.from_numpy(x) / 2**0.5)).numpy(),
        ),
        (graphstats._HSWISH, graphstats._hardswish),
    ],
)
def test_smooth_activations_match_monte_carlo(act, fn) -> None:
    for m, s in [(0.0, 1.0), (1.5, 0.3), (-2.0, 2.0)]:
        st_in = graphstats._Stat(np.array([m]), np.array([s * s]), 1, "x")
        out = graphstats._apply(act, st_in)
        mc_mean, mc_var = _monte_carlo(m, s, fn)
        assert out.mean[0] == pytest.approx(mc_mean, abs=0.01 * (1 + s))
        assert out.var[0] == pytest.approx(mc_var, abs=0.02 * (1 + s * s))


class _Block(nn.Module):
    """BN -> ReLU6 -> conv, a residual sum, average pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU6()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for bn in (self.bn, self.bn2):
                bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 0.0]))
                bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stem(x))
        y = self.conv(self.act(x))
        y = self.bn2(y) + x  # residual sum of two BN outputs
        return self.fc(torch.flatten(self.pool(y), 1))


def test_bn_relu6_conv_gets_clipped_gaussian_moments() -> None:
    model = _Block().eval()
    stats = input_statistics(model)
    assert stats.traced == "fx"
    got = stats.for_module(model.conv)
    assert got is not None and "ReLU6" in got.source and "bn" in got.source
    gamma = np.array([0.5, 1.0, 2.0, 0.0])
    beta = np.array([-1.0, 0.0, 1.0, 3.0])
    mean, var = graphstats._clip_moments(beta, gamma, 0.0, 6.0)
    np.testing.assert_allclose(got.mean, mean)
    np.testing.assert_allclose(got.var, var)
    assert got.mean[3] == 3.0 and got.var[3] == 0.0  # gamma = 0: a constant channel


def test_residual_sum_and_pooling_reach_the_classifier() -> None:
    model = _Block().eval()
    got = input_statistics(model).for_module(model.fc)
    assert got is not None and got.source.startswith("sum(")
    beta = np.array([-1.0, 0.0, 1.0, 3.0])
    gamma = np.array([0.5, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(got.mean, 2 * beta)
    np.testing.assert_allclose(got.var, 2 * gamma**2)


def test_layer_fed_by_the_image_gets_no_prediction() -> None:
    model = _Block().eval()
    stats = input_statistics(model)
    assert stats.for_module(model.stem) is None
    assert "not predicted" in stats.reason[id(model.stem)]


def test_prediction_reads_parameters_only_and_keeps_training_mode() -> None:
    model = _Block().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    input_statistics(model)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _Untraceable(nn.Module):
    """Data-dependent control flow at the top: fx cannot trace it, its children can."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:  # branches on values
            y = -y
        return self.head(y.mean(dim=(2, 3)))


def test_untraceable_model_falls_back_to_tracing_each_child() -> None:
    model = _Untraceable().eval()
    stats = input_statistics(model)
    assert stats.traced == "fx-per-child" and stats.error
    got = stats.for_module(model.body[2])
    assert got is not None and "ReLU" in got.source
    assert stats.for_module(model.head) is None


def test_layer_norm_feeds_transformer_linears() -> None:
    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(6)
            self.fc1 = nn.Linear(6, 12)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(12, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(self.act(self.fc1(self.norm(x))))

    model = Mlp().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2)
        model.norm.bias.uniform_(-1, 1)
    stats = input_statistics(model)
    got = stats.for_module(model.fc1)
    assert got is not None and got.source.startswith("LayerNorm")
    np.testing.assert_allclose(got.mean, model.norm.bias.detach().double().numpy())
    np.testing.assert_allclose(got.var, model.norm.weight.detach().double().numpy() ** 2)
    assert stats.for_module(model.fc2) is None  # fed by a Linear: no norm to predict from


def test_view_as_flatten_keeps_channels_but_a_channel_shuffle_does_not() -> None:
    class Net(nn.Module):
        def __init__(self, shuffle: bool) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)
            self.shuffle = shuffle

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn(x))
            if self.shuffle:
                b, c, h, w = y.shape
                y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            z = nn.functional.adaptive_avg_pool2d(y, 1)
            return self.fc(z.view(z.size(0), -1)) + self.conv(y).mean()

    plain, shuffled = Net(False).eval(), Net(True).eval()
    stats = input_statistics(plain)
    assert stats.for_module(plain.fc) is not None
    assert stats.for_module(plain.conv) is not None
    stats = input_statistics(shuffled)
    assert stats.for_module(shuffled.fc) is None
    assert stats.for_module(shuffled.conv) is None
