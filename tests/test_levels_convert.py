"""Converting a model to a file of several levels (``--h 6,4``, spec §14) and reading it back."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner

import nqformat
from nqformat.cli import main
from nqformat.container.spec import Kind
from nqformat.torch import convert_model
from tests._torch_models import tiny

SMALL = "mobilenet_wd4"  # pytorchcv, 0.5 M parameters


@pytest.mark.parametrize("params", ["bn", "lsq", "reference"])
def test_the_top_two_levels_are_the_two_level_file(tmp_path: pathlib.Path, params: str) -> None:
    # INT(8|6|4) nests INT4 inside the INT6 code of INT(8|6): its 6- and 8-bit levels have
    # the same codes and the same fitted pairs as the INT(8|6) file, so identical values
    module = tiny()
    three = convert_model(module, tmp_path / "864.nq", n=8, h=(6, 4), params=params)
    two = convert_model(module, tmp_path / "86.nq", n=8, h=6, params=params)
    assert three.levels == (4, 6, 8) and two.levels == ()
    with nqformat.open(three.path) as f3, nqformat.open(two.path) as f2:
        assert f3.version == (1, 1) and f2.version == (1, 0)
        assert f3.metadata["quant"]["levels"] == [4, 6, 8]
        for info in f2.tensors():
            if info.kind is Kind.RAW:
                assert f3.read(info.name).tobytes() == f2.read(info.name).tobytes()
                continue
            assert f3.read(info.name, bits=8).tobytes() == f2.read(info.name, "full").tobytes()
            assert f3.read(info.name, bits=6).tobytes() == f2.read(info.name, "part").tobytes()
            q6 = f3.level_codes(info.name, 6).astype(np.int32)
            q4 = f3.level_codes(info.name, 4).astype(np.int32)
            assert np.abs(q6 - 4 * q4).max() <= 4  # the INT4 code is the INT6 one rounded
        assert f3.verify() == []


def test_cli_converts_every_level_and_inspect_lists_them(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "m.nq"
    runner = CliRunner()
    res = runner.invoke(
        main, ["convert", SMALL, "--n", "8", "--h", "6,4", "--random-init", "-o", str(out)]
    )
    assert res.exit_code == 0, res.stderr
    assert "INT(8|6|4)" in res.stdout and "6-bit" in res.stdout
    with nqformat.open(out) as f:
        assert f.levels == (4, 6, 8)
        ends = f.level_ends
    res = runner.invoke(main, ["inspect", str(out)])
    assert res.exit_code == 0, res.stderr
    assert "INT(8|6|4)" in res.stdout and f"6-bit {ends[1]:,} B" in res.stdout
    assert "residuals of 3, 3 bits" in res.stdout and "6-bit model (prefix)" in res.stdout
    res = runner.invoke(main, ["inspect", "--json", str(out)])
    data = json.loads(res.stdout)
    assert (data["levels"], data["level_ends"]) == ([4, 6, 8], list(ends))
    assert runner.invoke(main, ["verify", str(out)]).exit_code == 0


@pytest.mark.parametrize("h", ["4,6", "6,6", "8,4", "6,0", "6,x"])
def test_cli_refuses_widths_that_do_not_fall_strictly_below_n(tmp_path, h: str) -> None:
    res = CliRunner().invoke(
        main, ["convert", SMALL, "--n", "8", "--h", h, "--random-init", "-o", str(tmp_path / "m")]
    )
    assert res.exit_code != 0
    assert not (tmp_path / "m").exists()


def _state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_load_and_switch_reach_every_level_bit_exact(tmp_path: pathlib.Path) -> None:
    import torch

    import nqformat.torch as nqt

    path = tmp_path / "m.nq"
    convert_model(tiny(), path, n=8, h=(6, 4))
    fresh = {b: _state(nqt.load(path, bits=b, module=tiny())) for b in (4, 6, 8)}
    with nqformat.open(path) as f:
        for b, state in fresh.items():
            for info in f.tensors():
                want = f.read(info.name, bits=b)
                assert np.array_equal(state[info.name].numpy(), want), (b, info.name)
    assert all(
        torch.equal(fresh[4][k], v) for k, v in _state(nqt.load(path, module=tiny())).items()
    )
    module = nqt.load(path, module=tiny())
    labels = {4: "part", 6: "6-bit", 8: "full"}
    for b in (6, 8, 4, 8, 6, 4, 6):
        report = nqt.switch(module, bits=b)
        assert report.to_mode == labels[b]
        assert set(nqt.modes(module).values()) == {labels[b]}
        state = _state(module)
        assert all(torch.equal(state[k], fresh[b][k]) for k in state), b
    assert nqt.switch(module, "full").to_mode == "full"
    assert nqt.switch(module, "part").bytes_paged_out > 0
    with pytest.raises(nqformat.errors.NQError):
        nqt.switch(module, bits=5)
    nqt.close(module)


def test_a_prefix_loads_its_levels_and_refuses_finer_ones(tmp_path: pathlib.Path) -> None:
    import nqformat.torch as nqt
    from nqformat.errors import PartOnlyError

    path = tmp_path / "m.nq"
    convert_model(tiny(), path, n=8, h=(6, 4))
    with nqformat.open(path) as f:
        end6 = f.level_ends[1]
    cut = tmp_path / "cut.nq"
    cut.write_bytes(path.read_bytes()[:end6])
    module = nqt.load(cut, bits=6, module=tiny())
    with pytest.raises(PartOnlyError):
        nqt.switch(module, "full")
    assert nqt.modes(module)  # still the 6-bit model, usable
    cut.write_bytes(path.read_bytes())  # the download completes: full becomes reachable
    assert nqt.switch(module, bits=8).to_mode == "full"


def test_codes_runtime_serves_every_level_bit_exact(tmp_path: pathlib.Path) -> None:
    import torch

    import nqformat.torch as nqt

    path = tmp_path / "m.nq"
    convert_model(tiny(), path, n=8, h=(6, 4))
    x = torch.randn(2, 3, 8, 8)
    want = {}
    for b in (4, 6, 8):
        ref = nqt.load(path, bits=b, module=tiny()).eval()
        want[b] = (ref(x), _state(ref))
    for b in (4, 6, 8):  # loaded directly at each level
        module = nqt.load(path, bits=b, module=tiny(), resident="codes").eval()
        assert torch.equal(module(x), want[b][0])
        nqt.close(module)
    module = nqt.load(path, module=tiny(), resident="codes").eval()
    labels = {4: "part", 6: "6-bit", 8: "full"}
    for b in (6, 8, 4, 6, 4, 8):  # and switched there, codes staying resident
        report = nqt.switch(module, bits=b)
        assert report.to_mode == labels[b] and set(nqt.modes(module).values()) == {labels[b]}
        assert torch.equal(module(x), want[b][0])
        state = module.state_dict()
        assert all(torch.equal(state[k], want[b][1][k]) for k in want[b][1])
    with pytest.raises(nqformat.errors.NQError):
        nqt.switch(module, bits=6, layers=["conv"])
    nqt.close(module)
