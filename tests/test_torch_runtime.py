"""The switchable runtime: load in either mode, switch both ways, never touch LOW in part mode."""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest
import torch
from _torch_models import NESTED, tiny

import nqformat
import nqformat.torch as nqt
from nqformat import zoo
from nqformat.errors import ChecksumError, NQError, PartOnlyError
from nqformat.quant import nest_quantize

N, H = 8, 5


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(-1), b[k].view(-1)) for k in a
    )


@pytest.fixture
def tiny_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return nqt.convert_model(tiny(), tmp_path / "tiny.nq", n=N, h=H).path


@pytest.fixture
def zoo_file(tmp_path: pathlib.Path) -> pathlib.Path:
    module, meta = zoo.build(zoo.resolve("test_vit"), random_init=True, seed=5)
    return nqt.convert_model(module, tmp_path / "vit.nq", n=N, h=H, metadata={"model": meta}).path


def _truncate(path: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    with nqformat.open(path) as f:
        part_end = f.part_end
    dst.write_bytes(path.read_bytes()[:part_end])
    return dst


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["part", "full"])
def test_loaded_weights_are_the_quantizers_dequantized_output(tiny_file, mode) -> None:
    original = tiny()
    model = nqt.load(tiny_file, mode, module=tiny(seed=99))
    got, want = model.state_dict(), original.state_dict()
    for name in want:
        if name in NESTED:
            ref = nest_quantize(want[name].numpy(), N, H).dequantize(mode)
            assert got[name].numpy().tobytes() == ref.tobytes()
        else:
            assert torch.equal(got[name], want[name])
    nqt.close(model)


def test_architecture_is_rebuilt_from_meta(zoo_file) -> None:
    model = nqt.load(zoo_file, "full")
    assert type(model).__name__ == "VisionTransformer"
    assert not model.training
    out = model(torch.zeros(1, 3, 160, 160))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    nqt.close(model)


def test_file_without_model_meta_needs_a_module(tiny_file) -> None:
    with pytest.raises(NQError, match="module="):
        nqt.load(tiny_file)


def test_module_that_does_not_fit_is_refused(tiny_file) -> None:
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(NQError, match="does not fit the module"):
        nqt.load(tiny_file, module=other)


def test_invalid_mode_is_refused(tiny_file) -> None:
    with pytest.raises(NQError, match="mode must be"):
        nqt.load(tiny_file, "half", module=tiny())


# --- part mode never reads LOW -------------------------------------------------------------------


def test_part_mode_reads_nothing_past_part_end(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny())
    f = nqt.runtime(model).file
    assert 0 < f.max_offset_read <= f.part_end
    assert not f.low_resident
    nqt.close(model)


def test_part_only_prefix_loads_the_same_part_model(tiny_file, tmp_path) -> None:
    prefix = _truncate(tiny_file, tmp_path / "prefix.nq")
    a = nqt.load(tiny_file, "part", module=tiny())
    b = nqt.load(prefix, "part", module=tiny())
    assert _bit_equal(_state(a), _state(b))
    nqt.close(a)
    nqt.close(b)


def test_part_only_prefix_cannot_load_or_switch_to_full(tiny_file, tmp_path) -> None:
    prefix = _truncate(tiny_file, tmp_path / "prefix.nq")
    with pytest.raises(PartOnlyError):
        nqt.load(prefix, "full", module=tiny())
    model = nqt.load(prefix, "part", module=tiny())
    before = _state(model)
    with pytest.raises(PartOnlyError):
        nqt.switch(model, "full")
    assert nqt.runtime(model).mode == "part"
    assert _bit_equal(_state(model), before)
    nqt.close(model)


