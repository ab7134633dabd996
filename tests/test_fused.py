"""nqformat.fused: the C kernel and the numpy path give the same float32 bits (spec §7.2, §7.3)
for every width, both modes, any shape, and any parameter (NaN, inf, -0.0, subnormals)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nqformat import bitpack, fused
from nqformat.errors import NQError

needs_c = pytest.mark.skipif(
    fused._fused is None and os.environ.get("NQFORMAT_FUSED", "").lower() == "numpy",
    reason="NQFORMAT_FUSED=numpy chose the numpy path",
)

SPECIAL = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -3.4e38, 3.4e38]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit patterns, NaNs aside: IEEE 754 leaves the sign and payload of a NaN made by
    0 * inf, or of NaN + NaN, to the hardware and the operand order, so any NaN matches any
    NaN (their positions must agree). Everything else, -0.0 included, must match bit for bit."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool(
        np.array_equal(nan_a, nan_b)
        and a[~nan_a].view(np.uint32).tobytes() == b[~nan_b].view(np.uint32).tobytes()
    )


def f32(x: float) -> np.float32:
    return np.frombuffer(struct.pack("<f", x), dtype=np.float32)[0]


def literal(h_codes: np.ndarray, l_codes: np.ndarray | None, lbits: int, rows: int, sc, of):
    """§7.2 element by element in float32 scalars: q, then fl32(q*s), then fl32(+o)."""
    per = len(h_codes) // rows if rows else 0
    out = np.empty(len(h_codes), np.float32)
    with np.errstate(all="ignore"):
        for i, hc in enumerate(h_codes):
            q = int(hc) if l_codes is None else int(hc) * (1 << lbits) + int(l_codes[i])
            c = i // per
            out[i] = np.float32(np.float32(q) * sc[c]) + of[c]
    return out


@st.composite
def cases(draw: st.DrawFn):
    h = draw(st.integers(1, 8))
    lbits = draw(st.integers(0, 8 - h))
    rows = draw(st.integers(0, 6))
    per = draw(st.integers(0, 70)) if rows else 0
    count = rows * per
    seed = draw(st.integers(0, 2**32 - 1))
    floats = st.one_of(st.sampled_from(SPECIAL), st.floats(width=32, allow_nan=True))
    sc = np.array([draw(floats) for _ in range(rows)], np.float32)
    of = np.array([draw(floats) for _ in range(rows)], np.float32)
    full = draw(st.booleans())
    return h, lbits, rows, count, seed, sc, of, full


def encode(h: int, lbits: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    hc = rng.integers(-(1 << (h - 1)), 1 << (h - 1), count)
    lc = rng.integers(-(1 << lbits), 1 << lbits, count)
    return hc, lc, bitpack.pack(hc, h), bitpack.pack(lc, lbits + 1)


@pytest.fixture(params=[True, False], ids=["simd", "portable"])
def simd(request):
    """Run the C kernel with its AVX2 decode (where the CPU has it) and with the portable one."""
    if fused._fused is None:
        yield request.param
        return
    before = fused._fused.use_simd(request.param)
    yield request.param
    fused._fused.use_simd(before)


@needs_c
# the fixture only selects a code path: sharing it across examples is what we want
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_c_kernel_matches_numpy_and_the_spec_bit_for_bit(simd, case) -> None:
    h, lbits, rows, count, seed, sc, of, full = case
    hc, lc, hb, lb = encode(h, lbits, count, seed)
    low = lb if full else None
    kw = dict(h=h, lbits=lbits, count=count, rows=rows, scale=sc, offset=of)
    c = fused.dequantize_packed(hb, low, **kw)
    ref = fused.dequantize_packed_numpy(hb, low, **kw)
    spec = literal(hc, lc if full else None, lbits, rows, sc, of)
    assert same_bits(c, ref)
    assert same_bits(ref, spec)


@settings(max_examples=150, deadline=None)
@given(case=cases())
def test_dequantize_into_gives_dequantize_packed_bits(case) -> None:
    """The codes runtime's per-layer call (C at once, no Python-side checks) is the same
    arithmetic as the checked entry point, in C and without the extension."""
    h, lbits, rows, count, seed, sc, of, full = case
    _, _, hb, lb = encode(h, lbits, count, seed)
    low = lb if full else None
    want = fused.dequantize_packed(
        hb, low, h=h, lbits=lbits, count=count, rows=rows, scale=sc, offset=of
    )
    out = np.full(count, np.nan, np.float32)
    fused.dequantize_into(hb, low, h, lbits, count, rows, sc, of, out)
    assert same_bits(out, want)


def test_dequantize_into_still_refuses_short_buffers() -> None:
    """The C kernel's own checks stand in for the skipped ones (no out-of-bounds read)."""
    one = np.ones(2, np.float32)
    hb = bitpack.pack(np.zeros(16, np.int8), 4)
    with pytest.raises(NQError, match="too short"):
        fused.dequantize_into(hb[:-1], None, 4, 2, 16, 2, one, one, np.empty(16, np.float32))
    with pytest.raises(NQError, match=r"short|scale"):  # C: "too short"; numpy: "scale must"
        fused.dequantize_into(hb, None, 4, 2, 16, 2, one[:1], one, np.empty(16, np.float32))


