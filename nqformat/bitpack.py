"""Canonical k-bit packing of NESTED codes (spec §7.3), numpy only.

Layout (normative text in spec §7.3): the codes are one dense LSB-first bitstream; element ``i``
occupies stream bits ``[i*k, i*k + k)``, stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``,
each code is k-bit two's complement and the stream is zero-padded to a whole byte.

Why the code is shaped the way it is: decoding is on the path of every model load, and numpy
has no bit-gather primitive, so each width gets the cheapest whole-array formulation we
measured (``tools/bench_bitpack.py``):

* 8 elements of k bits are exactly k bytes (a *group*); every path works on whole groups and
  writes a group as one little-endian uint64 of 8 int8 lanes.
* k = 1, 2: a lookup table from one byte (k = 1) or one little-endian uint16 (k = 2) to the
  8 codes it holds, sign extension baked in, gathered with ``np.take``.
* k = 4: each byte is widened to a uint16 of two lanes and the nibbles are moved apart with
  one shift/or/mask (SWAR); faster than a table here.
* k = 3, 5, 6, 7: SWAR on uint64 lanes: a group is read as one unaligned uint64 window and its
  eight fields are moved to their byte lanes in three shift-and-mask halvings (32, 16, 8 bits).
* Sign extension of all lanes at once: ``(u ^ 2**(k-1)) - 2**(k-1)`` on the int8 view.
* k = 8: the blob is the int8 array itself.
* Work is done in chunks small enough that temporaries stay in L2, and large inputs are split
  across a small thread pool (numpy releases the GIL inside ufuncs and ``take``). Threads write
  disjoint output ranges, so the result does not depend on the thread count.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nqformat._workers import shared_pool
from nqformat.container import spec
from nqformat.errors import NQError

__all__ = ["MAX_WIDTH", "MIN_WIDTH", "pack", "packed_size", "unpack"]

#: Smallest code width: k = h and h >= 1 (spec §3, §7.3).
MIN_WIDTH = 1
#: Largest code width: k = l + 1 <= n <= 8 (spec §3, §7.3).
MAX_WIDTH = 8

# 8 elements of k bits fill exactly k bytes (spec §7.3 layout), the unit of every fast path.
_GROUP = 8
# Groups per chunk: 16 Ki groups = 128 KiB of int8 output, so a chunk's few uint64
# temporaries fit the 512 KiB L2 of the machines we measured on.
_CHUNK_GROUPS = 1 << 14
# Below this many elements a second thread costs more than it saves.
_PARALLEL_MIN_ELEMENTS = 1 << 21

_U64 = np.dtype("<u8")


# --------------------------------------------------------------------------------------------
# Argument checking


def _check_width(width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int | np.integer):
        raise NQError(f"width must be an int in {MIN_WIDTH}..{MAX_WIDTH}, got {width!r}")
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise NQError(f"width must be in {MIN_WIDTH}..{MAX_WIDTH}, got {width}")
    return int(width)


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise NQError(f"count must be a non-negative int, got {count!r}")
    return int(count)


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise NQError(f"threads must be a positive int or None, got {threads!r}")
    return threads


def _as_bytes(buf: object) -> np.ndarray:
    """A flat uint8 view of ``buf`` (bytes, bytearray, memoryview, mmap, uint8/int8 array)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype not in (np.uint8, np.int8):
            raise NQError(f"packed buffer must be uint8, got an array of dtype {buf.dtype}")
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(buf, dtype=np.uint8)  # type: ignore[call-overload]
    except TypeError as exc:
        raise NQError(f"packed buffer must support the buffer protocol, got {type(buf)}") from exc


def packed_size(count: int, width: int) -> int:
    """Bytes of a packed blob of ``count`` codes of ``width`` bits: ceil(count * width / 8)."""
    count = _check_count(count)
    width = _check_width(width)
    return spec.packed_length(count, width)


# --------------------------------------------------------------------------------------------
# Threading


def _get_pool() -> ThreadPoolExecutor:
    return shared_pool("bitpack", (os.cpu_count() or 1) - 1)