def test_prefix_completed_later_switches_to_full(tiny_file, tmp_path) -> None:
    prefix = _truncate(tiny_file, tmp_path / "prefix.nq")
    model = nqt.load(prefix, "part", module=tiny())
    data = tiny_file.read_bytes()
    with prefix.open("ab") as fh:  # the rest of the download arrives (spec §9)
        fh.write(data[prefix.stat().st_size :])
    report = nqt.switch(model, "full")
    fresh = nqt.load(tiny_file, "full", module=tiny())
    assert report.bytes_paged_in > 0
    assert _bit_equal(_state(model), _state(fresh))
    nqt.close(model)
    nqt.close(fresh)


# --- switching -----------------------------------------------------------------------------------


def test_switch_both_ways_equals_fresh_loads(zoo_file) -> None:
    model = nqt.load(zoo_file, "part")
    fresh_part = _state(nqt.load(zoo_file, "part"))
    fresh_full = _state(nqt.load(zoo_file, "full"))
    assert not _bit_equal(fresh_part, fresh_full)
    up = nqt.switch(model, "full")
    assert _bit_equal(_state(model), fresh_full)
    down = nqt.switch(model, "part")
    assert _bit_equal(_state(model), fresh_part)
    again = nqt.switch(model, "full")
    assert _bit_equal(_state(model), fresh_full)
    with nqformat.open(zoo_file) as f:
        low = next(s for s in f.sections() if s.name == "LOW").length
        nested = sum(1 for t in f.tensors() if t.kind.name == "NESTED")
    assert (up.from_mode, up.to_mode, up.bytes_paged_in, up.bytes_paged_out) == (
        "part",
        "full",
        low,
        0,
    )
    assert (down.bytes_paged_in, down.bytes_paged_out, down.bytes_paged) == (0, low, low)
    assert again.bytes_paged_in == low
    assert up.tensors == down.tensors == nested
    assert up.seconds > 0
    nqt.close(model)


def test_switch_pages_low_in_and_out(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny())
    f = nqt.runtime(model).file
    nqt.switch(model, "full")
    assert f.low_resident
    assert f.max_offset_read == f.full_end
    nqt.switch(model, "part")
    assert not f.low_resident
    nqt.close(model)


def test_switch_to_the_current_mode_does_nothing(tiny_file) -> None:
    model = nqt.load(tiny_file, "full", module=tiny())
    before = _state(model)
    report = nqt.switch(model, "full")
    assert (report.bytes_paged, report.tensors) == (0, 0)
    assert _bit_equal(_state(model), before)
    nqt.close(model)


def test_corrupt_low_is_refused_and_the_part_model_stays(tiny_file, tmp_path) -> None:
    bad = tmp_path / "bad.nq"
    data = bytearray(tiny_file.read_bytes())
    data[-1] ^= 0xFF  # the last byte of LOW
    bad.write_bytes(bytes(data))
    model = nqt.load(bad, "part", module=tiny())
    before = _state(model)
    with pytest.raises(ChecksumError):
        nqt.switch(model, "full")
    assert nqt.runtime(model).mode == "part"
    assert _bit_equal(_state(model), before)
    nqt.close(model)


def test_half_precision_model_round_trips_its_dtypes(tmp_path) -> None:
    model = tiny().half()
    path = nqt.convert_model(model, tmp_path / "h.nq", n=N, h=H).path
    loaded = nqt.load(path, "full", module=tiny().half(), resident="float")
    ref = nest_quantize(model.conv.weight.detach().float().numpy(), N, H).dequantize("full")
    assert loaded.conv.weight.dtype is torch.float16
    assert np.array_equal(loaded.conv.weight.detach().numpy(), ref.astype(np.float16))
    assert torch.equal(loaded.conv.bias, model.conv.bias)
    nqt.close(loaded)


def test_load_writes_into_the_modules_own_tensors(tiny_file) -> None:
    model = tiny(seed=9)
    before = {k: (v.data_ptr(), v._version) for k, v in model.state_dict().items()}
    nqt.load(tiny_file, "part", module=model, resident="float")
    after = model.state_dict()
    assert {k: v.data_ptr() for k, v in after.items()} == {k: p for k, (p, _) in before.items()}
    # autograd sees the writes, as it would those of copy_
    assert all(after[k]._version > version for k, (_, version) in before.items())
    nqt.switch(model, "full")
    assert nqt.runtime(model).file.read("conv.weight", "full").tobytes() == (
        model.conv.weight.detach().numpy().tobytes()
    )
    nqt.close(model)


