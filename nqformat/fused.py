"""Packed codes to float32 in one pass: unpack (§7.3) + recompose ``q = H*2^l + L`` +
dequantize (§7.2), straight into the destination.

Two implementations, bit-identical (tests/test_fused.py checks them against each other):

* ``"c"``: the C extension ``nqformat._fused``, built at install (setup.py) with
  ``-ffp-contract=off``. It decodes a few KiB of codes at a time into an L1-resident buffer
  and writes each float32 once, with the GIL released (so large tensors split across threads).
* ``"numpy"``: :func:`dequantize_packed_numpy`, the reader's numpy path (bitpack.unpack, an
  int16 recomposition, one multiply and one add pass). Used when the extension is missing
  (no compiler at install) or ``NQFORMAT_FUSED=numpy`` is set.

Why C rather than numba or torch ops: see docs/runtime.md (the C kernel imports in well under
a millisecond and needs nothing at run time; numba adds its import and JIT/cache start-up to
every load and a large dependency; torch ops would need torch on the reader side and still
take one pass per step).

The reader side stays numpy-only: this module never imports torch.
"""

from __future__ import annotations

import itertools
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nqformat import bitpack
from nqformat._workers import shared_pool
from nqformat.errors import NQError

__all__ = [
    "BACKEND",
    "CRC_IN_C",
    "JSON_SCAN_IN_C",
    "SCATTER_IN_C",
    "crc32_ranges",
    "dequantize_into",
    "dequantize_packed",
    "dequantize_packed_numpy",
    "json_scan",
    "scatter",
]

try:
    if os.environ.get("NQFORMAT_FUSED", "").lower() == "numpy":
        raise ImportError("NQFORMAT_FUSED=numpy")
    from nqformat import _fused  # type: ignore[attr-defined]
except ImportError:
    _fused = None

#: Which implementation :func:`dequantize_packed` uses: ``"c"`` or ``"numpy"``.
BACKEND = "c" if _fused is not None else "numpy"

# 8 codes of k bits are k bytes (§7.3): thread ranges start on a group.
_GROUP = 8
# Below this many elements a second thread costs more than it saves (as in bitpack).
_PARALLEL_MIN_ELEMENTS = 1 << 20


def _get_pool() -> ThreadPoolExecutor:
    return shared_pool("fused", (os.cpu_count() or 1) - 1)


