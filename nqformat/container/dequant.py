"""From stored blobs to values: zstd blobs to raw bytes (spec §8), codes to float32 (§7.2).

:func:`dequantize` is the one place that turns integer codes plus per-channel parameters into
float32; a native kernel can replace its inner loop without touching the reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nqformat.container.spec import ZSTD_MAX_WINDOW
from nqformat.errors import InvalidHeaderError, LayoutError, UnsupportedFeatureError

__all__ = [
    "Scratch",
    "ZstdFrameHeader",
    "check_params_finite",
    "dequantize",
    "zstd_decompress",
    "zstd_frame_header",
]

# RFC 8878 §3.1.1: magic, Frame_Header_Descriptor, [Window_Descriptor], [Dictionary_ID],
# [Frame_Content_Size]; 18 bytes at most
_ZSTD_FRAME_HEADER_MAX = 18
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528 little-endian
_ZSTD_FHD_AT = 4
_ZSTD_RESERVED_BIT = 0x08  # Frame_Header_Descriptor bit 3: a decoder must reject it set
_ZSTD_DID_SIZES = (0, 1, 2, 4)  # by Dictionary_ID_flag
_ZSTD_FCS_SIZES = (0, 2, 4, 8)  # by Frame_Content_Size_flag (flag 0: 1 byte if single-segment)
_ZSTD_FCS2_BIAS = 256  # the 2-byte Frame_Content_Size is stored minus 256
_ZSTD_WINDOW_LOG_MIN = 10  # Window_Descriptor: windowLog = 10 + Exponent


@dataclass(frozen=True)
class ZstdFrameHeader:
    """What §8 needs from a frame header: content size, window size, content checksum flag."""

    content_size: int
    window_size: int
    checksum: bool


def check_params_finite(params: np.ndarray, what: str) -> None:
    """§7.2: every parameter of a NESTED data blob must be finite (InvalidHeaderError), so
    dequantization never meets NaN and its float32 results are the same bits everywhere."""
    if not np.isfinite(params).all():
        bad = int(np.flatnonzero(~np.isfinite(params))[0])
        raise InvalidHeaderError(
            f"{what}: parameter {bad} of the data blob is {params[bad]!r}, not finite (§7.2)"
        )


def dequantize(
    codes: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, ...],
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """w = fl32(fl32(float32(code) * scale[c]) + offset[c]) per output channel c (§7.2), into
    ``out`` (C-contiguous float32 of ``shape``) when given."""
    channels = shape[0]
    per = codes.size // channels if channels else 0
    dst = None if out is None else out.reshape(channels, per)
    # The int -> float32 cast is exact and happens inside the multiply (no extra pass); the
    # product is rounded to float32 here ...
    w = np.multiply(
        codes.reshape(channels, per), scale.reshape(channels, 1), out=dst, dtype=np.float32
    )
    np.add(w, offset.reshape(channels, 1), out=w)  # ... and the sum here: never a fused FMA
    return w.reshape(shape)


class Scratch:
    """Reusable code buffers (int8 slots and one int16), grown to the largest tensor seen: the
    codes of one tensor live only until it is dequantized, and reusing warm memory saves the
    page faults of a fresh array per tensor."""

    def __init__(self) -> None:
        self._int8: dict[int, np.ndarray] = {}
        self._int16 = np.empty(0, dtype=np.int16)

    def int8(self, count: int, slot: int) -> np.ndarray:
        buf = self._int8.get(slot)
        if buf is None or buf.size < count:
            buf = self._int8[slot] = np.empty(count, dtype=np.int8)
        return buf[:count]

    def int16(self, count: int) -> np.ndarray:
        if self._int16.size < count:
            self._int16 = np.empty(count, dtype=np.int16)
        return self._int16[:count]


def zstd_frame_header(stored: memoryview | bytes, raw_len: int, what: str) -> ZstdFrameHeader:
    """The header of the zstd frame a codec-1 blob stores, checked as §8 requires (RFC 8878
    §3.1.1.1): no library needed, so a reader without zstd checks it too. LayoutError if it
    is not a frame, has the reserved bit set, needs a dictionary, does not declare a content
    size of exactly ``raw_len`` or asks for a window over ZSTD_MAX_WINDOW."""
    head = bytes(stored[:_ZSTD_FRAME_HEADER_MAX])
    if len(head) < _ZSTD_FHD_AT + 1 or head[:_ZSTD_FHD_AT] != _ZSTD_MAGIC:
        raise LayoutError(f"{what}: not a zstd frame (§8)")
    fhd = head[_ZSTD_FHD_AT]
    fcs_flag, single, did_flag = fhd >> 6, fhd >> 5 & 1, fhd & 3
    if fhd & _ZSTD_RESERVED_BIT:
        raise LayoutError(f"{what}: zstd frame header has its reserved bit set (§8)")
    at = _ZSTD_FHD_AT + 1 + (0 if single else 1)  # Window_Descriptor unless single-segment
    did_size = _ZSTD_DID_SIZES[did_flag]
    fcs_size = single if fcs_flag == 0 else _ZSTD_FCS_SIZES[fcs_flag]
    if len(head) < at + did_size + fcs_size:
        raise LayoutError(f"{what}: zstd frame header is cut short (§8)")
    dictionary = int.from_bytes(head[at : at + did_size], "little")
    content = int.from_bytes(head[at + did_size : at + did_size + fcs_size], "little")
    content += _ZSTD_FCS2_BIAS if fcs_size == 2 else 0
    if dictionary:
        raise LayoutError(f"{what}: zstd frame needs a dictionary (§8)")
    if fcs_size == 0:
        raise LayoutError(f"{what}: zstd frame does not declare its content size (§8)")
    if content != raw_len:
        raise LayoutError(
            f"{what}: zstd frame declares {content} content bytes, expected {raw_len} (§8)"
        )
    if single:
        window = content
    else:
        exponent, mantissa = head[_ZSTD_FHD_AT + 1] >> 3, head[_ZSTD_FHD_AT + 1] & 7
        base = 1 << (_ZSTD_WINDOW_LOG_MIN + exponent)
        window = base + base // 8 * mantissa
    if window > ZSTD_MAX_WINDOW:
        raise LayoutError(
            f"{what}: zstd frame asks for a {window}-byte window, more than {ZSTD_MAX_WINDOW} (§8)"
        )
    return ZstdFrameHeader(content, window, bool(fhd >> 2 & 1))


def zstd_decompress(stored: memoryview, raw_len: int, what: str) -> bytes:
    """One zstd frame whose declared content size is exactly ``raw_len`` (§8); its content
    checksum, when present, is verified. Without the zstandard package: UnsupportedFeatureError
    once the header has passed (§8, a reader without zstd)."""
    zstd_frame_header(stored, raw_len, what)
    try:
        import zstandard  # lazily: uncompressed files never need it
    except ImportError:
        raise UnsupportedFeatureError(
            f"{what}: the blob is zstd-compressed (codec 1) and the zstandard package is not "
            "installed (§8)"
        ) from None
    dobj = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
    try:
        out = dobj.decompress(bytes(stored))  # libzstd verifies the content checksum
    except zstandard.ZstdError as exc:
        raise LayoutError(f"{what}: zstd decompression failed ({exc}) (§8)") from None
    if not dobj.eof or dobj.unused_data or len(out) != raw_len:
        raise LayoutError(
            f"{what}: zstd blob must be exactly one complete frame of {raw_len} bytes (§8)"
        )
    return out
