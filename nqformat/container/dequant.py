"""From stored blobs to values: zstd blobs to raw bytes (spec §8), codes to float32 (§7.2).

:func:`dequantize` is the one place that turns integer codes plus per-channel parameters into
float32; a native kernel can replace its inner loop without touching the reader.
"""

from __future__ import annotations

import numpy as np

from nqformat.errors import LayoutError

__all__ = ["Scratch", "dequantize", "zstd_decompress"]

#: bytes a zstd frame header takes at most, enough to read its declared content size (§8)
_ZSTD_FRAME_HEADER_MAX = 18


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


def zstd_decompress(stored: memoryview, raw_len: int, what: str) -> bytes:
    """One zstd frame whose declared content size is exactly ``raw_len`` (§8)."""
    import zstandard  # lazily: uncompressed files never need it

    try:
        declared = zstandard.frame_content_size(bytes(stored[:_ZSTD_FRAME_HEADER_MAX]))
    except zstandard.ZstdError as exc:
        raise LayoutError(f"{what}: not a zstd frame ({exc}) (§8)") from None
    if declared != raw_len:
        raise LayoutError(
            f"{what}: zstd frame declares {declared} content bytes, expected {raw_len} (§8)"
        )
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(bytes(stored))
    except zstandard.ZstdError as exc:
        raise LayoutError(f"{what}: zstd decompression failed ({exc}) (§8)") from None
    if not dobj.eof or dobj.unused_data or len(out) != raw_len:
        raise LayoutError(
            f"{what}: zstd blob must be exactly one complete frame of {raw_len} bytes (§8)"
        )
    return out