def _params(a: object, rows: int, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.float32 or arr.ndim != 1 or arr.size != rows:
        raise NQError(f"{what} must be float32[{rows}], got {arr.dtype}{list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _check(
    h: int, lbits: int | None, count: int, rows: int, out: np.ndarray | None
) -> tuple[int, int]:
    if isinstance(h, bool) or not isinstance(h, int | np.integer) or not 1 <= h <= 8:
        raise NQError(f"h must be an int in 1..8, got {h!r}")
    if lbits is not None and (
        isinstance(lbits, bool) or not isinstance(lbits, int | np.integer) or not 0 <= lbits <= 7
    ):
        raise NQError(f"lbits must be an int in 0..7, got {lbits!r}")
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise NQError(f"count must be a non-negative int, got {count!r}")
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 0:
        raise NQError(f"rows must be a non-negative int, got {rows!r}")
    if (rows == 0 and count) or (rows and count % rows):
        raise NQError(f"count {count} is not a whole number of rows ({rows})")
    if out is not None and (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.size != count
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise NQError(f"out must be a writeable C-contiguous float32 array of {count} elements")
    return int(count), int(rows)


def dequantize_packed_numpy(
    high: object,
    low: object | None,
    *,
    h: int,
    lbits: int,
    count: int,
    rows: int,
    scale: np.ndarray,
    offset: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The pure-numpy reference of :func:`dequantize_packed` (same arguments, same bits)."""
    from nqformat.container.dequant import dequantize  # the reader's §7.2 arithmetic

    count, rows = _check(h, None if low is None else lbits, count, rows, out)
    scale, offset = _params(scale, rows, "scale"), _params(offset, rows, "offset")
    codes: np.ndarray = bitpack.unpack(high, h, count)
    if low is not None:
        # q = H * 2^l + L is exact in int16 since |q| < 2^9 (§7.3); int8 could wrap
        full = np.left_shift(codes, lbits, dtype=np.int16)
        np.add(full, bitpack.unpack(low, lbits + 1, count), out=full, dtype=np.int16)
        codes = full
    result = np.empty(count, np.float32) if out is None else out.reshape(-1)
    # Non-finite parameters are used as stored (§7.2), as the C kernel does, without warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        dequantize(codes, scale, offset, (rows, count // rows if rows else 0), out=result)
    return result


def dequantize_packed(
    high: object,
    low: object | None,
    *,
    h: int,
    lbits: int,
    count: int,
    rows: int,
    scale: np.ndarray,
    offset: np.ndarray,
    out: np.ndarray | None = None,
    threads: int | None = 1,
) -> np.ndarray:
    """float32[count] values of a NESTED tensor from its packed codes (§7.2, §7.3).

    ``high``: the HIGH blob (``h``-bit codes), ``low``: the LOW blob (``lbits + 1``-bit codes)
    for the full-bit model or None for the part-bit one; any buffer (bytes, memoryview of a mapping,
    uint8 array): nothing is copied. ``rows`` is ``dims[0]`` (output channels) and
    ``scale``/``offset`` are that mode's float32[rows] parameters; element ``i`` belongs to
    channel ``i // (count // rows)``. Written into ``out`` (float32, ``count`` elements,
    C-contiguous) when given. ``threads`` (default 1; None = all cores for large tensors)
    splits the work; the result never depends on it.
    """
    if _fused is None:
        return dequantize_packed_numpy(
            high, low, h=h, lbits=lbits, count=count, rows=rows, scale=scale, offset=offset, out=out
        )
    count, rows = _check(h, None if low is None else lbits, count, rows, out)
    scale, offset = _params(scale, rows, "scale"), _params(offset, rows, "offset")
    high_b = bitpack._as_bytes(high)
    low_b = None if low is None else bitpack._as_bytes(low)
    for blob, width, what in ((high_b, h, "HIGH"), (low_b, (lbits or 0) + 1, "LOW")):
        if blob is not None and blob.size < bitpack.packed_size(count, width):
            raise NQError(
                f"packed {what} buffer too short: width {width}, count {count} needs "
                f"{bitpack.packed_size(count, width)} bytes, got {blob.size}"
            )
    result = np.empty(count, np.float32) if out is None else out.reshape(-1)
    lv = 0 if low is None else int(lbits)
    n_threads = 1 if threads == 1 else (threads or os.cpu_count() or 1)
    if n_threads > 1 and count >= _PARALLEL_MIN_ELEMENTS:
        groups = -(-count // _GROUP)
        bounds = [min(count, groups * p // n_threads * _GROUP) for p in range(n_threads + 1)]
        pool = _get_pool()
        futures = [
            pool.submit(
                _fused.dequantize, high_b, low_b, h, lv, count, rows, scale, offset, result, a, b
            )
            for a, b in itertools.pairwise(bounds[1:])
        ]
        _fused.dequantize(high_b, low_b, h, lv, count, rows, scale, offset, result, 0, bounds[1])
        for f in futures:
            f.result()
    else:
        _fused.dequantize(high_b, low_b, h, lv, count, rows, scale, offset, result, 0, count)
    return result


def dequantize_into(
    high: object,
    low: object | None,
    h: int,
    lbits: int,
    count: int,
    rows: int,
    scale: np.ndarray,
    offset: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`dequantize_packed` on the calling thread for a caller whose arguments are the
    checked records of an open file (the codes runtime runs it before every layer): the C
    kernel is called straight away (it still refuses short buffers and bad widths, as
    NQError), without the Python-side checks that cost as much as the decode of a small
    layer. ``out``: float32, C-contiguous, ``count`` elements. Same bits as
    :func:`dequantize_packed`; the numpy path where the extension is not built."""
    if _fused is None:
        dequantize_packed(
            high, low, h=h, lbits=lbits, count=count, rows=rows, scale=scale, offset=offset, out=out
        )
        return
    try:
        _fused.dequantize(
            high, low, h, 0 if low is None else lbits, count, rows, scale, offset, out, 0, count
        )
    except (ValueError, TypeError, BufferError) as e:
        raise NQError(f"dequantize: {e}") from None


#: True when :func:`crc32_ranges` runs in C (the extension, on a CPU with PCLMULQDQ: faster than
#: zlib at every length); else it calls zlib once per range.
CRC_IN_C = bool(_fused is not None and _fused.use_clmul(True))


def crc32_ranges(buffer: object, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint32 array: ``zlib.crc32(buffer[o : o + n])`` for each ``o, n`` of ``offsets`` and
    ``lengths`` (uint64). One call for many blobs (spec §7.1: each blob has its own CRC), so
    a load of a model with hundreds of small blobs does not pay a Python call per blob."""
    offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
    lengths = np.ascontiguousarray(lengths, dtype=np.uint64)
    if offsets.shape != lengths.shape or offsets.ndim != 1:
        raise NQError("offsets and lengths must be 1-d arrays of one length")
    out = np.empty(offsets.size, np.uint32)
    if CRC_IN_C:
        try:
            _fused.crc32_ranges(buffer, offsets, lengths, out)
        except ValueError as e:
            raise NQError(str(e)) from None
        return out
    view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
    for i, (o, n) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        if o + n > view.nbytes:
            raise NQError(f"range {i} lies outside the buffer")
        out[i] = zlib.crc32(view[o : o + n])
    return out


#: True where the C extension has the META pre-scan (:func:`json_scan`)
JSON_SCAN_IN_C = _fused is not None and hasattr(_fused, "json_shape")


def json_scan(raw: bytes) -> tuple[int, int]:
    """(depth, values) of ``nqformat.container.metajson.json_shape_numpy`` in one C pass (same
    rules on any bytes, tested equal): the numpy scan costs ~15 ns per byte, a fifth of a
    small model's open. Only where :data:`JSON_SCAN_IN_C`."""
    depth, values = _fused.json_shape(raw)
    return int(depth), int(values)


#: True where the C extension copies byte ranges to memory addresses (:func:`scatter`)
SCATTER_IN_C = _fused is not None and hasattr(_fused, "scatter")


def scatter(buffer: object, offsets: list[int], lengths: list[int], addresses: list[int]) -> None:
    """Copy ``buffer[o : o + n]`` to the memory at address ``a`` for each ``o, n, a``: the
    codes load's RAW values and channel parameters into the module's memory in one call per
    piece of DATA, where ``torch``'s own copy costs a dispatch per tensor (Lite0: 246). The
    caller guarantees that every address is writable memory of ``n`` bytes that it keeps
    alive during the call; ranges outside ``buffer`` raise NQError before anything is copied.
    C where built, else ``ctypes.memmove`` per range (same bytes)."""
    off = np.array(offsets, dtype=np.uint64)
    size = np.array(lengths, dtype=np.uint64)
    to = np.array(addresses, dtype=np.uint64)
    if not off.ndim == size.ndim == to.ndim == 1 or not off.size == size.size == to.size:
        raise NQError("offsets, lengths and addresses must be 1-d and of one length")
    if SCATTER_IN_C:
        try:
            _fused.scatter(buffer, off, size, to)
        except ValueError as e:
            raise NQError(str(e)) from None
        return
    import ctypes

    src = np.frombuffer(buffer, dtype=np.uint8)  # type: ignore[call-overload]
    if ((off > src.size) | (size > src.size - np.minimum(off, src.size))).any():
        raise NQError("a range lies outside the buffer")
    base = src.ctypes.data
    for o, n, a in zip(off.tolist(), size.tolist(), to.tolist(), strict=True):
        ctypes.memmove(a, base + o, n)