@needs_c
@pytest.mark.parametrize("h", range(1, 9))
@pytest.mark.parametrize("full", [False, True])
def test_large_tensor_is_the_same_with_any_thread_count(simd, h: int, full: bool) -> None:
    lbits = max(0, min(8 - h, 2))
    rows = 37 * 8  # not a power of two, so channel runs straddle chunk and thread bounds
    count = rows * 3547  # several chunks per thread, an odd run per channel
    rng = np.random.default_rng(h)
    _, _, hb, lb = encode(h, lbits, count, h)
    sc = rng.standard_normal(rows).astype(np.float32)
    of = rng.standard_normal(rows).astype(np.float32)
    kw = dict(h=h, lbits=lbits, count=count, rows=rows, scale=sc, offset=of)
    low = lb if full else None
    ref = fused.dequantize_packed_numpy(hb, low, **kw)
    for threads in (1, 3, None):
        out = np.full(count, np.nan, np.float32)
        fused.dequantize_packed(hb, low, out=out, threads=threads, **kw)
        assert out.tobytes() == ref.tobytes(), threads


@pytest.mark.parametrize("impl", [fused.dequantize_packed, fused.dequantize_packed_numpy])
def test_bad_arguments_raise_nqerror(impl) -> None:
    one = np.ones(2, np.float32)
    hb = bitpack.pack(np.zeros(16, np.int8), 4)
    ok = dict(h=4, lbits=2, count=16, rows=2, scale=one, offset=one)
    with pytest.raises(NQError, match="too short"):
        impl(hb[:-1], None, **ok)
    with pytest.raises(NQError, match="too short"):
        impl(hb, hb[:5], **ok)  # LOW of width 3 needs 6 bytes
    with pytest.raises(NQError, match="rows"):
        impl(hb, None, **{**ok, "rows": 3, "scale": np.ones(3, np.float32)})
    with pytest.raises(NQError, match="h must be"):
        impl(hb, None, **{**ok, "h": 9})
    with pytest.raises(NQError, match="scale"):
        impl(hb, None, **{**ok, "scale": np.ones(2, np.float64)})
    with pytest.raises(NQError, match="out must be"):
        impl(hb, None, out=np.empty(15, np.float32), **ok)


def test_the_extension_is_built() -> None:
    """CI installs with a C compiler: a silently skipped build would hide the fast path."""
    if os.environ.get("NQFORMAT_FUSED", "").lower() == "numpy":
        assert fused.BACKEND == "numpy"
    else:
        assert fused.BACKEND == "c", "nqformat._fused was not built (pip install -e . needs gcc)"


def test_reads_straight_from_a_memoryview_without_copying() -> None:
    codes = np.arange(-8, 8, dtype=np.int8)
    blob = memoryview(bytes(bitpack.pack(codes, 4)))
    out = fused.dequantize_packed(
        blob,
        None,
        h=4,
        lbits=0,
        count=16,
        rows=1,
        scale=np.array([0.5], np.float32),
        offset=np.array([f32(-0.0)], np.float32),
    )
    assert out.tolist() == (codes * 0.5).tolist()


@pytest.fixture(params=[True, False], ids=["clmul", "tables"])
def clmul(request):
    """The C CRC with its PCLMULQDQ folding (where the CPU has it) and with its tables only."""
    if fused._fused is None:
        yield request.param
        return
    before = fused._fused.use_clmul(request.param)
    yield request.param
    fused._fused.use_clmul(before)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=1200),
    cuts=st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 1200)), max_size=12),
)
def test_crc32_ranges_equal_zlib_for_any_ranges(clmul, data: bytes, cuts) -> None:
    import zlib

    ranges = [(min(a, len(data)), min(b, len(data) - min(a, len(data)))) for a, b in cuts]
    offsets = np.array([o for o, _ in ranges], np.uint64)
    lengths = np.array([n for _, n in ranges], np.uint64)
    got = fused.crc32_ranges(data, offsets, lengths)
    assert got.tolist() == [zlib.crc32(data[o : o + n]) for o, n in ranges]


def test_crc32_ranges_of_a_large_buffer_and_out_of_range_is_an_nqerror(monkeypatch) -> None:
    import zlib

    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    offsets = np.array([0, 5, 1 << 20], np.uint64)
    lengths = np.array([len(data), len(data) - 5, 12345], np.uint64)
    pairs = zip(offsets.tolist(), lengths.tolist(), strict=True)
    want = [zlib.crc32(data[o : o + n]) for o, n in pairs]
    for in_c in (fused.CRC_IN_C, False):  # the C path where built, and the zlib loop
        monkeypatch.setattr(fused, "CRC_IN_C", in_c)
        assert fused.crc32_ranges(data, offsets, lengths).tolist() == want
        with pytest.raises(NQError, match="outside"):
            fused.crc32_ranges(data, np.array([1], np.uint64), np.array([len(data)], np.uint64))
