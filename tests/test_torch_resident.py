"""The codes-resident runtime (resident="codes"): same outputs, bit for bit, as the float runtime
in the same mode, after any sequence of (per-layer) switches, with no float32 weight kept."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch
from _torch_models import FAMILIES, NESTED, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nqformat
import nqformat.torch as nqt
from nqformat import zoo
from nqformat.errors import ChecksumError, NQError, PartOnlyError
from nqformat.torch.resident import CodesRuntime

N, H = 8, 5
LAYERS = sorted(name.rpartition(".")[0] for name in NESTED)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("resident") / "tiny.nq"
    return nqt.convert_model(tiny(), path, n=N, h=H).path


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    module, meta = zoo.build(zoo.resolve("test_vit"), random_init=True, seed=5)
    path = tmp_path_factory.mktemp("resident") / "vit.nq"
    return nqt.convert_model(module, path, n=N, h=H, metadata={"model": meta}).path


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1), b.view(-1))


def _float_reference(path: pathlib.Path, modes: dict[str, str]) -> torch.nn.Module:
    """A float-runtime module holding, layer by layer, the model ``modes`` names."""
    part = nqt.load(path, "part", module=tiny(seed=3))
    full = nqt.load(path, "full", module=tiny(seed=4))
    state = part.state_dict()
    for layer, mode in modes.items():
        if mode == "full":
            state[f"{layer}.weight"] = full.state_dict()[f"{layer}.weight"]
    ref = tiny(seed=5)
    ref.load_state_dict(state)
    nqt.close(part)
    nqt.close(full)
    return ref


@pytest.mark.parametrize("mode", ["part", "full"])
@pytest.mark.parametrize("cache_bytes", [0, 256, None])
def test_outputs_and_state_dict_equal_the_float_runtime(tiny_file, mode, cache_bytes) -> None:
    ref = nqt.load(tiny_file, mode, module=tiny(seed=1))
    codes = nqt.load(
        tiny_file, mode, module=tiny(seed=2), resident="codes", cache_bytes=cache_bytes
    )
    with torch.no_grad():
        assert _same(codes(_x()), ref(_x()))
        assert _same(codes(_x(1)), ref(_x(1)))  # again: from the cache or dequantized anew
    with torch.inference_mode():
        assert _same(codes(_x(2)), ref(_x(2)))
    assert _same(codes(_x(3)), ref(_x(3)))  # autograd on: a fresh tensor per forward
    want, got = ref.state_dict(), codes.state_dict()
    assert want.keys() == got.keys()
    assert all(_same(got[k], want[k]) for k in want)
    assert nqt.modes(codes) == dict.fromkeys(LAYERS, mode)
    nqt.close(ref)
    nqt.close(codes)


def test_no_float32_weight_is_kept_between_forwards(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    names = {n for n, _ in model.named_parameters()}
    assert not names & NESTED  # nested weights are not parameters any more
    handle = nqt.runtime(model)
    assert isinstance(handle, CodesRuntime)
    with torch.no_grad():
        model(_x())
    assert handle.cached_bytes == 0
    nqt.close(model)


def test_cache_keeps_at_most_cache_bytes_least_recently_used_first(tiny_file) -> None:
    # conv 8x3x3x3 = 864 B, blocks 256 B each, head 160 B: room for the two last layers
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes", cache_bytes=420)
    handle = nqt.runtime(model)
    with torch.no_grad():
        model(_x())
    assert list(handle._cache) == ["blocks.1", "heads.cls"]
    assert handle.cached_bytes == 416
    nqt.switch(model, "full", layers=["heads.cls"])
    assert list(handle._cache) == ["blocks.1"]  # a switched layer's float32 is dropped
    nqt.close(model)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["part", "full"]), st.none() | st.sets(st.sampled_from(LAYERS))),
        max_size=6,
    ),
    cache_bytes=st.sampled_from([0, 300, None]),
    start=st.sampled_from(["part", "full"]),
)
def test_any_switch_sequence_matches_the_float_runtime(tiny_file, steps, cache_bytes, start):
    model = nqt.load(tiny_file, start, module=tiny(), resident="codes", cache_bytes=cache_bytes)
    expected = dict.fromkeys(LAYERS, start)
    try:
        for mode, layers in steps:
            report = nqt.switch(model, mode, layers=None if layers is None else sorted(layers))
            chosen = LAYERS if layers is None else layers
            assert report.tensors == sum(expected[n] != mode for n in chosen)
            expected.update(dict.fromkeys(chosen, mode))
            assert nqt.modes(model) == expected
            # a layer holds LOW exactly while it is full-bit; none held once all are part-bit
            handle = nqt.runtime(model)
            assert all((r.low is None) == (r.mode == "part") for r in handle.layers.values())
            if "full" not in expected.values():
                assert not handle.file.low_resident
            ref = _float_reference(tiny_file, expected)
            with torch.no_grad():
                assert _same(model(_x()), ref(_x()))
    finally:
        nqt.close(model)


def test_full_switch_of_one_layer_reads_only_its_low_blob_checked_by_its_own_crc(
    tiny_file,
) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    f = nqt.runtime(model).file
    blob = f.info("blocks.0.weight").low.length
    section = {s.name: s for s in f.sections()}["LOW"].length
    assert 0 < blob < section
    before = f.bytes_read
    report = nqt.switch(model, "full", layers=["blocks.0"])
    assert f.bytes_read - before == blob  # that layer's LOW blob, not the section
    assert not f.low_resident
    assert report.from_mode == "part" and report.to_mode == "mixed"
    assert report.bytes_paged_in == blob
    back = nqt.switch(model, "part")
    assert back.bytes_paged_out == blob
    nqt.close(model)


def test_whole_model_switch_reads_and_checks_all_of_low(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    f = nqt.runtime(model).file
    section = {s.name: s for s in f.sections()}["LOW"].length
    nqt.switch(model, "full", layers=["blocks.0"])
    before = f.bytes_read
    report = nqt.switch(model, "full")
    assert f.bytes_read - before >= section and f.low_resident
    assert report.bytes_paged_in == section
    ref = _float_reference(tiny_file, dict.fromkeys(LAYERS, "full"))
    with torch.no_grad():
        assert _same(model(_x()), ref(_x()))
    nqt.close(model)


def _low_byte_flipped(src: pathlib.Path, dst: pathlib.Path, tensor: str) -> pathlib.Path:
    """A copy of ``src`` whose ``tensor``'s LOW blob has its first byte flipped (its CRC and
    LOW.crc left as they were)."""
    data = bytearray(src.read_bytes())
    with nqformat.open(src) as f:
        data[f.info(tensor).low.offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_one_layer_upgrade_with_a_corrupt_low_blob_raises_and_stays_part(
    tiny_file, tmp_path
) -> None:
    bad = _low_byte_flipped(tiny_file, tmp_path / "bad.nq", "blocks.0.weight")
    model = nqt.load(bad, "part", module=tiny(), resident="codes")
    with pytest.raises(ChecksumError, match=r"blocks\.0\.weight"):
        nqt.switch(model, "full", layers=["blocks.0"])
    assert set(nqt.modes(model).values()) == {"part"}
    nqt.switch(model, "full", layers=["heads.cls"])  # another layer's blob is intact
    assert nqt.modes(model)["heads.cls"] == "full"
    nqt.close(model)


def test_unknown_layer_and_weight_assignment_are_errors(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    with pytest.raises(NQError, match="not a layer"):
        nqt.switch(model, "full", layers=["bn"])
    with pytest.raises(NQError, match="cannot be assigned"):
        model.conv.weight = torch.zeros(8, 3, 3, 3)
    float_model = nqt.load(tiny_file, "part", module=tiny(), resident="float")
    with pytest.raises(NQError, match="resident='codes'"):
        nqt.switch(float_model, "full", layers=["conv"])
    with pytest.raises(NQError, match="resident"):
        nqt.load(tiny_file, "part", module=tiny(), resident="int8")
    nqt.close(model)
    nqt.close(float_model)


def test_architecture_from_meta_is_built_without_float_weights(zoo_file) -> None:
    ref = nqt.load(zoo_file, "full")
    model = nqt.load(zoo_file, "full", resident="codes")
    assert type(model).__name__ == "VisionTransformer"
    assert not model.training
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert _same(model(x), ref(x))
    nqt.switch(model, "part")
    nqt.switch(ref, "part")
    with torch.no_grad():
        assert _same(model(x), ref(x))
    nqt.close(model)
    nqt.close(ref)


def test_part_only_prefix_loads_and_completes(tiny_file, tmp_path) -> None:
    with nqformat.open(tiny_file) as f:
        part_end = f.part_end
    prefix = tmp_path / "prefix.nq"
    prefix.write_bytes(tiny_file.read_bytes()[:part_end])
    model = nqt.load(prefix, "part", module=tiny(), resident="codes")
    with pytest.raises(PartOnlyError):
        nqt.switch(model, "full")
    assert nqt.modes(model) == dict.fromkeys(LAYERS, "part")
    prefix.write_bytes(tiny_file.read_bytes())  # the rest arrived
    nqt.switch(model, "full")
    ref = nqt.load(tiny_file, "full", module=tiny())
    with torch.no_grad():
        assert _same(model(_x()), ref(_x()))
    nqt.close(model)
    nqt.close(ref)


def test_part_mode_maps_no_low_and_high_is_not_copied(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    handle = nqt.runtime(model)
    assert not handle.file.low_resident
    rec = handle.layers["conv"]
    assert isinstance(rec.high, memoryview) and rec.high.readonly  # a view of the mapping
    assert rec.low is None
    assert np.frombuffer(rec.high, np.uint8).base is not None
    nqt.close(model)


def test_act_quant_applies_on_the_codes_runtime_too(tmp_path) -> None:
    from nqformat.torch import actquant

    path = tmp_path / "act.nq"
    nqt.convert_model(tiny(), path, n=N, h=H)
    calibration = actquant.calibrate_file(
        path, 4, module=tiny(1), batch_size=4, input_shape=(3, 6, 6)
    )
    meta = {actquant.META_KEY: calibration.to_metadata()}
    nqt.convert_model(tiny(), path, n=N, h=H, metadata=meta)
    ref = nqt.load(path, "part", module=tiny(2), act_quant=True)
    model = nqt.load(path, "part", module=tiny(3), act_quant=True, resident="codes")
    plain = nqt.load(path, "part", module=tiny(4), resident="codes")
    with torch.no_grad():
        assert _same(model(_x()), ref(_x()))
        assert not _same(model(_x()), plain(_x()))  # the ranges do change the output
        nqt.switch(model, "full")
        nqt.switch(ref, "full")
        assert _same(model(_x()), ref(_x()))
    for m in (ref, model, plain):
        nqt.close(m)


FAST = {"mobilenetv2_wd4"}


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(arch, id=family, marks=() if arch in FAST else (pytest.mark.slow,))
        for family, arch in FAMILIES
    ],
)
def test_every_family_runs_on_codes_exactly_as_on_floats(arch, tmp_path) -> None:
    original, meta = zoo.build(zoo.resolve(arch), random_init=True, seed=1)
    path = nqt.convert_model(original, tmp_path / "m.nq", n=N, h=H, metadata={"model": meta}).path
    x = torch.randn(
        2, *meta["data_config"]["input_size"], generator=torch.Generator().manual_seed(0)
    )
    ref = nqt.load(path, "part")
    model = nqt.load(path, "part", resident="codes")
    for mode in ("part", "full", "part"):
        nqt.switch(ref, mode)
        nqt.switch(model, mode)
        with torch.inference_mode():
            assert _same(model(x), ref(x)), mode
    want, got = ref.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    assert all(_same(got[k], want[k]) for k in want)
    nqt.close(ref)
    nqt.close(model)


def test_close_leaves_float_weights_and_reload_into_the_same_module_works(tiny_file) -> None:
    model = nqt.load(tiny_file, "full", module=tiny(), resident="codes")
    ref = nqt.load(tiny_file, "full", module=tiny(1))
    with torch.no_grad():
        want = ref(_x())
    nqt.close(model)  # layers become plain layers with float32 weights
    assert type(model.conv) is torch.nn.Conv2d
    assert {n for n, _ in model.named_parameters()} >= NESTED
    with torch.no_grad():
        assert _same(model(_x()), want)
    for resident in ("codes", "float", "codes"):
        nqt.load(tiny_file, "full", module=model, resident=resident)
        with torch.no_grad():
            assert _same(model(_x()), want), resident
    nqt.close(model)
    nqt.close(ref)


@pytest.mark.slow
def test_real_lite0_on_real_photos_is_bit_identical_in_every_mode(tmp_path) -> None:
    """tf_efficientnet_lite0 with its packaged ImageNet weights, the 20 labelled foolbox photos:
    the codes runtime's logits equal the float runtime's in part, full, a per-layer mix, and
    after switching back."""
    import importlib.util

    from PIL import Image

    from nqformat.cli.evaluate import preprocess_from_meta

    module, meta = zoo.build(zoo.resolve("tf_efficientnet_lite0"))
    assert meta["random_init"] is False
    path = nqt.convert_model(module, tmp_path / "lite0.nq", n=8, h=6, metadata={"model": meta})
    found = importlib.util.find_spec("foolbox")
    assert found is not None and found.submodule_search_locations
    data = pathlib.Path(next(iter(found.submodule_search_locations))) / "data"
    photos = sorted(data.glob("imagenet_*.jpg"))
    assert len(photos) == 20
    transform = preprocess_from_meta({"model": meta}).transform()
    batch = []
    for photo in photos:
        with Image.open(photo) as img:
            batch.append(transform(img.convert("RGB")))
    x = torch.stack(batch)
    labels = torch.tensor([int(p.stem.rsplit("_", 1)[1]) for p in photos])

    ref = nqt.load(path.path, "part", resident="float")
    codes = nqt.load(path.path, "part", resident="codes")
    layers = list(nqt.modes(codes))
    half = layers[: len(layers) // 2]
    top1 = {}
    for step in ("part", "full", "mixed", "part", "full"):
        if step == "mixed":
            nqt.switch(codes, "part")
            nqt.switch(codes, "full", layers=half)
            want = _float_mix(path.path, meta, half)
        else:
            nqt.switch(codes, step)
            nqt.switch(ref, step)
            want = ref
        with torch.inference_mode():
            got, expected = codes(x), want(x)
        assert _same(got, expected), step
        top1[step] = int((got.argmax(-1) == labels).sum())
    assert top1["full"] >= 17  # FP32 gets 18/20; a genuine INT(8|6) model stays within one
    nqt.close(ref)
    nqt.close(codes)


def _float_mix(path: pathlib.Path, meta: dict, full_layers: list[str]) -> torch.nn.Module:
    """A float module with ``full_layers`` from the full-bit model and the rest part-bit."""
    full = nqt.load(path, "full", resident="float")
    state = {k: v.clone() for k, v in full.state_dict().items()}
    nqt.close(full)
    mix = nqt.load(path, "part", resident="float")  # its state_dict() holds its own tensors
    own = mix.state_dict()
    with torch.no_grad():
        for layer in full_layers:
            own[f"{layer}.weight"].copy_(state[f"{layer}.weight"])
    return mix


def test_weight_bytes_count_codes_not_floats(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    ref = nqt.load(tiny_file, "part", module=tiny(1), resident="float")
    handle = nqt.runtime(model)
    with nqformat.open(tiny_file) as f:
        high = sum(len(f._blob(f.info(n), nqformat.container.spec.Section.HIGH)) for n in NESTED)
        low = sum(len(f._blob(f.info(n), nqformat.container.spec.Section.LOW)) for n in NESTED)
        channels = sum(f.info(n).shape[0] for n in NESTED)
    state = ref.state_dict()
    others = sum(t.numel() * t.element_size() for k, t in state.items() if k not in NESTED)
    assert handle.weight_bytes(model) == high + 16 * channels + others
    nqt.switch(model, "full")
    assert handle.weight_bytes(model) == high + low + 16 * channels + others
    floats = sum(4 * ref.state_dict()[n].numel() for n in NESTED)
    assert nqt.runtime(ref).weight_bytes(ref) == floats + others
    nqt.close(model)
    nqt.close(ref)


@pytest.mark.parametrize(
    ("name", "which"),
    [("bn.running_var", "data"), ("blocks.0.weight", "data"), ("blocks.0.weight", "high")],
    ids=["raw", "params", "high"],
)
@pytest.mark.parametrize("resident", ["codes", "float"])
def test_a_corrupt_blob_fails_the_load_naming_its_tensor(
    tiny_file, tmp_path, name, which, resident
) -> None:
    """The codes load reads DATA and HIGH in one piece each but still checks every blob's own
    CRC (§11 step 13), as the float runtime does blob by blob."""
    bad = tmp_path / "bad.nq"
    data = bytearray(tiny_file.read_bytes())
    with nqformat.open(tiny_file) as f:
        ref = getattr(f.info(name), which)
    data[ref.offset + ref.length - 1] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=re.escape(repr(name))):
        nqt.load(bad, "part", module=tiny(), resident=resident)
    model = nqt.load(bad, "part", module=tiny(), resident=resident, verify=False)  # unchecked
    nqt.close(model)


def test_reload_into_a_module_keeps_its_tensors_and_values(tiny_file) -> None:
    """A module passed in keeps its own RAW tensors (filled in place, requires_grad as it was)
    and gets the file's values, as from a fresh skeleton."""
    model = tiny(seed=7)
    bn_weight = model.bn.weight
    nqt.load(tiny_file, "part", module=model, resident="codes")
    assert model.bn.weight is bn_weight and bn_weight.requires_grad
    fresh = nqt.load(tiny_file, "part", module=tiny(seed=8), resident="codes")
    for key, value in fresh.state_dict().items():
        assert _same(model.state_dict()[key], value), key
    nqt.close(model)
    nqt.close(fresh)


