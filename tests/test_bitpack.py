"""nqformat.bitpack: the spec §7.3 layout, bit for bit, on every path (LUT, SWAR, copy, tail,
threads)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nqformat import bitpack
from nqformat.bitpack import MAX_WIDTH, MIN_WIDTH, pack, packed_size, unpack
from nqformat.errors import NQError

WIDTHS = list(range(MIN_WIDTH, MAX_WIDTH + 1))
# Enough elements for several chunks per thread, plus a ragged tail.
MULTI_CHUNK = 5 * bitpack._CHUNK_GROUPS * 8 + 13


def reference_pack(codes: list[int], width: int) -> bytes:
    """Spec §7.3 written out literally: element i's bit b is stream bit i*k + b."""
    out = bytearray((len(codes) * width + 7) // 8)
    for i, code in enumerate(codes):
        u = code & ((1 << width) - 1)  # two's complement, k bits
        for b in range(width):
            if u >> b & 1:
                j = i * width + b
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


def reference_unpack(data: bytes, width: int, count: int) -> list[int]:
    """The decoding formula of spec §7.3."""
    codes = []
    for i in range(count):
        j = i * width
        b, s = j // 8, j % 8
        nxt = data[b + 1] if b + 1 < len(data) else 0
        u = ((data[b] | nxt << 8) >> s) & ((1 << width) - 1)
        codes.append(u - (1 << width) if u >= 1 << (width - 1) else u)
    return codes


def packbits_reference(codes: np.ndarray, width: int) -> np.ndarray:
    """Same layout via np.packbits, fast enough for multi-chunk inputs."""
    bits = (codes.astype(np.int64)[:, None] >> np.arange(width)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")


def random_codes(rng: np.random.Generator, width: int, count: int) -> np.ndarray:
    return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=count, dtype=np.int8)


@st.composite
def width_and_codes(draw: st.DrawFn, max_size: int = 300) -> tuple[int, list[int]]:
    width = draw(st.integers(MIN_WIDTH, MAX_WIDTH))
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return width, draw(st.lists(st.integers(lo, hi), max_size=max_size))


# --- golden bytes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "codes", "expected"),
    [
        # k=1: -1 -> 1, 0 -> 0; bits 1,0,1,1,0,0,0,0 | 1 -> 0b00001101, 0b00000001
        (1, [-1, 0, -1, -1, 0, 0, 0, 0, -1], [0x0D, 0x01]),
        # k=2: 1=01, -2=10, -1=11, 0=00, 1=01: 1 + 2<<2 + 3<<4 + 0<<6 = 0x39; 1<<8 -> 0x01
        (2, [1, -2, -1, 0, 1], [0x39, 0x01]),
        # k=3: 1=001, -1=111, 2=010, -4=100, 3=011:
        #      1 + 7<<3 + 2<<6 + 4<<9 + 3<<12 = 1 + 56 + 128 + 2048 + 12288 = 0x38B9 (15 bits)
        (3, [1, -1, 2, -4, 3], [0xB9, 0x38]),
        # k=4: 1=0001 low nibble, -1=1111 high nibble -> 0xF1; 3=0011 -> 0x03 (pad nibble 0)
        (4, [1, -1, 3], [0xF1, 0x03]),
        # k=5: -16=10000, 15=01111, 5=00101: 16 + 15<<5 + 5<<10 = 16 + 480 + 5120 = 0x15F0
        (5, [-16, 15, 5], [0xF0, 0x15]),
        # k=6: -32=100000, 31=011111, -1=111111, 0: 32 + 31<<6 + 63<<12 = 0x03F7E0 (24 bits)
        (6, [-32, 31, -1, 0], [0xE0, 0xF7, 0x03]),
        # k=7: -64=1000000, 63=0111111: 64 + 63<<7 = 64 + 8064 = 0x1FC0 (14 bits)
        (7, [-64, 63], [0xC0, 0x1F]),
        # k=8: the int8 array itself
        (8, [-128, 127, -1], [0x80, 0x7F, 0xFF]),
    ],
)
def test_golden_bytes_match_hand_computed_layout(
    width: int, codes: list[int], expected: list[int]
) -> None:
    packed = pack(np.array(codes), width)
    assert packed.dtype == np.uint8
    assert packed.tolist() == expected
    assert reference_pack(codes, width) == bytes(expected)
    assert unpack(bytes(expected), width, len(codes)).tolist() == codes


@pytest.mark.parametrize(
    ("count", "width", "size"), [(0, 3, 0), (1, 1, 1), (8, 1, 1), (9, 1, 2), (3, 5, 2), (8, 7, 7)]
)
def test_packed_size_is_bits_rounded_up_to_bytes(count: int, width: int, size: int) -> None:
    assert packed_size(count, width) == size


