"""convert_model: which tensors are nested, what META says, and that the bytes are right."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from _torch_models import NESTED, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nqformat
from nqformat.container.spec import DType, Kind
from nqformat.errors import NQError, QuantizationError
from nqformat.quant import nest_quantize
from nqformat.torch import auto_h, convert_model, quantized_layers
from nqformat.torch.convert import H_RULE_LARGE_BYTES, H_RULE_SMALL_BYTES

MIB = 1 << 20


# --- which layers --------------------------------------------------------------------------------


def test_layers_inside_module_list_and_dict_are_quantized() -> None:
    chosen, kept = quantized_layers(tiny())
    assert chosen == ["conv", "blocks.0", "blocks.1", "heads.cls"]
    assert kept == []


def test_keep_float_patterns_match_module_names() -> None:
    chosen, kept = quantized_layers(tiny(), ["blocks.*", "conv"])
    assert chosen == ["heads.cls"]
    assert kept == ["conv", "blocks.0", "blocks.1"]


def test_nested_and_raw_tensors_follow_the_contract(tmp_path: pathlib.Path) -> None:
    model = tiny()
    report = convert_model(model, tmp_path / "t.nq", n=8, h=5)
    with nqformat.open(report.path) as f:
        kinds = {t.name: t.kind for t in f.tensors()}
        dtypes = {t.name: t.dtype for t in f.tensors()}
        assert f.names() == list(model.state_dict())  # state_dict order
    assert {k for k, v in kinds.items() if v is Kind.NESTED} == NESTED
    assert dtypes["bn.num_batches_tracked"] is DType.I64
    assert dtypes["steps"] is DType.I64
    assert dtypes["mask"] is DType.BOOL
    assert dtypes["token"] is DType.F32
    assert (report.nested_tensors, report.raw_tensors) == (4, len(kinds) - 4)
    assert report.nested_elements == sum(model.state_dict()[k].numel() for k in NESTED)


def test_keep_float_layer_is_stored_raw_and_exact(tmp_path: pathlib.Path) -> None:
    model = tiny()
    report = convert_model(model, tmp_path / "t.nq", n=8, h=5, keep_float=["heads.*"])
    assert report.kept_float == ("heads.cls",)
    with nqformat.open(report.path) as f:
        assert f.info("heads.cls.weight").kind is Kind.RAW
        assert np.array_equal(f.read("heads.cls.weight"), model.heads.cls.weight.detach().numpy())
        assert f.metadata["quant"]["keep_float"] == ["heads.*"]


# --- values --------------------------------------------------------------------------------------


def test_file_holds_exactly_the_quantizers_output(tmp_path: pathlib.Path) -> None:
    model = tiny()
    path = convert_model(model, tmp_path / "t.nq", n=6, h=3, rounding="rtn").path
    sd = model.state_dict()
    with nqformat.open(path) as f:
        for name in f.names():
            if name in NESTED:
                ref = nest_quantize(sd[name].numpy(), 6, 3, rounding="rtn")
                assert np.array_equal(f.codes(name, "high"), ref.w_high)
                assert np.array_equal(f.codes(name, "low"), ref.w_low)
                for mode in ("part", "full"):
                    assert f.read(name, mode).tobytes() == ref.dequantize(mode).tobytes()
            else:
                assert f.read(name).tobytes() == sd[name].numpy().tobytes()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    out_ch=st.integers(1, 6),
    in_ch=st.integers(1, 5),
    k=st.sampled_from([1, 3]),
    n=st.integers(2, 8),
    data=st.data(),
)
def test_round_trip_matches_dequantize_for_any_shape_and_width(
    tmp_path: pathlib.Path, out_ch: int, in_ch: int, k: int, n: int, data: st.DataObject
) -> None:
    h = data.draw(st.integers(1, n - 1))
    rounding = data.draw(st.sampled_from(["squant", "rtn", "bitshift"]))
    part_params = data.draw(st.sampled_from(["refit", "inherited"]))
    torch.manual_seed(out_ch * 100 + in_ch * 10 + k)
    model = nn.Sequential(nn.Conv2d(in_ch, out_ch, k), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, in_ch, 4, 4))  # materialize the lazy layer
    path = tmp_path / f"p{n}{h}.nq"
    convert_model(model, path, n=n, h=h, rounding=rounding, part_params=part_params)
    with nqformat.open(path) as f:
        for name in ("0.weight", "2.weight"):
            w = model.state_dict()[name].numpy()
            ref = nest_quantize(w, n, h, rounding=rounding, part_params=part_params)
            assert np.array_equal(f.read(name, "full"), ref.dequantize("full"))
            assert np.array_equal(f.read(name, "part"), ref.dequantize("part"))


def test_half_precision_weights_keep_their_dtype(tmp_path: pathlib.Path) -> None:
    model = tiny().half()
    model.token.data = model.token.data.to(torch.bfloat16)
    path = convert_model(model, tmp_path / "t.nq", n=8, h=4).path
    with nqformat.open(path) as f:
        assert f.info("conv.weight").dtype is DType.F16
        assert f.info("conv.bias").dtype is DType.F16
        assert f.info("token").dtype is DType.BF16
        ref = nest_quantize(model.conv.weight.detach().float().numpy(), 8, 4)
        assert np.array_equal(f.read("conv.weight", "full"), ref.dequantize("full"))


# --- META, determinism, reports ------------------------------------------------------------------


def test_meta_records_quant_settings_and_caller_metadata(tmp_path: pathlib.Path) -> None:
    meta = {"model": {"zoo": "custom", "arch": "Tiny"}, "note": "x"}
    path = convert_model(
        tiny(), tmp_path / "t.nq", n=8, h=6, part_params="inherited", metadata=meta
    ).path
    with nqformat.open(path) as f:
        quant = f.metadata["quant"]
        assert f.metadata["model"] == meta["model"]
        assert f.metadata["note"] == "x"
    assert (quant["n"], quant["h"], quant["l"]) == (8, 6, 2)
    assert (quant["rounding"], quant["part_params"]) == ("squant", "inherited")
    assert quant["h_rule"] == "explicit"


def test_same_model_gives_the_same_bytes(tmp_path: pathlib.Path) -> None:
    a = convert_model(tiny(), tmp_path / "a.nq", n=8, h=5).path
    b = convert_model(tiny(), tmp_path / "b.nq", n=8, h=5).path
    assert a.read_bytes() == b.read_bytes()


def test_compressed_file_holds_the_same_weights(tmp_path: pathlib.Path) -> None:
    model = tiny()
    plain = convert_model(model, tmp_path / "a.nq", n=8, h=5).path
    packed = convert_model(model, tmp_path / "b.nq", n=8, h=5, compress=True).path
    with nqformat.open(plain) as f, nqformat.open(packed) as g:
        for name in f.names():
            for mode in ("part", "full"):
                assert np.array_equal(f.read(name, mode), g.read(name, mode))


def test_report_sizes_match_the_file(tmp_path: pathlib.Path) -> None:
    report = convert_model(tiny(), tmp_path / "t.nq", n=8, h=5)
    with nqformat.open(report.path) as f:
        assert (report.part_end, report.full_end) == (f.part_end, f.full_end)
    assert report.file_size == report.path.stat().st_size
    assert report.bits_per_weight == pytest.approx(8 * report.full_end / report.elements)
    assert report.part_bits_per_weight < report.bits_per_weight
    assert report.seconds > 0


def test_progress_is_called_once_per_tensor(tmp_path: pathlib.Path) -> None:
    calls: list[tuple[str, int, int]] = []
    model = tiny()
    convert_model(model, tmp_path / "t.nq", n=8, h=5, progress=lambda *a: calls.append(a))
    total = len(model.state_dict())
    assert [c[1] for c in calls] == list(range(1, total + 1))
    assert {c[2] for c in calls} == {total}
    assert [c[0] for c in calls] == list(model.state_dict())


# --- h = auto (paper Eq. 12) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size", "h"),
    [
        (8, H_RULE_SMALL_BYTES - 1, 5),
        (8, H_RULE_SMALL_BYTES, 4),
        (8, H_RULE_LARGE_BYTES - 1, 4),
        (8, H_RULE_LARGE_BYTES, 3),
        (6, 10 * MIB, 4),
        (6, 100 * MIB, 3),
        (6, 1000 * MIB, 2),
        (7, 10 * MIB, 4),  # n/2 rounds down
        (2, 10 * MIB, 1),  # clamped to n - 1
        (2, 1000 * MIB, 1),  # clamped to 1
    ],
)
def test_auto_h_follows_the_papers_rule(n: int, size: int, h: int) -> None:
    assert auto_h(n, size) == h


def test_auto_h_thresholds_are_30_and_300_mib() -> None:
    assert (H_RULE_SMALL_BYTES, H_RULE_LARGE_BYTES) == (30 * MIB, 300 * MIB)


def test_h_auto_in_convert_model_is_recorded(tmp_path: pathlib.Path) -> None:
    report = convert_model(tiny(), tmp_path / "t.nq", n=8, h="auto")
    assert report.h == 5  # a tiny model is far below 30 MiB
    with nqformat.open(report.path) as f:
        assert f.h == 5
        assert f.metadata["quant"]["h_rule"].startswith("auto: paper Eq. 12")


# --- failures ------------------------------------------------------------------------------------


def test_unknown_rounding_fails_before_writing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(QuantizationError, match="rounding must be one of"):
        convert_model(tiny(), tmp_path / "t.nq", n=8, h=5, rounding="nearest")
    assert not (tmp_path / "t.nq").exists()


def test_non_finite_weight_leaves_no_file(tmp_path: pathlib.Path) -> None:
    model = tiny()
    with torch.no_grad():
        model.blocks[1].weight[0, 0] = float("nan")
    with pytest.raises(QuantizationError):
        convert_model(model, tmp_path / "t.nq", n=8, h=5)
    assert list(tmp_path.iterdir()) == []


def test_invalid_h_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NQError):
        convert_model(tiny(), tmp_path / "t.nq", n=8, h=8)
    with pytest.raises(QuantizationError, match="auto"):
        convert_model(tiny(), tmp_path / "t.nq", n=8, h="high")