def _run_groups(kernel: Callable[[int, int], None], n_groups: int, threads: int) -> None:
    """Run ``kernel(g0, g1)`` over ``[0, n_groups)``, split into contiguous ranges per thread.

    Ranges are whole chunks so every thread sees the same chunk boundaries as a single thread
    would, and they are disjoint, so the output never depends on ``threads``.
    """
    n_chunks = -(-n_groups // _CHUNK_GROUPS)
    parts = min(threads, n_chunks)
    if parts <= 1:
        if n_groups:
            kernel(0, n_groups)
        return
    bounds = [min(n_groups, (n_chunks * p // parts) * _CHUNK_GROUPS) for p in range(parts + 1)]
    pool = _get_pool()
    futures = [pool.submit(kernel, bounds[p], bounds[p + 1]) for p in range(1, parts)]
    kernel(bounds[0], bounds[1])
    for f in futures:
        f.result()


def _auto_threads(threads: int | None, count: int) -> int:
    if threads is None and count < _PARALLEL_MIN_ELEMENTS:
        return 1
    return _check_threads(threads)


# --------------------------------------------------------------------------------------------
# Tables and constants (built lazily, cached, read-only)


def _sign_extend(u: np.ndarray, width: int) -> np.ndarray:
    """Two's complement value of the low ``width`` bits of ``u`` as int8."""
    u = u.astype(np.int16) & ((1 << width) - 1)
    return np.where(u >= 1 << (width - 1), u - (1 << width), u).astype(np.int8)


@functools.cache
def _lut(width: int, index_bits: int) -> np.ndarray:
    """index (``index_bits`` wide) -> the index_bits/width codes it holds, as one wide integer."""
    per = index_bits // width
    idx = np.arange(1 << index_bits, dtype=np.int64)
    codes = np.stack([_sign_extend(idx >> (width * j), width) for j in range(per)], axis=1)
    table = np.ascontiguousarray(codes).view(f"<u{per}").reshape(-1)
    table.flags.writeable = False
    return table


# Widths where a lookup table measured fastest -> bits of packed input per lookup (one group:
# the 65536-entry k = 2 table is 512 KiB but still beat the 256-entry one by ~20%).
_LUT_INDEX_BITS = {1: 8, 2: 16}


_Halving = tuple[np.ndarray, np.ndarray, np.ndarray]


@functools.cache
def _swar_halvings(width: int) -> tuple[_Halving, ...]:
    """(shift, keep, moved) of the three halvings that spread a group's k-bit fields to bytes.

    Unpacking applies them in order: ``x = (x & keep) | ((x << shift) & moved)``: fields 4-7
    move from bit 4k to bit 32, then within each 32-bit half fields 2,3 from bit 2k to bit 16,
    then within each 16-bit quarter the odd field from bit k to bit 8. Packing runs them
    backwards with right shifts (``moved >> shift``).
    """
    k = width

    def rep(mask: int, period: int) -> np.ndarray:
        a = np.array(sum(mask << (period * i) for i in range(64 // period)), dtype=_U64)
        a.flags.writeable = False
        return a

    def shift(v: int) -> np.ndarray:
        a = np.array(v, dtype=_U64)
        a.flags.writeable = False
        return a

    quad, pair, one = (1 << (4 * k)) - 1, (1 << (2 * k)) - 1, (1 << k) - 1
    return (
        (shift(32 - 4 * k), rep(quad, 64), rep(quad << 32, 64)),
        (shift(16 - 2 * k), rep(pair, 32), rep(pair << 16, 32)),
        (shift(8 - k), rep(one, 16), rep(one << 8, 16)),
    )


# --------------------------------------------------------------------------------------------
# unpack kernels: each decodes whole groups [g0, g1) of `src` into the uint64 view of `dst`


def _unpack_lut(src: np.ndarray, dst64: np.ndarray, width: int) -> Callable[[int, int], None]:
    index_bits = _LUT_INDEX_BITS[width]
    table = _lut(width, index_bits)
    # Lookups per group and the matching index view: per byte (k = 1) or per uint16 (k = 2).
    per_group = width * 8 // index_bits
    index = src[: (src.size // (index_bits // 8)) * (index_bits // 8)].view(f"<u{index_bits // 8}")
    out = dst64.view(table.dtype)

    def kernel(g0: int, g1: int) -> None:
        scratch = np.empty(_CHUNK_GROUPS * per_group, dtype=np.intp)
        for c0 in range(g0, g1, _CHUNK_GROUPS):
            a, b = c0 * per_group, min(c0 + _CHUNK_GROUPS, g1) * per_group
            idx = scratch[: b - a]
            # take() wants intp indices; converting into a reused buffer beats its own copy.
            np.copyto(idx, index[a:b], casting="unsafe")
            np.take(table, idx, out=out[a:b], mode="clip")

    return kernel


def _unpack_swar(src: np.ndarray, dst64: np.ndarray, width: int) -> Callable[[int, int], None]:
    k = width
    halvings = _swar_halvings(k)
    sign = np.array(1 << (k - 1), dtype=np.int8)
    n_windows = (src.size - 8) // k + 1 if src.size >= 8 else 0
    # Group g is the little-endian uint64 at byte g*k (its top 8-k bytes belong to later groups).
    windows = np.ndarray((n_windows,), dtype=_U64, buffer=src, strides=(k,))

    def kernel(g0: int, g1: int) -> None:
        tmp = np.empty(_CHUNK_GROUPS, dtype=_U64)
        for c0 in range(g0, g1, _CHUNK_GROUPS):
            c1 = min(c0 + _CHUNK_GROUPS, g1)
            x = dst64[c0:c1]
            t = tmp[: c1 - c0]
            # Ufuncs on the strided windows are ~2x slower than one strided copy + contiguous.
            np.copyto(x, windows[c0:c1])
            for shift, keep, moved in halvings:
                np.left_shift(x, shift, out=t)
                np.bitwise_and(t, moved, out=t)
                np.bitwise_and(x, keep, out=x)
                np.bitwise_or(x, t, out=x)
            # Lanes now hold k-bit unsigned fields; (u ^ 2^(k-1)) - 2^(k-1) sign-extends them.
            x8 = x.view(np.int8)
            np.bitwise_xor(x8, sign, out=x8)
            np.subtract(x8, sign, out=x8)

    return kernel


def _unpack_spread(src: np.ndarray, dst64: np.ndarray, width: int) -> Callable[[int, int], None]:
    """k dividing 8: widen each byte to its 8/k output lanes, then halve fields apart in place.

    The widened lanes start zeroed above the byte, so each halving is shift, or, mask (no
    separate keep/move masks as in the general SWAR path, whose windows carry foreign bits).
    """
    k = width
    per = 8 // k
    lane = np.dtype(f"<u{per}")
    out = dst64.view(lane)
    steps = []
    bits, fields = 8 * per, per
    while fields > 1:
        fields //= 2
        bits //= 2
        mask = sum(((1 << (fields * k)) - 1) << (bits * i) for i in range(per * 8 // bits))
        steps.append((np.array(bits - fields * k, dtype=lane), np.array(mask, dtype=lane)))
    sign = np.array(1 << (k - 1), dtype=np.int8)

    def kernel(g0: int, g1: int) -> None:
        tmp = np.empty(_CHUNK_GROUPS * k, dtype=lane)
        for c0 in range(g0 * k, g1 * k, _CHUNK_GROUPS * k):
            c1 = min(c0 + _CHUNK_GROUPS * k, g1 * k)
            x = out[c0:c1]
            t = tmp[: c1 - c0]
            np.copyto(x, src[c0:c1])
            for shift, mask in steps:
                np.left_shift(x, shift, out=t)
                np.bitwise_or(x, t, out=x)
                np.bitwise_and(x, mask, out=x)
            x8 = x.view(np.int8)
            np.bitwise_xor(x8, sign, out=x8)
            np.subtract(x8, sign, out=x8)

    return kernel


def _unpack_copy(src: np.ndarray, dst64: np.ndarray, width: int) -> Callable[[int, int], None]:
    dst = dst64.view(np.uint8)

    def kernel(g0: int, g1: int) -> None:
        np.copyto(dst[g0 * 8 : g1 * 8], src[g0 * 8 : g1 * 8])

    return kernel


def _unpack_kernel(width: int) -> tuple[Callable[..., Callable[[int, int], None]], int]:
    """The kernel factory for ``width`` and how many bytes past a group it may read."""
    if width == 8:
        return _unpack_copy, 0
    if width in _LUT_INDEX_BITS:
        return _unpack_lut, 0
    if width == 4:
        return _unpack_spread, 0
    return _unpack_swar, 8 - width


def _unpack_groups(src: np.ndarray, dst: np.ndarray, width: int, threads: int) -> int:
    """Decode as many whole groups as ``src`` allows without reading past it; return how many."""
    factory, overread = _unpack_kernel(width)
    n_groups = min(dst.size // _GROUP, max(0, (src.size - overread) // width))
    if n_groups:
        dst64 = dst[: n_groups * _GROUP].view(_U64)
        _run_groups(factory(src, dst64, width), n_groups, threads)
    return n_groups


def unpack(
    buf: object,
    width: int,
    count: int,
    *,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Decode ``count`` k-bit codes (spec §7.3) from ``buf`` into int8[count].

    ``buf`` is anything with the buffer protocol (bytes, memoryview, mmap, uint8 array) holding
    at least ``packed_size(count, width)`` bytes; bytes beyond that are ignored. With ``out``
    (a contiguous int8 array of at least ``count`` elements) the codes are written there and
    ``out[:count]`` is returned. ``threads`` caps the worker threads (None: all cores, for
    inputs large enough to gain from it); the result never depends on it.
    """
    width = _check_width(width)
    count = _check_count(count)
    src = _as_bytes(buf)
    need = packed_size(count, width)
    if src.size < need:
        raise NQError(
            f"packed buffer too short: width {width}, count {count} needs {need} bytes, "
            f"got {src.size}"
        )
    if out is None:
        result = np.empty(count, dtype=np.int8)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.int8:
            raise NQError(f"out must be an int8 numpy array, got {_describe(out)}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise NQError("out must be a writeable C-contiguous int8 array")
        if out.size < count:
            raise NQError(f"out too small: width {width}, count {count}, got {out.size} elements")
        result = out.reshape(-1)[:count]
    n_threads = _auto_threads(threads, count)
    src = src[:need]
    done = _unpack_groups(src, result, width, n_threads)
    rest = count - done * _GROUP
    if rest:
        # The last groups, zero-padded so the fast kernels may read their full window.
        tail_src = np.zeros(-(-rest // _GROUP) * width + _GROUP, dtype=np.uint8)
        tail_bytes = src[done * width :]
        tail_src[: tail_bytes.size] = tail_bytes
        tail_dst = np.empty(-(-rest // _GROUP) * _GROUP, dtype=np.int8)
        _unpack_groups(tail_src, tail_dst, width, 1)
        result[done * _GROUP :] = tail_dst[:rest]
    return result


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of dtype {obj.dtype}"
    return repr(type(obj))


# --------------------------------------------------------------------------------------------
# pack


def _pack_swar(lanes: np.ndarray, dst: np.ndarray, width: int) -> Callable[[int, int], None]:
    """Kernel packing groups of 8 byte lanes (low k bits = code, rest ignored) into ``dst``."""
    k = width
    steps = [
        (shift, keep, np.right_shift(moved, shift)) for shift, keep, moved in _swar_halvings(k)
    ][::-1]
    lanes64 = lanes.view(_U64)
    out = dst.reshape(-1, k)

    def kernel(g0: int, g1: int) -> None:
        tmp = np.empty(_CHUNK_GROUPS, dtype=_U64)
        acc = np.empty(_CHUNK_GROUPS, dtype=_U64)
        for c0 in range(g0, g1, _CHUNK_GROUPS):
            c1 = min(c0 + _CHUNK_GROUPS, g1)
            t = tmp[: c1 - c0]
            x = acc[: c1 - c0]
            src = lanes64[c0:c1]
            for shift, keep, moved in steps:
                np.right_shift(src, shift, out=t)
                np.bitwise_and(t, moved, out=t)
                np.bitwise_and(src, keep, out=x)
                np.bitwise_or(x, t, out=x)
                src = x
            # The group's k bytes are the low k bytes of its uint64.
            out[c0:c1] = x.view(np.uint8).reshape(-1, 8)[:, :k]

    return kernel


def pack(codes: np.ndarray, width: int, *, threads: int | None = None) -> np.ndarray:
    """Pack integer ``codes`` (any shape, row-major) as k-bit two's complement (spec §7.3).

    Every code must lie in ``[-2**(width-1), 2**(width-1) - 1]``; returns
    ``uint8[packed_size(codes.size, width)]`` with zero padding bits.
    """
    width = _check_width(width)
    arr = np.asarray(codes)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise NQError(f"codes must be an integer array, got dtype {arr.dtype}")
    flat = arr.reshape(-1)
    count = flat.size
    lo, hi = spec.code_range(width)
    if count and (flat.min() < lo or flat.max() > hi):
        bad = int(np.flatnonzero((flat < lo) | (flat > hi))[0])
        raise NQError(
            f"code {int(flat[bad])} at index {bad} out of range for width {width}: "
            f"expected {lo}..{hi}"
        )
    size = packed_size(count, width)
    if width == 8:
        return flat.astype(np.int8).view(np.uint8)
    n_groups = -(-count // _GROUP)
    lanes = np.zeros(n_groups * _GROUP, dtype=np.uint8)
    # Two's complement truncation to 8 bits; the halvings mask each field to its k bits.
    np.copyto(lanes[:count], flat, casting="unsafe")
    dst = np.empty(n_groups * width, dtype=np.uint8)
    _run_groups(_pack_swar(lanes, dst, width), n_groups, _auto_threads(threads, count))
    return dst[:size]
