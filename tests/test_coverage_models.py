"""Every model family of the NestQuant paper converts and loads back exactly in both modes.

For the smallest variant of each family (random weights: no pretrained weights are reachable
here), the file is converted, loaded back in part and full mode with the architecture rebuilt
from META, and checked: every nested weight equals, bit for bit, what the quantizer's
``NestQuantResult.dequantize`` gave during conversion; every other tensor is restored exactly;
part mode reads nothing past ``part_end``; a forward pass runs. Two small CNNs run by default,
the rest are ``slow``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from _torch_models import FAMILIES

import nqformat.torch as nqt
import nqformat.torch.convert as convert_mod
from nqformat import zoo
from nqformat.container.spec import Kind

FAST = {"mobilenet_wd4", "mobilenetv2_wd4"}
N, H = 8, 5


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(arch, id=family, marks=() if arch in FAST else (pytest.mark.slow,))
        for family, arch in FAMILIES
    ],
)
def test_family_round_trips_exactly_in_both_modes(
    arch: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, meta = zoo.build(zoo.resolve(arch), random_init=True, seed=1)
    expected = {k: v.clone() for k, v in original.state_dict().items()}

    dequantized: list[dict[str, np.ndarray]] = []  # in call order = nested tensor order
    real = convert_mod.nest_quantize

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        dequantized.append({m: result.dequantize(m) for m in ("part", "full")})
        return result

    monkeypatch.setattr(convert_mod, "nest_quantize", recording)
    # params="lsq": the file then holds exactly nest_quantize's pairs, recorded above (the BN
    # fit's pairs are checked in tests/test_convert_params.py)
    report = nqt.convert_model(
        original, tmp_path / "m.nq", n=N, h=H, params="lsq", metadata={"model": meta}
    )
    layers, _ = nqt.quantized_layers(original)
    assert report.nested_tensors == len(layers) == len(dequantized) > 0

    torch.manual_seed(0)
    x = torch.randn(1, *meta["data_config"]["input_size"])
    for mode in ("part", "full"):
        model = nqt.load(report.path, mode)
        handle = nqt.runtime(model)
        f = handle.file
        nested = [t.name for t in f.tensors() if t.kind is Kind.NESTED]
        assert nested == [f"{name}.weight" for name in layers]
        got = model.state_dict()
        assert got.keys() == expected.keys()
        for name, ref in zip(nested, dequantized, strict=True):
            assert got[name].numpy().tobytes() == ref[mode].tobytes(), name
        for name in expected.keys() - set(nested):
            assert got[name].dtype == expected[name].dtype, name
            assert torch.equal(got[name], expected[name]), name
        if mode == "part":
            assert f.max_offset_read <= f.part_end
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 1000)
        assert torch.isfinite(out).all()
        nqt.close(model)
