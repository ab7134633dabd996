"""Round trips and behaviour of the .nq writer and lazy reader (spec/nq-v1.md)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _container_util import Nested, random_nested, write_small

import nqformat
from nqformat import NQWriter
from nqformat.container import spec, testing
from nqformat.container.reader import TensorNotFoundError
from nqformat.container.spec import DType, IncompatFlag, Kind, Preamble, Section
from nqformat.errors import (
    ChecksumError,
    DuplicateNameError,
    InvalidNameError,
    NQError,
    PartOnlyError,
    QuantizationError,
    TruncatedError,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def small(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict]:
    path = tmp_path / "small.nq"
    return path, write_small(path)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "h"), [(8, 6), (8, 4), (4, 2), (2, 1), (8, 7), (3, 1), (5, 3)])
def test_nested_round_trip_is_exact_in_both_modes(tmp_path: pathlib.Path, n: int, h: int) -> None:
    rng = np.random.default_rng(n * 10 + h)
    t = random_nested(rng, (5, 7, 3), n, h)
    path = tmp_path / "m.nq"
    with NQWriter(path, n=n, h=h, metadata={}) as w:
        w.add_nested("w", **t.kwargs(), w_int=t.full)
    with nqformat.open(path) as f:
        assert (f.n, f.h, f.l) == (n, h, n - h)
        np.testing.assert_array_equal(f.codes("w", "high"), t.high)
        np.testing.assert_array_equal(f.codes("w", "low"), t.low)
        np.testing.assert_array_equal(f.codes("w", "full"), t.full)
        assert f.codes("w", "high").dtype == np.int8
        assert f.codes("w", "full").dtype == np.int16
        for mode in ("part", "full"):
            got = f.read("w", mode)
            assert got.dtype == np.float32 and got.shape == (5, 7, 3)
            assert got.tobytes() == t.expected(mode).tobytes()  # bit-exact, §7.2
        assert f.verify() == []


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1.5, -2.25], dtype=np.float16),
        np.array([[1e300, -0.0]], dtype=np.float64),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([0, 255], dtype=np.uint8),
        np.array([-32768, 7], dtype=np.int16),
        np.array([2**31 - 1, -(2**31)], dtype=np.int32),
        np.array(2**62, dtype=np.int64),  # 0-d
        np.array([True, False, True]),
        np.zeros((0, 4), dtype=np.float32),  # empty
        np.arange(3, dtype=">f4"),  # big-endian input is stored little-endian
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)}",
)
def test_raw_round_trip_keeps_dtype_shape_and_values(
    tmp_path: pathlib.Path, array: np.ndarray
) -> None:
    path = tmp_path / "r.nq"
    with NQWriter(path, n=8, h=4, metadata={}) as w:
        w.add_raw("t", array)
    with nqformat.open(path) as f:
        got = f.read("t")
        assert got.shape == array.shape
        assert got.dtype == array.dtype.newbyteorder("<") or got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)
        assert f.read("t", "full").tobytes() == got.tobytes()
        assert f.info("t").kind is Kind.RAW


def test_bf16_is_stored_from_and_read_as_bit_patterns(tmp_path: pathlib.Path) -> None:
    bits = (np.array([1.0, -2.5, 3.0e38], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "b.nq"
    with NQWriter(path, n=8, h=4, metadata={}) as w:
        w.add_raw("x", bits, dtype="BF16")
    with nqformat.open(path) as f:
        assert f.info("x").dtype is DType.BF16
        np.testing.assert_array_equal(f.read("x"), bits)


@pytest.mark.parametrize("compress", [False, True])
def test_read_into_out_gives_what_read_returns(tmp_path: pathlib.Path, compress: bool) -> None:
    path = tmp_path / "s.nq"
    write_small(path, n=6, h=2, compress=compress)
    with nqformat.open(path) as fresh:
        want = {(t, m): fresh.read(t, m).copy() for t in fresh.names() for m in ("part", "full")}
    with nqformat.open(path) as f:
        # big, small, big again: the reused code buffers never leak into the next tensor
        order = ["conv.weight", "fc.weight", "fc.bias", "bn.num_batches_tracked", "conv.weight"]
        for mode in ("part", "full", "part"):
            for name in order:
                info = f.info(name)
                out = np.full(info.shape, 7, dtype=info.np_dtype)
                assert f.read(name, mode, out=out) is out
                assert out.tobytes() == want[name, mode].tobytes(), (name, mode)
            f.release_buffers()  # later reads make new buffers


def test_read_into_out_refuses_an_array_it_cannot_fill(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        shape = f.info("conv.weight").shape
        for bad in (
            np.empty(shape, np.float64),
            np.empty(shape[::-1], np.float32),
            np.empty(shape[::-1], np.float32).T,  # right shape, not C-contiguous
            np.broadcast_to(np.float32(0), shape),  # read-only
            [0.0],
        ):
            with pytest.raises(NQError, match="out"):
                f.read("conv.weight", out=bad)  # type: ignore[arg-type]


def test_unsupported_numpy_dtype_is_refused(tmp_path: pathlib.Path) -> None:
    with NQWriter(tmp_path / "u.nq", n=8, h=4, metadata={}) as w, pytest.raises(NQError):
        w.add_raw("x", np.zeros(3, np.uint32))


def test_api_reports_names_info_params_sections(small: tuple[pathlib.Path, dict]) -> None:
    path, tensors = small
    with nqformat.open(path) as f:
        assert f.names() == list(tensors)
        assert [t.name for t in f.tensors()] == list(tensors)
        info = f.info("conv.weight")
        assert info.kind is Kind.NESTED and info.dtype is DType.F32
        assert info.shape == (4, 3, 3, 3) and info.numel == 108
        assert info.np_dtype == np.float32
        p = f.params("conv.weight")
        np.testing.assert_array_equal(p.scale_part, tensors["conv.weight"].scale_part)
        np.testing.assert_array_equal(p.offset_full, tensors["conv.weight"].offset_full)
        names = [s.name for s in f.sections()]
        assert names == ["INDEX", "NAMES", "META", "DATA", "HIGH", "LOW"]
        assert f.metadata["model"] == {"arch": "tiny"}
        assert f.metadata["format"]["spec"] == "1.0"
        assert f.version == (1, 0) and not f.part_only
        assert f.file_size == f.full_end == path.stat().st_size
        with pytest.raises(NQError):
            f.codes("fc.bias", "high")


def test_unknown_name_suggests_close_names(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    with nqformat.open(path) as f, pytest.raises(TensorNotFoundError, match=r"conv\.weight"):
        f.read("conv.weigth")
    assert issubclass(TensorNotFoundError, KeyError)


def test_layout_is_canonical_and_sections_are_page_aligned(
    small: tuple[pathlib.Path, dict],
) -> None:
    path, _ = small
    raw = path.read_bytes()
    pre = Preamble.unpack(raw[:256])
    for which in (Section.DATA, Section.HIGH, Section.LOW):
        assert pre.section(which).offset % spec.SECTION_ALIGN == 0
    with nqformat.open(path) as f:
        for t in f.tensors():
            refs = [t.data] + ([t.high, t.low] if t.kind is Kind.NESTED else [])
            assert all(r.offset % spec.BLOB_ALIGN == 0 for r in refs)


# --- determinism -------------------------------------------------------------------------------


def test_same_input_gives_identical_bytes(tmp_path: pathlib.Path) -> None:
    write_small(tmp_path / "a.nq")
    write_small(tmp_path / "b.nq")
    assert (tmp_path / "a.nq").read_bytes() == (tmp_path / "b.nq").read_bytes()


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions only")
def test_written_file_gets_umask_permissions_not_mkstemp_0600(tmp_path: pathlib.Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "perm.nq"
        with NQWriter(path, n=8, h=6, metadata={}) as w:
            w.add_raw("a", np.zeros(3, np.float32))
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_meta_is_canonical_json_independent_of_key_order(tmp_path: pathlib.Path) -> None:
    for name, meta in (
        ("a", {"z": 1, "a": {"y": [1, 2], "b": "é"}}),
        ("b", {"a": {"b": "é", "y": [1, 2]}, "z": 1}),
    ):
        with NQWriter(tmp_path / f"{name}.nq", n=4, h=2, metadata=meta) as w:
            w.add_raw("x", np.zeros(1, np.float32))
    a, b = (tmp_path / "a.nq").read_bytes(), (tmp_path / "b.nq").read_bytes()
    assert a == b
    pre = Preamble.unpack(a[:256])
    meta = a[pre.section(Section.META).offset : pre.section(Section.META).end]
    parsed = json.loads(meta)
    assert (
        meta
        == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


# --- part-bit prefix (§9) ----------------------------------------------------------------------


def test_part_mode_never_requests_a_byte_of_low(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        for name in f.names():
            f.read(name, "part")
            if f.info(name).kind is Kind.NESTED:
                f.codes(name, "high")
                f.params(name)
        assert not f.low_resident
        assert f.max_offset_read <= f.part_end
        before = f.bytes_read
        assert before <= f.part_end
        f.read("fc.weight", "full")
        assert f.low_resident
        assert f.max_offset_read == f.full_end  # LOW was reached only now
        assert f.bytes_read > before


def test_file_cut_at_part_end_opens_part_only(
    small: tuple[pathlib.Path, dict], tmp_path: pathlib.Path
) -> None:
    path, tensors = small
    with nqformat.open(path) as f:
        part_end, full_end = f.part_end, f.full_end
    for size in (part_end, part_end + 1, full_end - 1):
        cut = tmp_path / f"cut{size}.nq"
        cut.write_bytes(path.read_bytes()[:size])
        with nqformat.open(cut) as f:
            assert f.part_only
            t: Nested = tensors["conv.weight"]
            np.testing.assert_array_equal(f.read("conv.weight"), t.expected("part"))
            np.testing.assert_array_equal(f.read("fc.bias"), tensors["fc.bias"])
            with pytest.raises(PartOnlyError, match="part-bit-only"):
                f.read("conv.weight", "full")
            with pytest.raises(PartOnlyError):
                f.codes("conv.weight", "low")
            with pytest.raises(PartOnlyError):
                f.page_in_low()
            assert f.verify() == []


def test_file_shorter_than_part_end_is_truncated(
    small: tuple[pathlib.Path, dict], tmp_path: pathlib.Path
) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        part_end = f.part_end
    cut = tmp_path / "short.nq"
    cut.write_bytes(path.read_bytes()[: part_end - 1])
    with pytest.raises(TruncatedError, match="cut short"):
        nqformat.open(cut)


def test_low_pages_in_and_out(small: tuple[pathlib.Path, dict]) -> None:
    path, tensors = small
    with nqformat.open(path) as f:
        low_len = f.full_end - (f.full_end - f.sections()[Section.LOW].length)
        assert not f.low_resident and f.release_low() == 0
        assert f.page_in_low() == low_len
        assert f.low_resident and f.page_in_low() == 0
        np.testing.assert_array_equal(f.codes("fc.weight", "low"), tensors["fc.weight"].low)
        assert f.release_low() == low_len and not f.low_resident
        # paged in again on demand
        np.testing.assert_array_equal(
            f.read("conv.weight", "full"), tensors["conv.weight"].expected("full")
        )


def _flip(path: pathlib.Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_corrupt_low_is_refused_before_use(small: tuple[pathlib.Path, dict]) -> None:
    path, tensors = small
    with nqformat.open(path) as f:
        low = f.sections()[Section.LOW]
    _flip(path, low.offset)
    with nqformat.open(path) as f:
        np.testing.assert_array_equal(
            f.read("conv.weight"), tensors["conv.weight"].expected("part")
        )
        with pytest.raises(ChecksumError, match="LOW CRC"):
            f.read("conv.weight", "full")
        assert not f.low_resident
        assert any("LOW" in p for p in f.verify())
    with nqformat.open(path, verify=False) as f:
        assert not np.array_equal(f.codes("conv.weight", "low"), tensors["conv.weight"].low)


def test_blob_crc_is_checked_when_the_blob_is_read(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        high = f.info("fc.weight").high
    _flip(path, high.offset)
    with nqformat.open(path) as f:
        f.read("conv.weight")  # other tensors are still readable
        with pytest.raises(ChecksumError, match=r"fc\.weight"):
            f.read("fc.weight")
        problems = f.verify()
        assert any("fc.weight" in p for p in problems)
        assert any("HIGH section CRC" in p for p in problems)


def test_verify_finds_nonzero_padding(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        gap = f.header_end  # first byte of the padding before DATA
        assert f.verify() == []
    _flip(path, gap)
    with nqformat.open(path) as f:
        assert any("padding before DATA" in p for p in f.verify())


def test_verify_finds_nonzero_pad_bits_after_the_last_code(
    small: tuple[pathlib.Path, dict],
) -> None:
    path, _ = small
    with nqformat.open(path) as f:
        info = f.info("fc.weight")  # 15 codes of 6 bits: 90 bits, so 6 pad bits in byte 11
        assert (info.numel * f.h) % 8 != 0
        last = info.high.offset + info.high.length - 1
        index = info.index
    raw = bytearray(path.read_bytes())
    raw[last] |= 0x80
    blob = bytes(raw[last - info.high.length + 1 : last + 1])
    raw = bytearray(testing.replace_blob(bytes(raw), index, "high", crc=spec.crc32(blob)))
    path.write_bytes(testing.fix_crcs(raw, data=True))
    with nqformat.open(path) as f:
        problems = f.verify()
    assert problems == ["fc.weight: HIGH blob has nonzero pad bits after its last code (§7.3)"]


# --- compression (§8) --------------------------------------------------------------------------


def test_compression_applies_only_where_it_saves_space(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, 16384, dtype=np.uint8)  # incompressible
    zeros = np.zeros(4096, np.float32)
    paths = {}
    for compress in (False, True):
        paths[compress] = tmp_path / f"c{compress}.nq"
        with NQWriter(paths[compress], n=8, h=4, metadata={}, compress=compress) as w:
            w.add_raw("noise", noise)
            w.add_raw("zeros", zeros)
    with nqformat.open(paths[True]) as f:
        assert f.info("noise").data.codec == spec.Codec.NONE
        assert f.info("zeros").data.codec == spec.Codec.ZSTD
        assert f.incompat_flags & IncompatFlag.ZSTD
        np.testing.assert_array_equal(f.read("zeros"), zeros)
        np.testing.assert_array_equal(f.read("noise"), noise)
        assert f.verify() == []
    assert paths[True].stat().st_size < paths[False].stat().st_size


def test_incompressible_file_is_identical_with_and_without_compress(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, 1000, dtype=np.uint8)
    for c in (False, True):
        with NQWriter(tmp_path / f"{c}.nq", n=8, h=4, metadata={}, compress=c) as w:
            w.add_raw("noise", noise)
    assert (tmp_path / "False.nq").read_bytes() == (tmp_path / "True.nq").read_bytes()


# --- writer input checks -----------------------------------------------------------------------


def test_nested_code_out_of_range_is_a_quantization_error(tmp_path: pathlib.Path) -> None:
    t = random_nested(np.random.default_rng(0), (2, 3), 8, 6)
    bad_high = t.high.copy()
    bad_high[0, 0] = 32  # h=6: H in [-32, 31]
    with NQWriter(tmp_path / "x.nq", n=8, h=6, metadata={}) as w:
        with pytest.raises(QuantizationError, match="w_high"):
            w.add_nested("w", **{**t.kwargs(), "w_high": bad_high})
        bad_low = t.low.copy()
        bad_low[0, 0] = 4  # l=2: L in [-4, 3]
        with pytest.raises(QuantizationError, match="w_low"):
            w.add_nested("w", **{**t.kwargs(), "w_low": bad_low})
        wrong = t.full.copy()
        wrong[1, 2] += 1
        with pytest.raises(QuantizationError, match="w_int"):
            w.add_nested("w", **t.kwargs(), w_int=wrong)
        w.add_nested("w", **t.kwargs(), w_int=t.full)  # the failed attempts left no trace
    with nqformat.open(tmp_path / "x.nq") as f:
        assert f.names() == ["w"]


def test_recomposition_outside_n_bits_is_refused(tmp_path: pathlib.Path) -> None:
    # H = -32, L = -4 gives q = -132 < -128 although both codes are in range.
    high = np.full((1, 1), -32, np.int8)
    low = np.full((1, 1), -4, np.int8)
    ones = np.ones(1, np.float32)
    with (
        NQWriter(tmp_path / "x.nq", n=8, h=6, metadata={}) as w,
        pytest.raises(QuantizationError, match="2\\^l"),
    ):
        w.add_nested(
            "w",
            w_high=high,
            w_low=low,
            scale_full=ones,
            offset_full=ones,
            scale_part=ones,
            offset_part=ones,
        )


def test_names_must_be_distinct_and_valid(tmp_path: pathlib.Path) -> None:
    with NQWriter(tmp_path / "x.nq", n=8, h=6, metadata={}) as w:
        w.add_raw("a", np.zeros(1, np.float32))
        with pytest.raises(DuplicateNameError):
            w.add_raw("a", np.zeros(1, np.float32))
        for bad in ("", "x" * 1025, "\udc80"):
            with pytest.raises(InvalidNameError):
                w.add_raw(bad, np.zeros(1, np.float32))
        w.add_raw("é" * 512, np.zeros(1, np.float32))  # 1024 UTF-8 bytes is the maximum


def test_bad_bit_widths_are_refused(tmp_path: pathlib.Path) -> None:
    for n, h in ((9, 4), (1, 1), (8, 8), (8, 0)):
        with pytest.raises(QuantizationError):
            NQWriter(tmp_path / "x.nq", n=n, h=h, metadata={})


# --- atomicity ---------------------------------------------------------------------------------


def test_exception_inside_with_leaves_no_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "m.nq"
    with pytest.raises(RuntimeError), NQWriter(target, n=8, h=4, metadata={}) as w:
        w.add_raw("x", np.zeros(10, np.float32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_with_keeps_the_previous_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "m.nq"
    write_small(target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), NQWriter(target, n=8, h=4, metadata={}) as w:
        w.add_raw("x", np.zeros(10, np.float32))
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nq"]


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from nqformat import NQWriter

    stage = sys.argv[2]
    def hook(where):
        if where == stage:
            print("ready", flush=True)
            time.sleep(60)
    with NQWriter(sys.argv[1], n=8, h=4, metadata={}, _hook=hook) as w:
        for i in range(3):
            w.add_raw(f"t{i}", np.ones(1 << 20, np.float32))
    """
)


@pytest.mark.parametrize("stage", ["t1", "<close>"])
def test_sigkill_mid_write_leaves_no_file_at_target(tmp_path: pathlib.Path, stage: str) -> None:
    target = tmp_path / "m.nq"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(target), stage],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.kill()  # SIGKILL: no cleanup code runs
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -9
    assert not target.exists()
    # only the named temp of close() can be left behind, never under the target's name
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.endswith(".nq-tmp") for name in leftovers)


def test_reader_side_never_imports_torch(small: tuple[pathlib.Path, dict]) -> None:
    path, _ = small
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import nqformat\n"
        f"f = nqformat.open({str(path)!r}); f.read('conv.weight', 'full'); f.close()\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
