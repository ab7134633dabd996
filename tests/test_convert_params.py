"""convert_model(params=...): the codes never change, `reference` is the paper's parameters,
`bn` fits the predicted inputs, and META says which layer got which fit."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from _torch_models import NESTED, tiny
from torch import nn

import nqformat
from nqformat.errors import QuantizationError
from nqformat.quant import nest_quantize
from nqformat.quant.affine import dequantize_codes, full_params, inherited_part_params
from nqformat.torch import convert_model
from nqformat.torch.convert import DEFAULT_PARAMS, Params

VECTORS = pathlib.Path("/work/shared/vectors/squant_nest_public.npz")
F32 = np.float32
ALL = [p.value for p in Params]


class _Fed(nn.Module):
    """BatchNorm -> ReLU -> the layer under test, so the BN fit has inputs to use."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        o, i = weight.shape[:2]
        if weight.ndim == 2:
            self.bn = nn.BatchNorm1d(i)
            self.layer: nn.Module = nn.Linear(i, o, bias=False)
        else:
            groups = o if i == 1 else 1
            self.bn = nn.BatchNorm2d(i * groups)
            k = weight.shape[2]
            self.layer = nn.Conv2d(i * groups, o, k, groups=groups, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.from_numpy(weight))
            self.bn.weight.copy_(torch.linspace(0.2, 2.0, self.bn.num_features))
            self.bn.bias.copy_(torch.linspace(-1.0, 1.5, self.bn.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.relu(self.bn(x)))


def _cases() -> list[str]:
    if not VECTORS.is_file():
        return []
    with np.load(VECTORS) as d:
        return sorted({k.split(".")[0] for k in d.files})


@pytest.mark.skipif(not VECTORS.is_file(), reason="public SQuant vectors not present")
@pytest.mark.parametrize("case", _cases())
def test_codes_match_the_reference_and_reference_params_are_the_papers(
    tmp_path: pathlib.Path, case: str
) -> None:
    with np.load(VECTORS) as d:
        v = {k.split(".", 1)[1]: d[k] for k in d.files if k.startswith(case + ".")}
    n, h = int(v["n"]), int(v["h"])
    model = _Fed(v["weight"].astype(F32)).eval()
    files = {}
    for p in ALL:
        files[p] = convert_model(model, tmp_path / f"{p}.nq", n=n, h=h, params=p).path
    for p, path in files.items():
        with nqformat.open(path) as f:
            assert np.array_equal(f.codes("layer.weight", "high"), v["w_high"]), p
            assert np.array_equal(f.codes("layer.weight", "low"), v["w_low"]), p
            full, part = f.read("layer.weight", "full"), f.read("layer.weight", "part")
            if p == "reference":
                s, z = v["scale"], v["zero_point"]
                want_full = dequantize_codes(v["w_int"], *full_params(s, z))
                want_part = dequantize_codes(v["w_high"], *inherited_part_params(s, z, n - h))
                assert full.tobytes() == want_full.tobytes()
                assert part.tobytes() == want_part.tobytes()
            assert f.metadata["quant"]["params"] == p


def test_bn_fit_lowers_the_expected_output_error_it_targets(tmp_path: pathlib.Path) -> None:
    w = np.random.default_rng(3).standard_normal((16, 8, 3, 3)).astype(F32)
    model = _Fed(w).eval()
    gamma = model.bn.weight.detach().double().numpy()
    beta = model.bn.bias.detach().double().numpy()
    from nqformat.torch.graphstats import _clip_moments

    mu, var = _clip_moments(beta, gamma, 0.0, np.inf)
    mu_e = np.repeat(mu, 9)[None, :]
    var_e = np.repeat(var, 9)[None, :]

    def cost(wq: np.ndarray) -> float:
        r = (w - wq).reshape(16, -1).astype(np.float64)
        return float((r * r * var_e).sum() + ((r * mu_e).sum(axis=1) ** 2).sum())

    got = {}
    for p in ALL:
        path = convert_model(model, tmp_path / f"{p}.nq", n=8, h=5, params=p).path
        with nqformat.open(path) as f:
            got[p] = (f.read("layer.weight", "full"), f.read("layer.weight", "part"))
            if p == "bn":
                fit = f.metadata["quant"]["params_fit"]
                assert fit["layers"]["layer.weight"]["fit"] == "bn"
                assert "BatchNorm2d bn" in fit["layers"]["layer.weight"]["inputs"]
                assert (fit["bn_layers"], fit["lsq_layers"]) == (1, 0)
    for mode in (0, 1):
        assert cost(got["bn"][mode]) < cost(got["lsq"][mode])
        assert cost(got["bn"][mode]) < cost(got["reference"][mode])


def test_default_is_bn_and_part_params_alone_keeps_its_old_meaning(tmp_path: pathlib.Path) -> None:
    model = tiny()
    assert DEFAULT_PARAMS is Params.BN
    with nqformat.open(convert_model(model, tmp_path / "d.nq", n=8, h=4).path) as f:
        assert f.metadata["quant"]["params"] == "bn"
        assert f.metadata["quant"]["part_params"] == "refit"
    for old, new in (("refit", "lsq"), ("inherited", "reference")):
        path = convert_model(model, tmp_path / f"{old}.nq", n=8, h=4, part_params=old).path
        with nqformat.open(path) as f:
            assert f.metadata["quant"]["params"] == new
            assert "params_fit" not in f.metadata["quant"]


def test_lsq_file_holds_nest_quantize_refit_output(tmp_path: pathlib.Path) -> None:
    model = tiny()
    path = convert_model(model, tmp_path / "l.nq", n=8, h=5, params="lsq").path
    sd = model.state_dict()
    with nqformat.open(path) as f:
        for name in NESTED:
            ref = nest_quantize(sd[name].numpy(), 8, 5)
            for mode in ("full", "part"):
                assert f.read(name, mode).tobytes() == ref.dequantize(mode).tobytes()


def test_bn_meta_lists_every_layer_with_its_fit(tmp_path: pathlib.Path) -> None:
    model = tiny()
    with nqformat.open(convert_model(model, tmp_path / "b.nq", n=8, h=4).path) as f:
        fit = f.metadata["quant"]["params_fit"]
    assert set(fit["layers"]) == NESTED
    assert fit["traced"] == "fx"
    # Tiny: conv reads the image; blocks.0 reads relu(bn) pooled, plus a token (a sum with a
    # parameter: no prediction); so only what the graph supports gets "bn"
    assert fit["layers"]["conv.weight"] == {"fit": "lsq"}
    assert fit["bn_layers"] + fit["lsq_layers"] == len(NESTED)


@pytest.mark.parametrize(("params", "part"), [("lsq", "inherited"), ("reference", "refit")])
def test_conflicting_params_and_part_params_are_refused(
    tmp_path: pathlib.Path, params: str, part: str
) -> None:
    with pytest.raises(QuantizationError):
        convert_model(tiny(), tmp_path / "x.nq", n=8, h=4, params=params, part_params=part)
    assert not (tmp_path / "x.nq").exists()


def test_unknown_params_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(QuantizationError, match="params"):
        convert_model(tiny(), tmp_path / "x.nq", n=8, h=4, params="magic")


def test_cli_params_option_is_recorded_and_inspect_shows_it(tmp_path: pathlib.Path) -> None:
    import json

    from click.testing import CliRunner

    from nqformat.cli import main

    out = tmp_path / "m.nq"
    args = ["convert", "mobilenet_wd4", "--n", "8", "--h", "5", "--random-init", "-o", str(out)]
    for choice in ("reference", None):
        extra = ["--params", choice] if choice else []
        result = CliRunner().invoke(main, [*args, *extra, "--force"])
        assert result.exit_code == 0, result.output
        want = choice or "bn"
        assert f"params {want}" in result.stdout
        shown = CliRunner().invoke(main, ["inspect", str(out), "--layers"])
        assert shown.exit_code == 0
        line = next(x for x in shown.stdout.splitlines() if x.startswith("params"))
        assert line.split()[1] == want
        data = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
        assert data["params"] == want
        if choice is None:
            assert "layers BN fit" in line
            assert data["params_fit"]["bn_layers"] > 0
        else:
            assert data["params_fit"] is None


def test_cli_refuses_conflicting_params_and_part_params(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from nqformat.cli import main

    out = tmp_path / "m.nq"
    args = ["convert", "mobilenet_wd4", "--n", "8", "--h", "5", "--random-init", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--params", "bn", "--part-params", "inherited"])
    assert result.exit_code != 0
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "min_bn"),
    [
        ("resnet10", 5),
        ("mobilenetv2_wd4", 40),
        pytest.param("deit_tiny_patch16_224", 20, marks=pytest.mark.slow),
    ],
)
def test_bn_fit_runs_on_every_zoo_family(tmp_path: pathlib.Path, name: str, min_bn: int) -> None:
    """Random weights (no accuracy claim): the graph traces, most layers get a prediction, and
    the codes equal the LSQ file's."""
    from nqformat import zoo

    module, meta = zoo.build(zoo.resolve(name), random_init=True)
    # fresh norms are gamma = 1, beta = 0 everywhere: uniform input moments, for which the
    # output-error fit is exactly least squares; give them per-channel variety
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-1.0, 2.0)
    bn = convert_model(module, tmp_path / "bn.nq", n=8, h=5, metadata={"model": meta}).path
    lsq = convert_model(module, tmp_path / "l.nq", n=8, h=5, params="lsq").path
    with nqformat.open(bn) as f, nqformat.open(lsq) as g:
        fit = f.metadata["quant"]["params_fit"]
        assert fit["traced"] == "fx"
        assert fit["bn_layers"] >= min_bn
        changed = 0
        for key in fit["layers"]:
            assert np.array_equal(f.codes(key, "high"), g.codes(key, "high"))
            assert np.array_equal(f.codes(key, "low"), g.codes(key, "low"))
            w_bn, w_lsq = f.read(key, "part"), g.read(key, "part")
            assert np.isfinite(w_bn).all()
            changed += not np.array_equal(w_bn, w_lsq)
        assert changed >= fit["bn_layers"] // 2  # the fit did something where it had inputs