class _Hooked(torch.nn.Module):
    """State dict customised three ways: a hook, extra state, a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.tied = self.inner.conv  # one module under two paths

    def get_extra_state(self) -> dict:
        return {"k": 1}


@pytest.mark.parametrize("kind", ["plain", "hook", "extra"])
def test_walk_gives_what_state_dict_gives(kind) -> None:
    from nqformat.torch.runtime import _walk

    module: torch.nn.Module = tiny() if kind == "plain" else _Hooked()
    if kind == "hook":
        module.inner.register_state_dict_post_hook(lambda *a: None)
    if kind == "plain":
        module.register_buffer("scratch", torch.zeros(2), persistent=False)
    modules, own = _walk(module)
    want = module.state_dict(keep_vars=True)
    assert list(own) == list(want)
    assert all(own[k] is want[k] for k in want if isinstance(want[k], torch.Tensor))
    assert modules == dict(module.named_modules(remove_duplicate=False))


@pytest.mark.parametrize("piece", [1, 200, 1 << 17, None])
def test_blobs_read_in_pieces_equal_blob_by_blob_reads(tiny_file, piece) -> None:
    """NQFile.blobs (the codes load's reader) gives each blob's bytes as _blob does, however
    its reads are cut (one blob per read, a few, all in one)."""
    from nqformat.container.spec import Section

    with nqformat.open(tiny_file) as f, nqformat.open(tiny_file) as g:
        infos = f.tensors()[::-1]  # any order
        nested = [i for i in infos if i.kind.name == "NESTED"]
        for which, chosen in ((Section.DATA, infos), (Section.HIGH, nested)):
            got = f.blobs(chosen, which, piece=piece)
            assert [bytes(b) for b in got] == [bytes(g._blob(i, which)) for i in chosen]


def test_non_finite_channel_parameters_fail_the_codes_load(tiny_file, tmp_path) -> None:
    """§7.2: the codes load reads the parameters in bulk but checks them as NQFile.params."""
    import struct
    import zlib

    from nqformat.container.testing import replace_blob
    from nqformat.errors import InvalidHeaderError

    with nqformat.open(tiny_file) as f:
        info = f.info("blocks.0.weight")
    raw = bytearray(tiny_file.read_bytes())
    raw[info.data.offset : info.data.offset + 4] = struct.pack("<f", float("nan"))
    crc = zlib.crc32(raw[info.data.offset : info.data.end])
    bad = tmp_path / "nan.nq"
    bad.write_bytes(replace_blob(bytes(raw), info.index, "data", crc=crc))
    with pytest.raises(InvalidHeaderError, match=r"blocks\.0\.weight.*not finite"):
        nqt.load(bad, "part", module=tiny(), resident="codes")


@pytest.mark.parametrize("into", ["meta", "float32", "float64"])
@pytest.mark.parametrize("compress", [False, True])
def test_codes_load_writes_raw_values_as_the_float_runtime(tmp_path, into, compress) -> None:
    """Every way a RAW value reaches the module gives the float runtime's state: scattered
    verbatim (CPU tensors of the file's dtype, or new ones for a module on meta), converted
    (float64 norm tensors), and read alone and decompressed (zstd blobs, in no piece)."""
    path = nqt.convert_model(tiny(), tmp_path / "t.nq", n=N, h=H, compress=compress).path
    if compress:
        with nqformat.open(path) as f:
            assert any(i.data.codec for i in f.tensors())  # some DATA blob is compressed
    want = nqt.load(path, "part", module=tiny(seed=1), resident="float").state_dict()
    if into == "meta":
        with torch.device("meta"):
            module = tiny(seed=2)
    else:
        module = tiny(seed=2)
        module.bn.to(getattr(torch, into))  # RAW tensors only: nested weights stay float32
    before = {k: t._version for k, t in module.state_dict(keep_vars=True).items()}
    got = nqt.load(path, "part", module=module, resident="codes").state_dict(keep_vars=True)
    for name, value in want.items():
        assert torch.equal(got[name].float(), value), name
        if into != "meta" and name not in NESTED:
            assert got[name]._version > before[name], name  # autograd sees the write
    nqt.close(module)


@pytest.mark.parametrize("in_c", [True, False])
def test_scatter_copies_each_range_to_its_address_or_refuses(monkeypatch, in_c) -> None:
    """fused.scatter (C, or ctypes.memmove without the extension) copies buffer ranges to
    memory addresses, and refuses a range outside the buffer before copying anything."""
    from nqformat import fused

    if in_c and not fused.SCATTER_IN_C:
        pytest.skip("the C extension is not built")
    monkeypatch.setattr(fused, "SCATTER_IN_C", in_c)
    src = bytes(range(256)) * 4
    dst = [np.zeros(n, np.uint8) for n in (1, 7, 64, 0)]
    offsets = [5, 1000, 100, 3]
    fused.scatter(src, offsets, [d.size for d in dst], [d.ctypes.data for d in dst])
    for d, o in zip(dst, offsets, strict=True):
        assert d.tobytes() == src[o : o + d.size]
    spare = np.zeros(8, np.uint8)
    with pytest.raises(NQError):
        fused.scatter(src, [0, len(src) - 4], [1, 8], [spare.ctypes.data, spare.ctypes.data])
    assert not spare.any()


def test_whole_model_upgrade_with_a_corrupt_low_raises_and_stays_part(tiny_file, tmp_path) -> None:
    """All of LOW in one read (NQFile.low_blobs): a wrong LOW.crc fails the switch and every
    layer keeps running its part-bit codes."""
    bad = _low_byte_flipped(tiny_file, tmp_path / "bad.nq", "heads.cls.weight")
    model = nqt.load(bad, "part", module=tiny(), resident="codes")
    want = _float_reference(tiny_file, dict.fromkeys(LAYERS, "part"))
    with pytest.raises(ChecksumError, match="LOW CRC"):
        nqt.switch(model, "full")
    assert set(nqt.modes(model).values()) == {"part"}
    assert not nqt.runtime(model).file.low_resident
    with torch.no_grad():
        assert _same(model(_x()), want(_x()))
    with pytest.raises(ChecksumError, match="LOW CRC"):
        nqt.load(bad, "full", module=tiny(), resident="codes")
    nqt.close(model)


def test_a_module_whose_weights_are_not_cpu_float32_is_refused(tiny_file) -> None:
    """The codes runtime would give such a module float32 weights beside its own dtype."""
    module = tiny().double()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(NQError, match=r"torch\.float64 on cpu.*resident='float'"):
        nqt.load(tiny_file, "part", module=module)  # the default: codes
    assert all(_same(module.state_dict()[k], v) for k, v in before.items())  # nothing written
    assert nqt.load(tiny_file, "part", module=module, resident="float").conv.weight.dtype == (
        torch.float64
    )


def test_converting_a_codes_module_is_refused_before_anything_changes(tiny_file) -> None:
    """.half()/.double()/.to(dtype) would leave the codes behind: NQError, and the module keeps
    every tensor as it was; conversions that change nothing pass; after close() it is plain."""
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.float().cpu().to(torch.float32)  # nothing to convert
    for convert in (model.half, model.double, lambda: model.to(torch.bfloat16)):
        with pytest.raises(NQError, match=r"CPU in float32.*resident='float'"):
            convert()
        after = model.state_dict()
        assert all(_same(after[k], v) for k, v in before.items())
    with pytest.raises(NQError, match=r"blocks\.0"):  # a layer reached directly
        model.get_submodule("blocks.0").half()
    nqt.close(model)
    assert model.half().get_submodule("blocks.0").weight.dtype == torch.float16


def test_load_state_dict_into_a_codes_weight_is_an_error_not_a_skip(tiny_file) -> None:
    model = nqt.load(tiny_file, "part", module=tiny(), resident="codes")
    other = tiny(seed=9).state_dict()
    for strict in (True, False):
        with pytest.raises(NQError, match="cannot write a codes-resident weight"):
            model.load_state_dict(other, strict=strict)
    raw_only = {k: v for k, v in other.items() if k not in NESTED}
    model.load_state_dict(raw_only, strict=False)  # RAW tensors load as usual
    assert _same(model.state_dict()["bn.running_var"], other["bn.running_var"])
    nqt.close(model)
