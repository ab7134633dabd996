"""Files of several nested levels (spec §14, format 1.1): writer, reader, prefixes, verify and
the conformance vectors under ``levels_valid``/``levels_invalid``."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nqformat
from nqformat import NQWriter
from nqformat.container import spec
from nqformat.container.spec import IncompatFlag
from nqformat.errors import (
    ChecksumError,
    NQError,
    NQFormatError,
    PartOnlyError,
    QuantizationError,
    UnsupportedFeatureError,
)
from nqformat.quant import nest_levels

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
F32 = np.float32


def _load(rel: str) -> np.ndarray:
    return np.load(VECTORS / rel, allow_pickle=False)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def _oracle(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """spec §7.2 with float32 rounding after the product and after the sum."""
    b = (-1,) + (1,) * (codes.ndim - 1)
    prod = (codes.astype(F32) * scale.reshape(b)).astype(F32)
    return (prod + offset.reshape(b)).astype(F32)


@pytest.mark.parametrize("vector", MANIFEST["levels_valid"], ids=lambda v: v["file"])
def test_levels_vector_decodes_every_level_it_reaches(vector: dict[str, Any]) -> None:
    with nqformat.open(VECTORS / vector["file"]) as f:
        assert f.version == (1, 1)
        assert f.levels == tuple(vector["levels"])
        assert f.available_levels == tuple(vector["available"])
        assert (f.n, f.h, f.part_only) == (vector["n"], vector["h"], vector["part_only"])
        assert f.names() == [t["name"] for t in vector["tensors"]]
        for t in vector["tensors"]:
            exp = t["expected"]
            if t["kind"] == "RAW":
                _same(np.asarray(f.read(t["name"])), _load(exp["raw"]))
                continue
            _same(f.codes(t["name"], "high"), _load(exp["high"]))
            for width in vector["levels"]:
                if width not in vector["available"]:
                    with pytest.raises(PartOnlyError):
                        f.read(t["name"], bits=width)
                    continue
                _same(f.read(t["name"], bits=width), _load(exp[f"f32_{width}"]))
                _same(f.level_codes(t["name"], width), _load(exp[f"codes_{width}"]))
            _same(f.read(t["name"], "part"), _load(exp[f"f32_{vector['levels'][0]}"]))
            if not vector["part_only"]:
                _same(f.read(t["name"], "full"), _load(exp[f"f32_{vector['n']}"]))
                _same(f.codes(t["name"], "full"), _load(exp[f"codes_{vector['n']}"]))
        assert f.verify() == []


@pytest.mark.parametrize("vector", MANIFEST["levels_invalid"], ids=lambda v: v["file"])
def test_levels_invalid_vector_raises_its_error_code(vector: dict[str, Any]) -> None:
    path = VECTORS / vector["file"]
    if vector["when"] == "open":
        with pytest.raises(NQFormatError) as exc_info:
            nqformat.open(path)
        assert exc_info.value.code == vector["error"], str(exc_info.value)
        return
    with nqformat.open(path) as f:
        if vector["when"] == "read":
            with pytest.raises(NQFormatError) as exc_info:
                f.read(vector["tensor"], bits=vector["bits"])
            assert exc_info.value.code == vector["error"], str(exc_info.value)
        else:
            for name in f.names():
                f.read(name, "full")  # the damage is outside every blob
            assert f.verify() != []


@pytest.mark.parametrize("vector", MANIFEST["levels_valid"], ids=lambda v: v["file"])
def test_a_reader_of_version_1_0_refuses_every_levels_file(
    vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a 1.0 reader implements incompat bit 0 only: bit 1 is unknown, so §11 step 5 refuses
    monkeypatch.setattr(IncompatFlag, "known_mask", classmethod(lambda cls: int(cls.ZSTD)))
    with pytest.raises(UnsupportedFeatureError):
        nqformat.open(VECTORS / vector["file"])


def test_a_prefix_cut_at_each_level_end_serves_that_level_and_no_finer(tmp_path):
    raw = (VECTORS / "valid" / "levels_four.nq").read_bytes()
    with nqformat.open(VECTORS / "valid" / "levels_four.nq") as full:
        ends = full.level_ends
        widths = full.levels
    for j, end in enumerate(ends):
        path = tmp_path / f"cut{j}.nq"
        path.write_bytes(raw[:end])
        with nqformat.open(path) as f:
            assert f.available_levels == widths[: j + 1]
            for width in f.available_levels:
                for name in f.names():
                    f.read(name, bits=width)
            assert f.max_offset_read <= end
            assert f.verify() == []
            if j + 1 < len(widths):
                with pytest.raises(PartOnlyError):
                    f.page_in_level(widths[j + 1])


_SHAPES = st.sampled_from([(3, 5), (4, 2, 3, 3), (1, 1), (6, 17), (0, 4)])


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 8), min_size=3, max_size=6, unique=True).map(
        lambda w: tuple(sorted(w))
    ),
    shapes=st.lists(_SHAPES, min_size=1, max_size=3),
    compress=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_every_level_bit_exact(tmp_path_factory, widths, shapes, compress, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("lv") / "f.nq"
    tensors = []
    n, h = widths[-1], widths[0]
    with NQWriter(path, n=n, h=h, metadata={}, compress=compress, widths=widths) as w:
        for i, shape in enumerate(shapes):
            q = [rng.integers(-(1 << (h - 1)), 1 << (h - 1), shape)]
            residuals = []
            for j in range(1, len(widths)):
                d = widths[j] - widths[j - 1]
                lo, hi = spec.code_range(d + 1)
                low = rng.integers(lo, hi + 1, shape)
                top = spec.code_range(widths[j])
                nxt = np.clip(q[-1] * (1 << d) + low, *top)  # keep q_j a w_j-bit code
                low = nxt - q[-1] * (1 << d)
                low = np.clip(low, lo, hi)
                nxt = q[-1] * (1 << d) + low
                residuals.append(low.astype(np.int8))
                q.append(nxt)
            c = shape[0]
            scales = [rng.uniform(0.01, 1, c).astype(F32) for _ in widths]
            offsets = [rng.uniform(-1, 1, c).astype(F32) for _ in widths]
            w.add_raw(f"r{i}", rng.standard_normal(3).astype(F32))
            w.add_levels(
                f"t{i}",
                w_high=q[0].astype(np.int8),
                residuals=residuals,
                scales=scales,
                offsets=offsets,
            )
            tensors.append((f"t{i}", q, scales, offsets))
    with nqformat.open(path) as f:
        assert f.levels == widths and f.version == (1, 1)
        for name, q, scales, offsets in tensors:
            for j, width in enumerate(widths):
                _same(f.read(name, bits=width), _oracle(q[j], scales[j], offsets[j]))
                np.testing.assert_array_equal(f.level_codes(name, width), q[j])
        assert f.verify() == []


def test_two_widths_write_the_1_0_file_byte_for_byte(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(F32)
    res = nest_levels(w, (8, 6))
    paths = []
    for widths in ((), (6, 8)):
        path = tmp_path / f"f{len(widths)}.nq"
        with NQWriter(path, n=8, h=6, metadata={}, widths=widths) as wr:
            wr.add_nested(
                "w",
                w_high=res.codes[0],
                w_low=res.residuals[0],
                scale_full=res.scales[1],
                offset_full=res.offsets[1],
                scale_part=res.scales[0],
                offset_part=res.offsets[0],
            )
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with nqformat.open(paths[1]) as f:
        assert f.version == (1, 0) and f.levels == (6, 8)
        _same(f.read("w", bits=8), f.read("w", "full"))
        _same(f.read("w", bits=6), f.read("w", "part"))


def test_quantizer_levels_written_and_read_back_exactly(tmp_path):
    w = np.random.default_rng(1).standard_normal((8, 4, 3, 3)).astype(F32)
    res = nest_levels(w, (8, 6, 4))
    path = tmp_path / "q.nq"
    with NQWriter(path, n=8, h=4, metadata={}, widths=res.widths) as wr:
        wr.add_levels(
            "w",
            w_high=res.codes[0],
            residuals=res.residuals,
            scales=res.scales,
            offsets=res.offsets,
            w_int=res.codes[-1],
        )
    with nqformat.open(path) as f:
        for j, width in enumerate(res.widths):
            _same(f.read("w", bits=width), res.dequantize(j))
        assert f.params("w").scale_part.tobytes() == res.scales[0].tobytes()
        scale, offset = f.level_params("w", 6)
        assert scale.tobytes() == res.scales[1].tobytes()
        assert offset.tobytes() == res.offsets[1].tobytes()


def test_writer_refuses_inconsistent_level_input(tmp_path):
    with pytest.raises(QuantizationError):
        NQWriter(tmp_path / "a.nq", n=8, h=4, metadata={}, widths=(2, 6, 8))
    q = np.zeros((2, 3), np.int8)
    ones = [np.ones(2, F32)] * 3
    with NQWriter(tmp_path / "b.nq", n=8, h=4, metadata={}, widths=(4, 6, 8)) as wr:
        with pytest.raises(NQError):
            wr.add_nested(
                "x",
                w_high=q,
                w_low=q,
                scale_full=ones[0],
                offset_full=ones[0],
                scale_part=ones[0],
                offset_part=ones[0],
            )
        with pytest.raises(QuantizationError):  # a residual outside its 3 bits
            wr.add_levels("x", w_high=q, residuals=[q, q + 4], scales=ones, offsets=ones)
        with pytest.raises(QuantizationError):  # one residual short
            wr.add_levels("x", w_high=q, residuals=[q], scales=ones, offsets=ones)
        wr.add_levels("x", w_high=q, residuals=[q, q], scales=ones, offsets=ones)
    with NQWriter(tmp_path / "c.nq", n=8, h=4, metadata={}) as wr:
        with pytest.raises(NQError):
            wr.add_levels("x", w_high=q, residuals=[q, q], scales=ones, offsets=ones)
        wr.abort()


def test_bits_must_name_a_level_of_the_file():
    with nqformat.open(VECTORS / "valid" / "levels_n6h2.nq") as f:
        for bad in (3, 8, True, 0):
            with pytest.raises(NQError):
                f.read("w", bits=bad)


def test_page_in_level_checks_each_level_crc_once_and_release_drops_them():
    with nqformat.open(VECTORS / "valid" / "levels_four.nq") as f:
        assert f.page_in_level(5) > 0
        assert f.page_in_level(5) == 0  # already resident
        assert f.release_low() > 0
        assert f.page_in_low() == f.sections()[5].length
        _same(f.read("a", bits=3), f.read("a", bits=3))
        assert f.release_low() == f.sections()[5].length


def test_a_damaged_level_fails_only_its_own_and_finer_levels():
    path = VECTORS / "invalid" / "level_section_crc.nq"  # R_2 (the 5-bit level) is damaged
    with nqformat.open(path) as f:
        f.read("a", bits=2)
        f.read("a", bits=3)
        for width in (5, 8):
            with pytest.raises(ChecksumError):
                f.read("a", bits=width)


@pytest.mark.parametrize(
    "entry",
    MANIFEST["levels_valid"] + [v for v in MANIFEST["levels_invalid"] if v["when"] == "open"],
    ids=lambda v: v["file"],
)
def test_array_check_and_record_walk_agree_on_levels_files(entry: dict[str, Any]) -> None:
    from nqformat.container import header as hdr

    raw = (VECTORS / entry["file"]).read_bytes()
    try:
        pre = hdr._check_preamble(raw[: spec.PREAMBLE_SIZE], len(raw))
        decl = hdr._level_decl(pre)  # None for the vector whose LEVELS flag was cleared
        header = raw[: pre.sections[spec.Section.META].end if decl is None else decl.entry.end]
        hdr._check_header_crcs(pre, header, decl)
        levels = None if decl is None else hdr._check_level_entries(pre, header, decl)
    except NQFormatError:
        return  # refused before step 11
    fast = hdr._records_vectorised(pre, header, levels)
    try:
        walked: object = hdr._check_records_each(pre, header, levels)
    except NQFormatError as exc:
        walked = exc
    if isinstance(walked, NQFormatError):
        assert fast is None
    else:
        assert fast == walked


def test_over_http_a_level_downloads_only_its_prefix(tmp_path) -> None:
    from nqformat.remote.server import serve

    local = nqformat.open(VECTORS / "valid" / "levels_four.nq")
    with (
        serve(VECTORS / "valid") as srv,
        nqformat.open(srv.url_of("levels_four.nq"), cache_dir=tmp_path) as f,
    ):
        for j, width in enumerate(f.levels):
            _same(f.read("a", bits=width), local.read("a", bits=width))
            assert srv.bytes_sent() <= f.level_ends[j]  # nothing past this level's end
    local.close()


def test_verify_of_a_level_prefix_checks_the_padding_before_low(tmp_path) -> None:
    # a prefix that reaches the 6-bit level of INT(8|6|4): the padding [part_end, LOW.offset)
    # is in the file and must be zero (found by the C/Python differential mutants)
    raw = bytearray((VECTORS / "valid" / "levels_n8h4_model.nq").read_bytes())
    with nqformat.open(VECTORS / "valid" / "levels_n8h4_model.nq") as f:
        part_end, end6 = f.level_ends[:2]
    raw[part_end + 10] = 0x40
    path = tmp_path / "cut.nq"
    path.write_bytes(bytes(raw[: end6 + 100]))
    with nqformat.open(path) as f:
        assert f.available_levels == (4, 6)
        assert any("padding before LOW" in p for p in f.verify())