# --- round trips and agreement with the literal reference ----------------------------------


@settings(max_examples=300, deadline=None)
@given(width_and_codes())
def test_pack_matches_reference_and_unpack_inverts_it(case: tuple[int, list[int]]) -> None:
    width, codes = case
    packed = pack(np.array(codes, dtype=np.int64), width)
    assert packed.size == packed_size(len(codes), width)
    assert packed.tobytes() == reference_pack(codes, width)
    decoded = unpack(packed, width, len(codes))
    assert decoded.dtype == np.int8
    assert decoded.tolist() == codes


@settings(max_examples=200, deadline=None)
@given(
    st.integers(MIN_WIDTH, MAX_WIDTH),
    st.binary(max_size=200),
    st.data(),
)
def test_unpack_of_arbitrary_bytes_follows_spec_formula(
    width: int, data: bytes, draw: st.DataObject
) -> None:
    count = draw.draw(st.integers(0, len(data) * 8 // width))
    assert unpack(data, width, count).tolist() == reference_unpack(data, width, count)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("count", [0, 1, 2, 7, 8, 9, 15, 17, 63, 64, 65, 1001])
def test_round_trip_at_group_boundaries(width: int, count: int) -> None:
    codes = random_codes(np.random.default_rng(count * 10 + width), width, count)
    packed = pack(codes, width)
    assert packed.tobytes() == reference_pack(codes.tolist(), width)
    assert np.array_equal(unpack(packed, width, count), codes)


@pytest.mark.parametrize("width", WIDTHS)
def test_round_trip_across_many_chunks(width: int) -> None:
    codes = random_codes(np.random.default_rng(width), width, MULTI_CHUNK)
    packed = pack(codes, width)
    assert np.array_equal(packed, packbits_reference(codes, width))
    assert np.array_equal(unpack(packed, width, MULTI_CHUNK), codes)


# --- threads -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_threaded_and_single_thread_paths_agree(width: int) -> None:
    codes = random_codes(np.random.default_rng(100 + width), width, MULTI_CHUNK)
    packed_1 = pack(codes, width, threads=1)
    packed_2 = pack(codes, width, threads=2)
    assert np.array_equal(packed_1, packed_2)
    single = unpack(packed_1, width, MULTI_CHUNK, threads=1)
    threaded = unpack(packed_1, width, MULTI_CHUNK, threads=2)
    many = unpack(packed_1, width, MULTI_CHUNK, threads=7)
    assert np.array_equal(single, codes)
    assert np.array_equal(threaded, codes)
    assert np.array_equal(many, codes)


def test_threads_must_be_positive() -> None:
    with pytest.raises(NQError, match="threads"):
        unpack(b"\x00", 8, 1, threads=0)


# --- padding, buffers and out= -------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("count", [1, 3, 5, 7, 9, 13])
def test_padding_bits_are_zero(width: int, count: int) -> None:
    packed = pack(np.full(count, -1, dtype=np.int8), width)  # every code bit is 1
    used_bits = count * width
    assert packed.size == (used_bits + 7) // 8
    tail_bits = used_bits % 8
    expected_last = 0xFF if tail_bits == 0 else (1 << tail_bits) - 1
    assert int(packed[-1]) == expected_last
    assert np.all(packed[:-1] == 0xFF)


@pytest.mark.parametrize("width", WIDTHS)
def test_unpack_ignores_bytes_and_padding_past_count(width: int) -> None:
    codes = random_codes(np.random.default_rng(7), width, 21)
    packed = bytearray(pack(codes, width).tobytes())
    used_bits = 21 * width
    if used_bits % 8:
        packed[-1] |= 0xFF << (used_bits % 8) & 0xFF  # dirty padding bits
    packed += b"\xff" * 9
    assert np.array_equal(unpack(bytes(packed), width, 21), codes)


@pytest.mark.parametrize("width", [3, 4, 7])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "uint8", "unaligned"])
def test_unpack_accepts_any_byte_buffer(width: int, kind: str) -> None:
    codes = random_codes(np.random.default_rng(3), width, 1000)
    packed = pack(codes, width)
    if kind == "bytes":
        buf: object = packed.tobytes()
    elif kind == "bytearray":
        buf = bytearray(packed.tobytes())
    elif kind == "memoryview":
        buf = memoryview(packed.tobytes())
    elif kind == "uint8":
        buf = packed
    else:  # a blob at an odd offset inside a larger mapping
        holder = np.zeros(packed.size + 1, dtype=np.uint8)
        holder[1:] = packed
        buf = holder[1:]
    assert np.array_equal(unpack(buf, width, codes.size), codes)