def test_non_contiguous_and_other_dtype_tensors_are_filled_by_copy(tiny_file) -> None:
    ref = nqt.load(tiny_file, "full", module=tiny())
    model = tiny()
    with torch.no_grad():  # same shape, transposed memory; and a buffer of another dtype
        model.heads["cls"].weight = torch.nn.Parameter(torch.zeros(8, 5).t())
        model.steps = torch.tensor(0, dtype=torch.int32)
    assert not model.heads["cls"].weight.is_contiguous()
    nqt.load(tiny_file, "full", module=model)
    assert torch.equal(model.heads["cls"].weight, ref.heads["cls"].weight)
    assert model.steps.dtype is torch.int32 and int(model.steps) == int(ref.steps)
    nqt.close(model)
    nqt.close(ref)


def test_writable_view_shares_memory_only_where_values_fit_as_they_are() -> None:
    from nqformat.torch._tensors import writable_view

    t = torch.zeros(2, 3)
    view = writable_view(t, "F32")
    assert view is not None
    view[1, 2] = 5.0
    assert float(t[1, 2]) == 5.0
    bf = torch.zeros(4, dtype=torch.bfloat16)
    bits = writable_view(bf, "BF16")
    assert bits is not None and bits.dtype == np.uint16
    bits[0] = 0x3F80  # 1.0 as bfloat16
    assert float(bf[0]) == 1.0
    assert writable_view(t.t(), "F32") is None  # not contiguous
    assert writable_view(t, "F16") is None  # another dtype: copy_ converts
    assert writable_view(bf, "F32") is None
    assert writable_view(torch.zeros(3, dtype=torch.int64), "I64") is not None


# --- handles -------------------------------------------------------------------------------------


def test_close_releases_the_file_and_ends_switching(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny())
    f = nqt.runtime(model).file
    nqt.close(model)
    with pytest.raises(NQError, match="closed"):
        f.read("conv.weight")
    with pytest.raises(NQError, match="not loaded"):
        nqt.switch(model, "full")
    nqt.close(model)  # closing twice is harmless


def test_module_not_loaded_from_a_file_cannot_switch() -> None:
    with pytest.raises(NQError, match="not loaded"):
        nqt.switch(tiny(), "full")


@pytest.mark.parametrize("resident", ["float", "codes"])
def test_deep_copy_is_a_plain_module(tiny_file, resident) -> None:
    """Two modules must not share one paging state: the copy holds float32 weights of the
    original's current mode (a codes-resident one, as close() would leave it)."""
    model = nqt.load(tiny_file, "part", module=tiny(), resident=resident)
    clone = copy.deepcopy(model)
    assert _bit_equal(_state(clone), _state(model))
    assert list(clone.state_dict()) == list(tiny().state_dict())  # the same order as built
    assert all(isinstance(p, torch.nn.Parameter) for p in clone.parameters())
    clone.half()  # a plain module converts as any other
    with pytest.raises(NQError, match="not loaded"):
        nqt.switch(clone, "full")
    nqt.switch(model, "full")  # the original still switches
    nqt.close(model)


def test_loading_again_into_a_module_replaces_its_file(tiny_file, tmp_path) -> None:
    other = nqt.convert_model(tiny(seed=3), tmp_path / "other.nq", n=N, h=H).path
    model = nqt.load(tiny_file, "part", module=tiny())
    first = nqt.runtime(model).file
    nqt.load(other, "part", module=model)
    assert nqt.runtime(model).path == other
    with pytest.raises(NQError, match="closed"):
        first.read("conv.weight")
    nqt.close(model)