@pytest.mark.parametrize("width", WIDTHS)
def test_unpack_writes_into_out_and_leaves_the_rest(width: int) -> None:
    codes = random_codes(np.random.default_rng(11), width, 100)
    out = np.full(120, 99, dtype=np.int8)
    result = unpack(pack(codes, width), width, 100, out=out)
    assert np.shares_memory(result, out)
    assert np.array_equal(out[:100], codes)
    assert np.all(out[100:] == 99)
    assert np.array_equal(result, codes)


def test_pack_flattens_any_shape_and_integer_dtype_row_major() -> None:
    codes = np.array([[1, -2, 3], [-4, 0, 2]], dtype=np.int32)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        packed = pack(codes.astype(dtype), 3)
        assert packed.tobytes() == reference_pack([1, -2, 3, -4, 0, 2], 3)
    assert np.array_equal(pack(np.array([0, 3], dtype=np.uint8), 3), pack(np.array([0, 3]), 3))


def test_empty_input_packs_to_nothing_and_unpacks_to_empty() -> None:
    for width in WIDTHS:
        assert pack(np.array([], dtype=np.int8), width).size == 0
        decoded = unpack(b"", width, 0)
        assert decoded.dtype == np.int8
        assert decoded.size == 0


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_out_of_range_code_raises_nqerror_naming_width_and_range(width: int) -> None:
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    for bad in (lo - 1, hi + 1):
        codes = np.zeros(20, dtype=np.int16)
        codes[13] = bad
        with pytest.raises(NQError) as info:
            pack(codes, width)
        message = str(info.value)
        assert f"width {width}" in message
        assert f"{lo}..{hi}" in message
        assert f"code {bad} at index 13" in message


@pytest.mark.parametrize("width", [0, 9, -1, True, 2.0])
def test_width_outside_1_to_8_raises_nqerror(width: object) -> None:
    with pytest.raises(NQError, match="width"):
        pack(np.zeros(4, dtype=np.int8), width)  # type: ignore[arg-type]
    with pytest.raises(NQError, match="width"):
        unpack(b"\x00" * 8, width, 4)  # type: ignore[arg-type]
    with pytest.raises(NQError, match="width"):
        packed_size(4, width)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", WIDTHS)
def test_too_short_buffer_raises_nqerror_with_sizes(width: int) -> None:
    count = 37
    need = packed_size(count, width)
    with pytest.raises(NQError) as info:
        unpack(b"\x00" * (need - 1), width, count)
    message = str(info.value)
    assert f"width {width}" in message
    assert f"needs {need} bytes" in message
    assert f"got {need - 1}" in message


def test_bad_out_arrays_raise_nqerror() -> None:
    data = pack(np.zeros(16, dtype=np.int8), 4)
    with pytest.raises(NQError, match="int8"):
        unpack(data, 4, 16, out=np.empty(16, dtype=np.int16))
    with pytest.raises(NQError, match="too small"):
        unpack(data, 4, 16, out=np.empty(15, dtype=np.int8))
    with pytest.raises(NQError, match="contiguous"):
        unpack(data, 4, 16, out=np.empty(32, dtype=np.int8)[::2])


def test_non_integer_codes_and_bad_buffers_raise_nqerror() -> None:
    with pytest.raises(NQError, match="integer"):
        pack(np.zeros(4, dtype=np.float32), 4)
    with pytest.raises(NQError, match="integer"):
        pack(np.zeros(4, dtype=bool), 4)
    with pytest.raises(NQError, match="uint8"):
        unpack(np.zeros(4, dtype=np.float32), 4, 2)
    with pytest.raises(NQError, match="count"):
        unpack(b"\x00", 4, -1)


def _unpack_in_child(packed: np.ndarray, width: int, count: int) -> bytes:
    return unpack(packed, width, count, threads=2).tobytes()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
@pytest.mark.timeout(60)
def test_threaded_unpack_works_in_a_forked_child_after_parent_used_threads() -> None:
    import multiprocessing

    codes = random_codes(np.random.default_rng(5), 5, MULTI_CHUNK)
    packed = pack(codes, 5)
    assert np.array_equal(unpack(packed, 5, MULTI_CHUNK, threads=2), codes)  # pool now exists
    with multiprocessing.get_context("fork").Pool(1) as workers:
        data = workers.apply(_unpack_in_child, (packed, 5, MULTI_CHUNK))
    assert np.array_equal(np.frombuffer(data, dtype=np.int8), codes)
