#!/usr/bin/env python
"""Write the conformance vectors of spec/vectors/ (schema: spec/vectors/README.md).

Vectors are written ONCE: this script never overwrites an existing file (the numcodecs fixture
pattern). It writes only the files that are missing and then checks that every existing vector
file it would have written has exactly the bytes it would have written; a difference means the
format (or the writer) changed, which needs a version decision (spec §12), so it stops with an
error instead of "fixing" the vector. The test suite only reads the stored files.

    python tools/make_vectors.py            # write missing vectors, check existing ones
    python tools/make_vectors.py --out DIR  # elsewhere (e.g. to inspect a proposal)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nqformat import NQWriter
from nqformat.container import spec
from nqformat.container.spec import IncompatFlag, Section, SectionEntry
from nqformat.container.testing import (
    fix_crcs,
    preamble_of,
    record_of,
    replace_blob,
    replace_level_blob,
    replace_level_entry,
    replace_meta,
    replace_preamble,
    replace_record,
    replace_section,
)
from nqformat.container.writer import ZSTD_LEVEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
MANIFEST_VERSION = 1


@dataclass
class NestedIn:
    high: np.ndarray
    low: np.ndarray
    params: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # sf, of, sp, op
    dtype: str = "F32"


@dataclass
class ValidVector:
    name: str
    description: str
    n: int
    h: int
    tensors: list[tuple[str, Any]]  # (name, NestedIn | np.ndarray | ("BF16", uint16 array))
    compress: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    part_only_of: str | None = None  # this vector is the part_end prefix of another
    # META members written as exact JSON text (name -> text), for numbers that a JSON encoder
    # would not write as given (1e-999, 9007199254740993.0); the writer's "format" key is kept
    meta_members: dict[str, bytes] | None = None
    # (issue 17) the bytes of valid vector ``derive_from`` changed by ``derive``; its tensors
    derive_from: str | None = None
    derive: Callable[[bytes], bytes] | None = None
    # (issue 17) rewrites each zstd frame the writer makes (compress=True) before it is stored
    frame: Callable[[bytes], bytes] | None = None


# --- the oracle: spec §7.2, element by element, independent of the reader ------------------


def dequantize(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    out = np.empty(codes.shape, np.float32)
    if out.size == 0:
        return out  # np.ndindex would expand the ranges of the other (huge) dimensions
    with np.errstate(over="ignore"):  # a binary32 overflow is +-inf, as §7.2 wants
        for idx in np.ndindex(codes.shape):
            c = idx[0]
            out[idx] = np.float32(np.float32(np.float32(int(codes[idx])) * scale[c]) + offset[c])
    return out


def nested(
    rng: np.random.Generator, shape: tuple[int, ...], n: int, h: int, zeros: bool = False
) -> NestedIn:
    l = n - h  # noqa: E741
    q = np.zeros(shape, np.int64) if zeros else rng.integers(-(1 << (n - 1)), 1 << (n - 1), shape)
    high = np.clip(np.round(q / (1 << l)), -(1 << (h - 1)), (1 << (h - 1)) - 1).astype(np.int8)
    low = (q - high.astype(np.int64) * (1 << l)).astype(np.int8)
    c = shape[0]
    sf = (rng.uniform(1e-3, 1e-1, c)).astype(np.float32)
    of = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    sp = (sf * (1 << l) * rng.uniform(0.9, 1.1, c)).astype(np.float32)
    op = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    return NestedIn(high, low, (sf, of, sp, op))


def _nested_parts(t: NestedIn) -> tuple[Any, Any, Any]:
    return t.high, t.low, t.params


def valid_vectors() -> list[ValidVector]:
    rng = np.random.default_rng(20261101)
    vecs = [
        ValidVector(
            "example_n4h2",
            "the worked example of spec §13: n=4, h=2, one NESTED [2,3] and one RAW float32[2]",
            4,
            2,
            [
                (
                    "w",
                    NestedIn(
                        np.array([[1, -2, 0], [-1, 1, -2]], np.int8),
                        np.array([[-3, 2, 1], [0, -4, 3]], np.int8),
                        (
                            np.array([0.5, 0.25], np.float32),
                            np.array([0.0, -1.0], np.float32),
                            np.array([2.0, 1.0], np.float32),
                            np.array([0.125, -1.0], np.float32),
                        ),
                    ),
                ),
                ("b", np.array([0.5, -1.25], np.float32)),
            ],
        ),
        ValidVector(
            "n8h6_model",
            "a small model: NESTED conv [4,3,3,3] and linear [3,5] (odd count), RAW bias, "
            "RAW 0-d int64",
            8,
            6,
            [
                ("conv.weight", nested(rng, (4, 3, 3, 3), 8, 6)),
                ("fc.weight", nested(rng, (3, 5), 8, 6)),
                ("fc.bias", rng.standard_normal(3).astype(np.float32)),
                ("bn.num_batches_tracked", np.array(7, np.int64)),
            ],
            metadata={
                "model": {
                    "arch": "tiny",
                    "zoo": "synthetic",
                    "random_init": True,
                    "num_classes": 3,
                    "preprocessing": {
                        "input_size": [3, 8, 8],
                        "mean": [0.5, 0.5, 0.5],
                        "std": [0.25, 0.25, 0.25],
                    },
                },
                "quant": {"method": "nestquant", "rounding": "rtn", "n": 8, "h": 6},
            },
        ),
    ]
    for n, h in ((8, 4), (4, 2), (2, 1), (8, 7), (8, 1), (5, 3)):
        vecs.append(
            ValidVector(
                f"n{n}h{h}",
                f"n={n}, h={h}: code widths {h} and {n - h + 1}; odd element counts",
                n,
                h,
                [
                    ("a", nested(rng, (3, 7), n, h)),
                    ("b", nested(rng, (5,), n, h)),
                    ("c", nested(rng, (1, 1, 1, 13), n, h)),
                ],
            )
        )
    bf16 = (np.array([1.0, -2.5, 65504.0], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    vecs += [
        ValidVector(
            "raw_dtypes",
            "a RAW tensor of every dtype (§4.1); BF16 expected as uint16 bit patterns",
            8,
            4,
            [
                ("f32", np.array([[1.5, -0.0], [np.inf, 3.25]], np.float32)),
                ("f16", np.array([1.0, -65504.0, 0.00006103515625], np.float16)),
                ("bf16", ("BF16", bf16)),
                ("f64", np.array([np.pi, -1e300], np.float64)),
                ("i8", np.array([-128, -1, 0, 127], np.int8)),
                ("u8", np.array([0, 1, 254, 255], np.uint8)),
                ("i16", np.array([[-32768], [32767]], np.int16)),
                ("i32", np.array([-(2**31), 2**31 - 1, 5], np.int32)),
                ("i64", np.array([-(2**63), 2**63 - 1], np.int64)),
                ("bool", np.array([[True, False, True]])),
                ("nested", nested(rng, (2, 2), 8, 4)),
                ("nested_f16", NestedIn(*_nested_parts(nested(rng, (2, 3), 8, 4)), dtype="F16")),
            ],
        ),
        ValidVector(
            "zero_d_and_empty",
            "0-d RAW, empty RAW, NESTED with 0 channels and NESTED with channels but 0 elements",
            6,
            3,
            [
                ("scalar", np.array(2.5, np.float32)),
                ("empty", np.zeros((0, 3), np.float32)),
                ("nested_no_channels", nested(rng, (0, 4), 6, 3)),
                ("nested_no_elements", nested(rng, (2, 0), 6, 3)),
                ("after", nested(rng, (2, 3), 6, 3)),
            ],
        ),
        ValidVector(
            "compressed",
            "zstd (§8): compressible blobs stored with codec 1, incompressible ones with codec 0",
            8,
            6,
            [
                ("zero_codes", nested(rng, (64, 64), 8, 6, zeros=True)),
                ("random_codes", nested(rng, (4, 5), 8, 6)),
                ("zeros", np.zeros(4096, np.float32)),
                ("noise", rng.integers(0, 256, 300, dtype=np.uint8)),
            ],
            compress=True,
        ),
        ValidVector(
            "no_tensors",
            "tensor_count 0: only META; every data section is empty",
            8,
            6,
            [],
            metadata={"note": "empty"},
        ),
        ValidVector(
            "part_only_n8h6_model",
            "the first part_end bytes of n8h6_model: a part-bit-only file (§9)",
            8,
            6,
            [],
            part_only_of="n8h6_model",
        ),
        ValidVector(
            "future_minor_version",
            "n8h6_model with version_minor 7, an unknown compat_flags bit, an unknown META key "
            "and nonzero preamble reserved bytes: a 1.x reader MUST read it (§12)",
            8,
            6,
            [],
            part_only_of=None,
        ),
    ]
    # added with the limits of issue 11 (spec §4, §6); appended, never inserted
    vecs += [
        ValidVector(
            "meta_number_limits",
            "META numbers at the edges of §6 and a META 64 levels deep: integers ±2^53, a "
            "non-integer 2^53 + 1 (with a fraction, with an exponent), the largest decimal that "
            "rounds to a finite binary64, 1e-999 (rounds to 0)",
            4,
            2,
            [("b", np.array([0.5, -1.25], np.float32))],
            meta_members=META_LIMIT_MEMBERS,
        ),
        ValidVector(
            "zero_size_huge_dims",
            "zero-size tensors whose nonzero dimensions multiply to exactly 2^48 (§4): RAW "
            "[2^40, 0, 2^8], NESTED [0, 2^24, 2^24] (no channels) and [2, 0, 2^47] (no "
            "elements), then a non-empty tensor",
            6,
            3,
            [
                ("raw_f64", np.zeros((1 << 40, 0, 1 << 8), np.float64)),
                ("nested_no_channels", _empty_nested((0, 1 << 24, 1 << 24))),
                ("nested_no_elements", _empty_nested((2, 0, 1 << 47))),
                ("after", nested(np.random.default_rng(20261201), (2, 3), 6, 3)),
            ],
        ),
    ]
    # added for issue 17 (the places an independent reader had to guess); appended
    rng17 = np.random.default_rng(20261217)
    vecs += [
        ValidVector(
            "dequant_edge_values",
            "dequantized outputs (§7.2) with -0.0, +inf and -inf (a finite product or sum that "
            "overflows binary32) and values that depend on rounding the product before the sum: "
            "a product exactly halfway between two floats (ties to even), and elements whose "
            "two-step result differs both from one fused rounding and from a binary64 "
            "computation rounded once",
            8,
            4,
            [("w", _edge_values_tensor())],
        ),
        ValidVector(
            "meta_surrogate_keys",
            "META keys that are distinct only as code points (§6): a lone high surrogate "
            "escape, a lone low one, low then high (two lone code points) and high then low "
            "(one pair, U+10000)",
            4,
            2,
            [("b", np.array([0.5, -1.25], np.float32))],
            meta_members=META_SURROGATE_MEMBERS,
        ),
        ValidVector(
            "part_only_nonzero_tail",
            "n8h6_model cut 3 bytes into LOW, with a nonzero byte in the padding between "
            "part_end and LOW: a part-bit-only file, whose bytes from part_end on are ignored, "
            "by verification too (§9, §11 step 14)",
            8,
            6,
            [],
            derive_from="n8h6_model",
            derive=_nonzero_tail,
        ),
        ValidVector(
            "zstd_frame_options",
            "zstd frames (§8) with a content checksum and a Window_Descriptor of exactly 2^27 "
            "bytes (not single-segment): every reader that decompresses must accept both",
            8,
            6,
            [
                ("zero_codes", nested(rng17, (64, 64), 8, 6, zeros=True)),
                ("zeros", np.zeros(4096, np.float32)),
            ],
            compress=True,
            frame=lambda f: _with_window_descriptor(f, ZSTD_WINDOW_2_27),
        ),
    ]
    return vecs


def _f32(bits: int) -> np.float32:
    return np.array([bits], np.uint32).view(np.float32)[0]


#: a binary32 a bit above 1, and two (scale, offset) pairs found by search (the search is not
#: repeated here: the constants are the vector), as binary32 bit patterns
_TIE_SCALE = 0x3F800002  # 1 + 2^-22: 80 * it lies halfway between two binary32 values
_ROUND_A = (0x3FCE5491, 0x3F9DAA6A)  # 1.6119558, 1.2317631
_ROUND_B = (0x3DF04691, 0xBEEEDC4C)  # 0.117322095, -0.46652448


def _edge_values_tensor() -> NestedIn:
    """n=8, h=4 (l=4), six channels of eight elements; per channel (q codes, H codes, scale and
    offset, the same for the full and the part model):"""
    big = np.float32(3e38)  # finite; 2 * big overflows binary32
    rows: list[tuple[list[int], list[int], np.float32, np.float32]] = [
        # q = 0 * negative scale = -0.0, plus offset -0.0: -0.0 (H = 0 likewise)
        ([0, 1, -1, 5, 0, -7, 16, -16], [0, 0, 0, 0, 0, 0, 1, -1], np.float32(-0.5), _f32(1 << 31)),
        # product overflow: +-inf from finite parameters
        ([127, -128, 1, -1, 0, 112, -112, 2], [7, -8, 0, 0, 0, 7, -7, 0], big, np.float32(0)),
        # sum overflow: big + big = inf; -big + big = +0.0
        ([1, -1, 0, -2, 16, -16, -32, 127], [0, 0, 0, 0, 1, -1, -2, 7], big, big),
        # ties to even in the product: +-80 * (1 + 2^-22)
        (
            [80, -80, 3, -3, 127, -128, 48, -48],
            [5, -5, 0, 0, 7, -8, 3, -3],
            _f32(_TIE_SCALE),
            np.float32(0),
        ),
        # two-step rounding differs from fused and from binary64-then-binary32 (q and H)
        (
            [-94, -77, -62, -47, 38, 55, -65, 63],
            [-5, -5, -3, -3, 3, 3, -5, 3],
            _f32(_ROUND_A[0]),
            _f32(_ROUND_A[1]),
        ),
        (
            [-109, -94, 34, 50, 69, 80, 88, 104],
            [-6, -6, 3, 3, 5, 5, 6, 6],
            _f32(_ROUND_B[0]),
            _f32(_ROUND_B[1]),
        ),
    ]
    q = np.array([r[0] for r in rows], np.int64)
    high = np.array([r[1] for r in rows], np.int8)
    low = q - high.astype(np.int64) * 16
    if low.min() < -16 or low.max() > 15:
        raise RuntimeError("an L code is outside its 5-bit range")
    scale = np.array([r[2] for r in rows], np.float32)
    offset = np.array([r[3] for r in rows], np.float32)
    return NestedIn(high, low.astype(np.int8), (scale, offset, scale.copy(), offset.copy()))


#: §6: keys distinct as code points; JSON escapes written by json.dumps (a lone surrogate
#: stays an escape, "\ud800\udc00" is read as one pair)
_HI, _LO = chr(0xD800), chr(0xDC00)  # lone surrogates (json.dumps writes them as escapes)
META_SURROGATE_MEMBERS: dict[str, bytes] = {_HI: b"1", _LO: b"2", _LO + _HI: b"3", _HI + _LO: b"4"}


def _nonzero_tail(raw: bytes) -> bytes:
    """The first LOW.offset + 3 bytes of ``raw``, with byte part_end set to 0xA5."""
    pre = preamble_of(raw)
    out = bytearray(raw[: pre.section(Section.LOW).offset + 3])
    out[pre.part_end] = 0xA5
    return bytes(out)


#: RFC 8878 Window_Descriptor: Exponent 17, Mantissa 0 is 2^(10 + 17) = 2^27 bytes (§8's bound)
ZSTD_WINDOW_2_27 = 17 << 3
_ZSTD_SINGLE_SEGMENT = 0x20
_ZSTD_FCS_FLAG_SHIFT = 6


def _with_window_descriptor(frame: bytes, descriptor: int) -> bytes:
    """``frame`` (single-segment, as zstd writes small inputs) as a frame with a
    Window_Descriptor: the same blocks and checksum, the content size in 4 or 8 bytes."""
    fhd = frame[4]
    if not fhd & _ZSTD_SINGLE_SEGMENT:
        raise RuntimeError("expected a single-segment frame")
    fcs_flag = fhd >> _ZSTD_FCS_FLAG_SHIFT
    fcs_size = (1, 2, 4, 8)[fcs_flag]
    if fhd & 3:
        raise RuntimeError("expected no Dictionary_ID")
    content = int.from_bytes(frame[5 : 5 + fcs_size], "little") + (256 if fcs_size == 2 else 0)
    new_flag = 2 if content < 1 << 32 else 3
    new_fhd = (new_flag << _ZSTD_FCS_FLAG_SHIFT) | (fhd & 0x1F)  # single-segment cleared
    size = content.to_bytes((0, 2, 4, 8)[new_flag], "little")
    return frame[:4] + bytes([new_fhd, descriptor]) + size + frame[5 + fcs_size :]


#: §6 limits: the largest finite decimal is 2^1024 - 2^970 - 1 written with a fraction (the
#: exact boundary rounds, ties to even, to infinity: the invalid vector meta_number_not_finite)
_FLOAT_EDGE = 2**1024 - 2**970
META_LIMIT_MEMBERS: dict[str, bytes] = {
    "deep_64": b"[" * 63 + b"]" * 63,  # the top-level object is depth 1: 64 in all
    "float_below_overflow": f"{_FLOAT_EDGE - 1}.0".encode(),
    "float_underflow": b"1e-999",
    "int_max": b"9007199254740992",
    "int_min": b"-9007199254740992",
    "not_int_exponent": b"9007199254740993e0",
    "not_int_fraction": b"9007199254740993.0",
}


def _empty_nested(shape: tuple[int, ...]) -> NestedIn:
    """A NESTED tensor of ``shape`` with no element (a 0 in ``shape``); params per channel."""
    c = shape[0]
    one = np.full(c, 0.5, np.float32)
    return NestedIn(np.zeros(shape, np.int8), np.zeros(shape, np.int8), (one, one, one, one))


class _FrameRewriter:
    """Stands in for the writer's zstd compressor: its frames, rewritten by ``rewrite``."""

    def __init__(self, rewrite: Callable[[bytes], bytes]) -> None:
        import zstandard

        # the writer's settings plus a content checksum (§8: optional, verified when present)
        self._inner = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_checksum=True, threads=0
        )
        self._rewrite = rewrite

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._rewrite(self._inner.compress(data))


def _write(vec: ValidVector, path: pathlib.Path) -> None:
    with NQWriter(path, n=vec.n, h=vec.h, metadata=vec.metadata, compress=vec.compress) as w:
        if vec.frame is not None:
            w._zstd = _FrameRewriter(vec.frame)  # the writer's lazily made compressor (a hook)
        for name, t in vec.tensors:
            if isinstance(t, NestedIn):
                sf, of, sp, op = t.params
                w.add_nested(
                    name,
                    w_high=t.high,
                    w_low=t.low,
                    scale_full=sf,
                    offset_full=of,
                    scale_part=sp,
                    offset_part=op,
                    dtype=t.dtype,
                )
            elif isinstance(t, tuple):
                w.add_raw(name, t[1], dtype=t[0])
            else:
                w.add_raw(name, t)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _expected(vec: ValidVector, part_only: bool) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Per tensor: its manifest entry and the .npy files (suffix -> bytes)."""
    out = []
    for name, t in vec.tensors:
        files: dict[str, bytes] = {}
        if isinstance(t, NestedIn):
            l = vec.n - vec.h  # noqa: E741
            full = t.high.astype(np.int16) * (1 << l) + t.low
            sf, of, sp, op = t.params
            files["high"] = _npy(t.high.astype(np.int8))
            files["part_f32"] = _npy(dequantize(t.high, sp, op))
            if not part_only:
                files["low"] = _npy(t.low.astype(np.int8))
                files["full"] = _npy(full.astype(np.int16))
                files["full_f32"] = _npy(dequantize(full, sf, of))
            entry = {"name": name, "kind": "NESTED", "dtype": t.dtype, "shape": list(t.high.shape)}
        else:
            dtype, arr = t if isinstance(t, tuple) else (None, t)
            files["raw"] = _npy(np.asarray(arr).astype(np.asarray(arr).dtype.newbyteorder("<")))
            code = dtype or spec.DType.from_numpy(arr.dtype).name
            entry = {"name": name, "kind": "RAW", "dtype": code, "shape": list(arr.shape)}
        out.append((entry, files))
    return out


# --- invalid vectors --------------------------------------------------------------------------


@dataclass
class InvalidVector:
    name: str
    error: str
    description: str
    make: Callable[[dict[str, bytes]], bytes]
    when: str = "open"  # "open" | "read" | "verify"
    tensor: str | None = None
    mode: str | None = None
    # streamed LOW (spec §11 step 13): tensors whose LOW blob checks (-> the .npy of their
    # full-bit values), tensors whose LOW blob fails its CRC, and the error (or None) when LOW
    # is complete and LOW.crc is checked
    streamed_low: dict[str, Any] | None = None


def _flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    buf = bytearray(raw)
    buf[offset] ^= mask
    return bytes(buf)


def _set(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


def _names_off(raw: bytes) -> int:
    return preamble_of(raw).section(Section.NAMES).offset


def _dims(*dims: int) -> tuple[int, ...]:
    return dims + (0,) * (spec.MAX_DIMS - len(dims))


def invalid_vectors() -> list[InvalidVector]:
    E = "example_n4h2"  # the base of most invalid vectors: record 0 "w", 1 "b"
    M = "n8h6_model"
    C = "compressed"
    ML = "meta_number_limits"
    Z = "zero_size_huge_dims"
    MS = "meta_surrogate_keys"
    FO = "zstd_frame_options"

    def pre(b: dict[str, bytes]) -> Any:
        return preamble_of(b[E])

    v = InvalidVector
    return [
        # §11 steps 1-6: the preamble
        v("truncated_preamble", "truncated", "only the first 100 bytes", lambda b: b[E][:100]),
        v("empty_file", "truncated", "a file of 0 bytes", lambda b: b""),
        v(
            "bad_magic",
            "bad_magic",
            "first magic byte without its high bit",
            lambda b: _flip(b[E], 0, 0x80),
        ),
        v(
            "bad_magic_text_mode",
            "bad_magic",
            "CR LF in the magic turned into LF (text mode)",
            lambda b: b[E].replace(b"\r\n", b"\n", 1),
        ),
        v(
            "unsupported_version",
            "unsupported_version",
            "version_major 2, valid CRC",
            lambda b: replace_preamble(b[E], version_major=2),
        ),
        v(
            "version_zero",
            "unsupported_version",
            "version_major 0, valid CRC",
            lambda b: replace_preamble(b[E], version_major=0),
        ),
        v(
            "preamble_checksum",
            "checksum",
            "one reserved preamble byte set, CRC not updated",
            lambda b: _flip(b[E], 210),
        ),
        v(
            "unknown_incompat_flag",
            "unsupported_feature",
            "incompat_flags bit 7, valid CRC",
            lambda b: replace_preamble(b[E], incompat_flags=1 << 7),
        ),
        v("h_equals_n", "invalid_header", "n=4, h=4", lambda b: replace_preamble(b[E], h=4)),
        v("n_too_large", "invalid_header", "n=9, h=2", lambda b: replace_preamble(b[E], n=9)),
        v("h_zero", "invalid_header", "n=4, h=0", lambda b: replace_preamble(b[E], h=0)),
        # step 7: limits
        v(
            "tensor_count_over_limit",
            "limit",
            "tensor_count 2^20 + 1",
            lambda b: replace_preamble(b[E], tensor_count=(1 << 20) + 1),
        ),
        v(
            "huge_declared_meta",
            "limit",
            "META.length 2^32 (over 16 MiB)",
            lambda b: replace_section(b[E], Section.META, length=1 << 32),
        ),
        v(
            "huge_declared_header",
            "limit",
            "NAMES.length 2^30: header_end over 256 MiB",
            lambda b: replace_section(b[E], Section.NAMES, length=1 << 30),
        ),
        v(
            "length_over_2_63",
            "limit",
            "DATA.length 2^63",
            lambda b: replace_section(b[E], Section.DATA, length=1 << 63),
        ),
        v(
            "offset_over_2_63",
            "limit",
            "LOW.offset 2^64 - 1",
            lambda b: replace_section(b[E], Section.LOW, offset=(1 << 64) - 1),
        ),
        # step 8: canonical layout
        v(
            "non_canonical_section_offset",
            "layout",
            "DATA.offset one page later than canonical",
            lambda b: replace_section(
                b[E], Section.DATA, offset=pre(b).section(Section.DATA).offset + 4096
            ),
        ),
        v(
            "overlapping_sections",
            "layout",
            "HIGH.offset = DATA.offset: HIGH overlaps DATA",
            lambda b: replace_section(
                b[E], Section.HIGH, offset=pre(b).section(Section.DATA).offset
            ),
        ),
        v(
            "index_length_mismatch",
            "layout",
            "INDEX.length 321 for two records (320)",
            lambda b: replace_section(b[E], Section.INDEX, length=321),
        ),
        v(
            "part_end_mismatch",
            "layout",
            "part_end one more than HIGH's end",
            lambda b: replace_preamble(b[E], part_end=pre(b).part_end + 1),
        ),
        v(
            "full_end_mismatch",
            "layout",
            "full_end one less than LOW's end",
            lambda b: replace_preamble(b[E], full_end=pre(b).full_end - 1),
        ),
        # step 9: real size
        v("truncated_header", "truncated", "cut inside INDEX", lambda b: b[E][:300]),
        v(
            "truncated_before_part_end",
            "truncated",
            "cut one byte before part_end",
            lambda b: b[E][: pre(b).part_end - 1],
        ),
        v("trailing_bytes", "layout", "one zero byte after full_end", lambda b: b[E] + b"\0"),
        # step 10: header CRCs
        v(
            "index_checksum",
            "checksum",
            "one dims byte of record 0 changed, CRC not updated",
            lambda b: _flip(b[E], spec.INDEX_OFFSET + 16),
        ),
        v(
            "names_checksum",
            "checksum",
            "a name byte changed, CRC not updated",
            lambda b: _flip(b[E], _names_off(b[E])),
        ),
        v(
            "meta_checksum",
            "checksum",
            "a META byte changed, CRC not updated",
            lambda b: _flip(b[E], pre(b).section(Section.META).offset + 2),
        ),
        # step 11: records
        v(
            "reserved_record_byte",
            "invalid_header",
            "record 0 byte 15 is 1",
            lambda b: replace_record(b[E], 0, reserved=b"\x01" + bytes(8)),
        ),
        v(
            "reserved_blob_byte",
            "invalid_header",
            "record 1 data blob reserved byte is 1",
            lambda b: replace_blob(b[E], 1, "data", reserved=b"\x00\x01\x00"),
        ),
        v(
            "bad_kind",
            "invalid_header",
            "record 1 kind 2",
            lambda b: replace_record(b[E], 1, kind=2),
        ),
        v(
            "bad_dtype",
            "invalid_header",
            "record 1 dtype 11",
            lambda b: replace_record(b[E], 1, dtype=11),
        ),
        v(
            "dtype_zero",
            "invalid_header",
            "record 1 dtype 0",
            lambda b: replace_record(b[E], 1, dtype=0),
        ),
        v(
            "nested_int_dtype",
            "invalid_header",
            "NESTED record 0 with dtype I8",
            lambda b: replace_record(b[E], 0, dtype=spec.DType.I8),
        ),
        v(
            "ndim_over_8",
            "invalid_header",
            "record 1 ndim 9",
            lambda b: replace_record(b[E], 1, ndim=9),
        ),
        v(
            "nested_ndim_zero",
            "invalid_header",
            "NESTED record 0 with ndim 0",
            lambda b: replace_record(b[E], 0, ndim=0, dims=_dims()),
        ),
        v(
            "dims_past_ndim",
            "invalid_header",
            "record 1 has dims[1] = 1 with ndim 1",
            lambda b: replace_record(b[E], 1, dims=_dims(2, 1)),
        ),
        v(
            "raw_with_high_blob",
            "invalid_header",
            "RAW record 1 with a nonzero high reference",
            lambda b: replace_blob(b[E], 1, "high", offset=8192),
        ),
        v(
            "bad_codec",
            "unsupported_feature",
            "record 1 data codec 7",
            lambda b: replace_blob(b[E], 1, "data", codec=7),
        ),
        v(
            "zstd_without_flag",
            "invalid_header",
            "record 1 data codec 1, ZSTD flag clear",
            lambda b: replace_blob(b[E], 1, "data", codec=1),
        ),
        v(
            "zstd_flag_without_blob",
            "invalid_header",
            "ZSTD flag set, no compressed blob",
            lambda b: replace_preamble(b[E], incompat_flags=int(IncompatFlag.ZSTD)),
        ),
        v(
            "shape_product_overflow",
            "limit",
            "record 1 dims [2^32, 2^32]: 2^64 elements",
            lambda b: replace_record(b[E], 1, ndim=2, dims=_dims(1 << 32, 1 << 32)),
        ),
        v(
            "dim_over_2_48_with_zero",
            "limit",
            "record 1 dims [2^63, 0]: a dim over 2^48",
            lambda b: replace_record(b[E], 1, ndim=2, dims=_dims(1 << 63, 0)),
        ),
        v(
            "numel_over_2_48",
            "limit",
            "record 1 dims [2^24, 2^24 + 1]",
            lambda b: replace_record(b[E], 1, ndim=2, dims=_dims(1 << 24, (1 << 24) + 1)),
        ),
        v(
            "empty_name",
            "invalid_name",
            "record 0 name_length 0",
            lambda b: replace_record(b[E], 0, name_length=0),
        ),
        v(
            "name_too_long",
            "invalid_name",
            "record 0 name_length 1025",
            lambda b: replace_record(b[E], 0, name_length=1025),
        ),
        v(
            "name_past_names",
            "layout",
            "record 1 name runs past the end of NAMES",
            lambda b: replace_record(b[E], 1, name_length=2),
        ),
        v(
            "name_offset_wrong",
            "layout",
            "record 1 name_offset 0 (names must be consecutive)",
            lambda b: replace_record(b[E], 1, name_offset=0),
        ),
        v(
            "invalid_utf8_name",
            "invalid_name",
            "name of record 0 is the byte 0xFF",
            lambda b: fix_crcs(_set(b[E], _names_off(b[E]), b"\xff")),
        ),
        v(
            "overlong_utf8_name",
            "invalid_name",
            "name of record 0 is C0 AF (overlong '/')",
            lambda b: fix_crcs(_set(b[M], _names_off(b[M]), b"\xc0\xaf")),
        ),
        v(
            "surrogate_utf8_name",
            "invalid_name",
            "name of record 0 starts with ED A0 80 (U+D800)",
            lambda b: fix_crcs(_set(b[M], _names_off(b[M]), b"\xed\xa0\x80")),
        ),
        v(
            "duplicate_name",
            "duplicate_name",
            "both records are named 'w'",
            lambda b: fix_crcs(_set(b[E], _names_off(b[E]), b"ww")),
        ),
        v(
            "offset_past_the_end",
            "layout",
            "record 1 data blob at offset 2^40",
            lambda b: replace_blob(b[E], 1, "data", offset=1 << 40),
        ),
        v(
            "non_canonical_blob_placement",
            "layout",
            "record 1 data blob 64 bytes later than canonical (still inside DATA)",
            lambda b: replace_blob(b[E], 1, "data", offset=record_of(b[E], 1).data.offset + 64),
        ),
        v(
            "blob_length_mismatch",
            "layout",
            "record 1 data blob length 7 instead of 8",
            lambda b: replace_blob(b[E], 1, "data", length=7),
        ),
        v(
            "section_length_mismatch",
            "layout",
            "DATA.length 64 more than its last blob's end",
            lambda b: replace_section(
                b[E], Section.DATA, length=pre(b).section(Section.DATA).length + 64
            ),
        ),
        v(
            "nested_high_length_mismatch",
            "layout",
            "record 0 high blob length 1 instead of 2",
            lambda b: replace_blob(b[E], 0, "high", length=1),
        ),
        # step 12: META
        v(
            "bad_meta_json",
            "metadata",
            "META is not JSON: an unterminated object",
            lambda b: replace_meta(b[E], b'{"a":'),
        ),
        v(
            "meta_not_object",
            "metadata",
            "META is a JSON array",
            lambda b: replace_meta(b[E], b"[1,2]"),
        ),
        v(
            "meta_duplicate_key",
            "metadata",
            "META has the key 'a' twice",
            lambda b: replace_meta(b[E], b'{"a":1,"a":2}'),
        ),
        v(
            "meta_too_deep",
            "metadata",
            "META nests 65 levels",
            lambda b: replace_meta(b[M], b'{"a":' + b"[" * 64 + b"]" * 64 + b"}"),
        ),
        v(
            "meta_invalid_utf8",
            "metadata",
            "META has the byte 0xFF in a string",
            lambda b: replace_meta(b[E], b'{"a":"\xff"}'),
        ),
        v(
            "meta_nan",
            "metadata",
            "META uses NaN, which JSON does not have",
            lambda b: replace_meta(b[E], b'{"a":NaN}'),
        ),
        # step 13: lazily, when data is read
        v(
            "blob_checksum",
            "checksum",
            "a byte of w's HIGH blob changed; read part fails",
            lambda b: _flip(b[E], record_of(b[E], 0).high.offset),
            "read",
            "w",
            "part",
        ),
        v(
            "raw_blob_checksum",
            "checksum",
            "a byte of b's DATA blob changed",
            lambda b: _flip(b[E], record_of(b[E], 1).data.offset),
            "read",
            "b",
            "part",
        ),
        v(
            "low_checksum",
            "checksum",
            "a byte of LOW changed (blob CRC fixed, LOW.crc not): paging in LOW fails",
            lambda b: _low_flip(b[E]),
            "read",
            "w",
            "full",
        ),
        v(
            "zstd_not_a_frame",
            "layout",
            "compressed blob's frame magic damaged (CRCs fixed)",
            lambda b: _zstd_damage(b[C], 0, "high", 0),
            "read",
            "zero_codes",
            "part",
        ),
        v(
            "zstd_wrong_content_size",
            "layout",
            "compressed blob's frame declares another content size (CRCs fixed)",
            lambda b: _zstd_damage(b[C], 2, "data", 5),
            "read",
            "zeros",
            "part",
        ),
        # full verification only (nqtool verify)
        v(
            "nonzero_padding",
            "layout",
            "a nonzero byte in the padding before DATA; opens, verify() reports it",
            lambda b: _flip(b[E], pre(b).section(Section.META).end),
            "verify",
        ),
        # streamed LOW, blob by blob (spec §7.1, §11 step 13); added after the first release
        # of the vectors, so appended at the end of the list, never inserted
        v(
            "streamed_low_section_crc",
            "checksum",
            "LOW.crc wrong (preamble CRC fixed), every LOW blob intact: a whole-LOW reader "
            "rejects full-bit reads; a streaming reader may use each blob, then rejects LOW "
            "when it is complete",
            lambda b: replace_section(
                b[M], Section.LOW, crc=preamble_of(b[M]).section(Section.LOW).crc ^ 1
            ),
            "read",
            "conv.weight",
            "full",
            streamed_low={
                "usable": {
                    "conv.weight": "valid/n8h6_model/0.full_f32.npy",
                    "fc.weight": "valid/n8h6_model/1.full_f32.npy",
                },
                "rejected": [],
                "complete": "checksum",
            },
        ),
        v(
            "streamed_low_blob_checksum",
            "checksum",
            "a byte of fc.weight's LOW blob changed (its blob CRC not fixed, LOW.crc fixed): "
            "a streaming reader uses conv.weight's blob and rejects fc.weight's",
            lambda b: fix_crcs(_flip(b[M], record_of(b[M], 1).low.offset), data=True),
            "read",
            "fc.weight",
            "full",
            streamed_low={
                "usable": {"conv.weight": "valid/n8h6_model/0.full_f32.npy"},
                "rejected": ["fc.weight"],
                "complete": None,
            },
        ),
        # the limits of issue 11 (spec §4, §6, §8); appended at the end, never inserted. Each
        # changes one thing of a valid vector; every CRC is fixed
        v(
            "meta_int_over_2_53",
            "metadata",
            "meta_number_limits with int_max 2^53 + 1 (an integer beyond ±2^53, §6)",
            lambda b: _meta_member(b[ML], "int_max", b"9007199254740993"),
        ),
        v(
            "meta_int_under_minus_2_53",
            "metadata",
            "meta_number_limits with int_min -(2^53 + 1)",
            lambda b: _meta_member(b[ML], "int_min", b"-9007199254740993"),
        ),
        v(
            "meta_number_not_finite",
            "metadata",
            "meta_number_limits with float_below_overflow 2^1024 - 2^970 exactly: rounds (ties to "
            "even) to infinity, not a finite binary64 (§6)",
            lambda b: _meta_member(b[ML], "float_below_overflow", f"{_FLOAT_EDGE}.0".encode()),
        ),
        v(
            "meta_1e999",
            "metadata",
            "meta_number_limits with float_underflow 1e999 instead of 1e-999 (infinity, §6)",
            lambda b: _meta_member(b[ML], "float_underflow", b"1e999"),
        ),
        v(
            "meta_depth_65",
            "metadata",
            "meta_number_limits with deep_64 one level deeper: 65 levels (§6)",
            lambda b: _meta_member(b[ML], "deep_64", b"[" * 64 + b"]" * 64),
        ),
        v(
            "zstd_shorter_than_ratio_limit",
            "layout",
            "compressed's 'zeros' (a zstd blob of L bytes) declares 8192 L + 1 float32 elements: "
            "its raw length 32768 L + 4 needs at least L + 1 stored bytes (§8)",
            lambda b: _claim_elements(b[C], 2, lambda stored: 8192 * stored + 1),
        ),
        v(
            "zstd_at_ratio_limit",
            "layout",
            "compressed's 'zeros' declares 8192 L float32 elements: exactly the §8 ratio limit, so "
            "it opens; its frame declares another content size, so reading it fails",
            lambda b: _claim_elements(b[C], 2, lambda stored: 8192 * stored),
            "read",
            "zeros",
            "part",
        ),
        v(
            "zstd_claims_2_47_codes",
            "layout",
            "compressed's 'zero_codes' NESTED [64, 2^41]: 2^47 codes behind a zstd HIGH blob of a "
            "few bytes (a decompression bomb, §8)",
            lambda b: replace_record(b[C], 0, dims=_dims(64, 1 << 41)),
        ),
        v(
            "zero_size_nonzero_dims_over_2_48",
            "limit",
            "zero_size_huge_dims with raw_f64 [2^40, 0, 2^9]: no element, but its nonzero "
            "dimensions multiply to 2^49 (§4)",
            lambda b: replace_record(b[Z], 0, dims=_dims(1 << 40, 0, 1 << 9)),
        ),
        v(
            "zero_size_channels_over_2_48",
            "limit",
            "zero_size_huge_dims with nested_no_channels [0, 2^24, 2^25] (§4)",
            lambda b: replace_record(b[Z], 1, dims=_dims(0, 1 << 24, 1 << 25)),
        ),
        # issue 17: the places an independent reader had to guess; appended at the end. Each
        # changes one thing of a valid vector (every CRC fixed unless the CRC is the point)
        v(
            "part_only_full_read_bad_blob",
            "part_only",
            "the part-bit-only prefix of example_n4h2 with a byte of w's HIGH blob changed (CRC "
            "not fixed): a full-bit read is refused as part_only before any blob is checked "
            "(§11 step 13)",
            lambda b: _flip(b[E][: pre(b).part_end], record_of(b[E], 0).high.offset),
            "read",
            "w",
            "full",
        ),
        v(
            "codec_rules_per_blob",
            "invalid_header",
            "w's data blob codec 1 with the ZSTD flag clear, its high blob codec 2: step 11.6 "
            "checks each blob fully before the next, so the data blob's invalid_header comes "
            "first",
            lambda b: replace_blob(replace_blob(b[E], 0, "data", codec=1), 0, "high", codec=2),
        ),
        v(
            "meta_length_16_mib_plus_1",
            "limit",
            "META.length 16 MiB + 1: a §10 limit, checked at step 7 before META is read",
            lambda b: replace_section(b[E], Section.META, length=spec.MAX_META_LENGTH + 1),
        ),
        v(
            "high_end_near_2_64",
            "layout",
            "DATA.length 2^63 - 8192, HIGH.offset 2^63 - 4096 (canonical), HIGH.length 2^63 - 1: "
            "LOW's canonical offset is align(2^64 - 4097, 4096) = 2^64 - 4096, which still fits "
            "a u64 (§11 step 8) and differs from the stored one",
            lambda b: replace_section(
                replace_section(
                    replace_section(b[E], Section.DATA, length=(1 << 63) - 8192),
                    Section.HIGH,
                    offset=(1 << 63) - 4096,
                ),
                Section.HIGH,
                length=(1 << 63) - 1,
            ),
        ),
        v(
            "param_nan",
            "invalid_header",
            "w's scale_full[0] is a NaN (CRCs fixed): a read in either mode fails, since every "
            "parameter must be finite (§7.2)",
            lambda b: _set_blob_bytes(b[E], 0, "data", 0, bytes.fromhex("0000c07f")),
            "read",
            "w",
            "part",
        ),
        v(
            "param_inf",
            "invalid_header",
            "w's offset_part[1] is +inf (CRCs fixed; §7.2)",
            lambda b: _set_blob_bytes(b[E], 0, "data", 28, bytes.fromhex("0000807f")),
            "read",
            "w",
            "part",
        ),
        v(
            "meta_duplicate_key_surrogate_pair",
            "metadata",
            "meta_surrogate_keys with the key \\udc00\\ud800 written as the UTF-8 of U+10000: "
            "the same code point as the escaped pair \\ud800\\udc00 (§6)",
            lambda b: _meta_replace(b[MS], b'"\\udc00\\ud800":', '"\U00010000":'.encode()),
        ),
        v(
            "meta_duplicate_key_hex_case",
            "metadata",
            "meta_surrogate_keys with the key \\udc00 written \\uD800: the same code point "
            "as the key \\ud800 (§6)",
            lambda b: _meta_replace(b[MS], b'"\\udc00":', b'"\\uD800":'),
        ),
        v(
            "zstd_content_checksum_wrong",
            "layout",
            "zstd_frame_options with one bit of the zeros blob's frame content checksum changed "
            "(CRCs fixed): a reader that decompresses MUST verify it (§8)",
            lambda b: _zstd_damage(b[FO], 1, "data", record_of(b[FO], 1).data.length - 1),
            "read",
            "zeros",
            "part",
        ),
        v(
            "zstd_window_over_2_27",
            "layout",
            "zstd_frame_options with the zeros blob's frame asking for a window of 2^27 + 2^24 "
            "bytes (Window_Descriptor 0x89; CRCs fixed): over the §8 bound, rejected from the "
            "frame header, so a reader without zstd rejects it too",
            lambda b: _zstd_damage(b[FO], 1, "data", 5, mask=0x01),
            "read",
            "zeros",
            "part",
        ),
    ]


def _meta_member(raw: bytes, name: str, value: bytes) -> bytes:
    """``raw`` (written with META_LIMIT_MEMBERS) with member ``name`` set to the JSON text
    ``value``: a shorter META is padded with spaces, a longer one grows into the padding."""
    meta = _meta_text(raw)
    key = json.dumps(name).encode() + b":"
    if meta.count(key + META_LIMIT_MEMBERS[name]) != 1:
        raise RuntimeError(f"member {name} not found once in META")
    new = meta.replace(key + META_LIMIT_MEMBERS[name], key + value)
    return replace_meta(raw, new) if len(new) <= len(meta) else _grow_meta(raw, new)


def _grow_meta(raw: bytes, meta: bytes) -> bytes:
    """``raw`` with a META longer than its own: the META section grows into the padding before
    DATA (which starts on the next 4096 boundary, §3.2), so nothing after it moves."""
    pre = preamble_of(raw)
    entry = pre.section(Section.META)
    if entry.offset + len(meta) > pre.section(Section.DATA).offset:
        raise RuntimeError("the longer META does not fit in the padding before DATA")
    out = raw[: entry.offset] + meta + raw[entry.offset + len(meta) :]
    return fix_crcs(replace_section(out, Section.META, length=len(meta)))


def _claim_elements(raw: bytes, index: int, count_of: Callable[[int], int]) -> bytes:
    """RAW record ``index`` (a codec-1 DATA blob) declaring ``count_of(stored length)``
    elements instead of its own: the blob, its CRC and its place stay as they are."""
    stored = record_of(raw, index).data.length
    return replace_record(raw, index, ndim=1, dims=_dims(count_of(stored)))


def _low_flip(raw: bytes) -> bytes:
    rec = record_of(raw, 0)
    out = _flip(raw, rec.low.offset)
    new_crc = spec.crc32(out[rec.low.offset : rec.low.end])
    return replace_blob(out, 0, "low", crc=new_crc)


def _zstd_damage(raw: bytes, index: int, which: str, pos: int, mask: int = 0x10) -> bytes:
    """Change byte ``pos`` of a compressed blob (XOR ``mask``), then fix every CRC."""
    ref = getattr(record_of(raw, index), which)
    if ref.codec != spec.Codec.ZSTD:
        raise RuntimeError(f"record {index} {which} blob is not compressed")
    out = _flip(raw, ref.offset + pos, mask)
    out = replace_blob(out, index, which, crc=spec.crc32(out[ref.offset : ref.end]))
    return fix_crcs(out, data=True)


def _set_blob_bytes(raw: bytes, index: int, which: str, pos: int, data: bytes) -> bytes:
    """Bytes ``pos`` … of a blob set to ``data``; the blob, section and header CRCs fixed."""
    ref = getattr(record_of(raw, index), which)
    out = _set(raw, ref.offset + pos, data)
    out = replace_blob(out, index, which, crc=spec.crc32(out[ref.offset : ref.end]))
    return fix_crcs(out, data=True)


def _meta_replace(raw: bytes, old: bytes, new: bytes) -> bytes:
    """META with the text ``old`` (found once) replaced by the no longer ``new``."""
    meta = _meta_text(raw)
    if meta.count(old) != 1:
        raise RuntimeError(f"{old!r} not found once in META")
    return replace_meta(raw, meta.replace(old, new))


# --- driver -------------------------------------------------------------------------------------


def build(tmp: pathlib.Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every vector file (relative path -> bytes) and the manifest."""
    files: dict[str, bytes] = {}
    valid_bytes: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "format_version": "1.0",
        "valid": [],
        "invalid": [],
    }
    vecs = valid_vectors()
    by_name = {v.name: v for v in vecs}
    for vec in vecs:
        part_only = vec.part_only_of is not None
        if vec.name == "future_minor_version":
            base = by_name["n8h6_model"]
            raw = valid_bytes[base.name]
            meta = preamble_of(raw).section(Section.META)
            old = json.loads(raw[meta.offset : meta.end])
            old["x-future-key"] = {"ignored": True}
            raw = _rewrite_meta_any_length(base, old, tmp)
            p = preamble_of(raw)
            reserved = bytearray(p.reserved)
            reserved[20] = 0x5A  # a preamble reserved byte a later minor version might use
            raw = replace_preamble(
                raw, version_minor=7, compat_flags=1 << 3, reserved=bytes(reserved)
            )
            tensors_of = base
        elif vec.derive_from is not None and vec.derive is not None:
            base = by_name[vec.derive_from]
            raw = vec.derive(valid_bytes[base.name])
            part_only = len(raw) < preamble_of(raw).full_end
            tensors_of = base
        elif part_only:
            base = by_name[vec.part_only_of]
            raw = valid_bytes[base.name][: preamble_of(valid_bytes[base.name]).part_end]
            tensors_of = base
        elif vec.meta_members is not None:
            raw = _with_meta_members(vec, vec.meta_members, tmp)
            tensors_of = vec
        else:
            path = tmp / f"{vec.name}.nq"
            _write(vec, path)
            raw = path.read_bytes()
            tensors_of = vec
        valid_bytes[vec.name] = raw
        rel = f"valid/{vec.name}.nq"
        files[rel] = raw
        entry: dict[str, Any] = {
            "file": rel,
            "description": vec.description,
            "n": tensors_of.n,
            "h": tensors_of.h,
            "part_only": part_only,
            "compressed": bool(preamble_of(raw).incompat_flags & IncompatFlag.ZSTD),
            "tensors": [],
        }
        for i, (tentry, npys) in enumerate(_expected(tensors_of, part_only)):
            tentry["expected"] = {}
            for suffix, data in npys.items():
                npy_rel = f"valid/{vec.name}/{i}.{suffix}.npy"
                files[npy_rel] = data
                tentry["expected"][suffix] = npy_rel
            entry["tensors"].append(tentry)
        manifest["valid"].append(entry)
    for inv in invalid_vectors():
        rel = f"invalid/{inv.name}.nq"
        files[rel] = inv.make(valid_bytes)
        item: dict[str, Any] = {
            "file": rel,
            "error": inv.error,
            "when": inv.when,
            "description": inv.description,
        }
        if inv.when == "read":
            item["tensor"], item["mode"] = inv.tensor, inv.mode
        if inv.streamed_low is not None:
            item["streamed_low"] = inv.streamed_low
        manifest["invalid"].append(item)
    _build_levels(tmp, files, manifest)
    files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return files, manifest


# --- version 1.1: several nested levels (spec §14) -----------------------------------------------


@dataclass
class LevelsIn:
    """A NESTED tensor of a LEVELS file: H, residuals L_1 .. L_(m-1), a pair per level."""

    high: np.ndarray
    residuals: list[np.ndarray]
    scales: list[np.ndarray]  # coarsest level first
    offsets: list[np.ndarray]
    dtype: str = "F32"


@dataclass
class LevelsVector:
    name: str
    description: str
    widths: tuple[int, ...]
    tensors: list[tuple[str, Any]]  # (name, LevelsIn | np.ndarray)
    compress: bool = False
    cut_of: tuple[str, int] | None = None  # (vector, level): the prefix ending at that level


def _levels_codes(t: LevelsIn, widths: tuple[int, ...]) -> list[np.ndarray]:
    """q_0 .. q_(m-1) as int16 (§14.3), the oracle's recomposition."""
    q = [t.high.astype(np.int16)]
    for j, low in enumerate(t.residuals, start=1):
        q.append((q[-1] * (1 << (widths[j] - widths[j - 1])) + low).astype(np.int16))
    return q


def levels_nested(
    rng: np.random.Generator, shape: tuple[int, ...], widths: tuple[int, ...], zeros: bool = False
) -> LevelsIn:
    """Random valid codes nested at ``widths``: q_top uniform, each coarser code rounded from
    the finer one and clipped, residuals exact."""
    n = widths[-1]
    q = np.zeros(shape, np.int64) if zeros else rng.integers(-(1 << (n - 1)), 1 << (n - 1), shape)
    residuals = []
    for j in range(len(widths) - 1, 0, -1):
        d, w = widths[j] - widths[j - 1], widths[j - 1]
        high = np.clip(np.round(q / (1 << d)), -(1 << (w - 1)), (1 << (w - 1)) - 1).astype(np.int64)
        residuals.append((q - high * (1 << d)).astype(np.int8))
        q = high
    c = shape[0]
    scales, offsets = [], []
    for w in widths:
        scales.append((rng.uniform(1e-3, 1e-1, c) * (1 << (n - w))).astype(np.float32))
        offsets.append(rng.uniform(-0.5, 0.5, c).astype(np.float32))
    return LevelsIn(q.astype(np.int8), residuals[::-1], scales, offsets)


def levels_vectors() -> list[LevelsVector]:
    rng = np.random.default_rng(20261201)
    f32 = np.float32
    example = LevelsIn(
        np.array([[1, -2, 0], [-1, 1, -2]], np.int8),
        [
            np.array([[-3, 2, 1], [0, -4, 3]], np.int8),
            np.array([[1, 0, -1], [3, -4, 2]], np.int8),
        ],
        [np.array([2.0, 1.0], f32), np.array([0.5, 0.25], f32), np.array([0.125, 0.0625], f32)],
        [np.array([0.125, -1.0], f32), np.array([0.0, -1.0], f32), np.array([0.0, -1.0], f32)],
    )
    bias = np.array([0.5, -1.25], f32)
    model = [
        ("conv.weight", levels_nested(rng, (4, 3, 3, 3), (4, 6, 8))),
        ("conv.bias", rng.standard_normal(4).astype(f32)),
        ("fc.weight", levels_nested(rng, (3, 11), (4, 6, 8))),
        ("fc.bias", rng.standard_normal(3).astype(f32)),
    ]
    return [
        LevelsVector(
            "levels_n6h2",
            "the worked example of spec §14.5: widths 2, 4, 6, §13's tensors plus a third level",
            (2, 4, 6),
            [("w", example), ("b", bias)],
        ),
        LevelsVector(
            "levels_n6h2_l1",
            "levels_n6h2 cut at the end of its 4-bit level: serves 2 and 4 bits, not 6",
            (2, 4, 6),
            [],
            cut_of=("levels_n6h2", 1),
        ),
        LevelsVector(
            "levels_n6h2_l0",
            "levels_n6h2 cut at part_end: serves 2 bits only",
            (2, 4, 6),
            [],
            cut_of=("levels_n6h2", 0),
        ),
        LevelsVector(
            "levels_n8h4_model",
            "INT(8|6|4): a conv and a linear layer with biases, random valid codes",
            (4, 6, 8),
            model,
        ),
        LevelsVector(
            "levels_n8h4_compressed",
            "INT(8|6|4) with zstd blobs (all-zero codes compress) beside plain ones (§8, §14.2)",
            (4, 6, 8),
            [
                ("zeros", levels_nested(rng, (8, 64), (4, 6, 8), zeros=True)),
                ("fc.weight", levels_nested(rng, (3, 11), (4, 6, 8))),
                ("fc.bias", np.zeros(64, f32)),
            ],
            compress=True,
        ),
        LevelsVector(
            "levels_four",
            "four levels, widths 2, 3, 5, 8: two levels between part and full",
            (2, 3, 5, 8),
            [
                ("a", levels_nested(rng, (5, 7), (2, 3, 5, 8))),
                ("r", np.arange(6, dtype=np.int32)),
                ("b", levels_nested(rng, (2, 2, 3), (2, 3, 5, 8))),
            ],
        ),
    ]


def _write_levels(vec: LevelsVector, path: pathlib.Path) -> None:
    n, h = vec.widths[-1], vec.widths[0]
    with NQWriter(path, n=n, h=h, metadata={}, compress=vec.compress, widths=vec.widths) as w:
        for name, t in vec.tensors:
            if isinstance(t, LevelsIn):
                w.add_levels(
                    name,
                    w_high=t.high,
                    residuals=t.residuals,
                    scales=t.scales,
                    offsets=t.offsets,
                    dtype=t.dtype,
                )
            else:
                w.add_raw(name, t)


def _levels_expected(
    vec: LevelsVector, available: tuple[int, ...]
) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    out = []
    for name, t in vec.tensors:
        files: dict[str, bytes] = {}
        if isinstance(t, LevelsIn):
            codes = _levels_codes(t, vec.widths)
            files["high"] = _npy(t.high.astype(np.int8))
            for j, w in enumerate(vec.widths):
                if w in available:
                    files[f"codes_{w}"] = _npy(codes[j])
                    files[f"f32_{w}"] = _npy(dequantize(codes[j], t.scales[j], t.offsets[j]))
            entry = {"name": name, "kind": "NESTED", "dtype": t.dtype, "shape": list(t.high.shape)}
        else:
            files["raw"] = _npy(t)
            code = spec.DType.from_numpy(t.dtype).name
            entry = {"name": name, "kind": "RAW", "dtype": code, "shape": list(t.shape)}
        out.append((entry, files))
    return out


def _levels_edit(raw: bytes, at: int, data: bytes) -> bytes:
    """Bytes ``at`` .. of LEVELS replaced by ``data``; LEVELS and preamble CRCs fixed."""
    decl = spec.LevelDecl.from_preamble(preamble_of(raw))
    return fix_crcs(_set(raw, decl.entry.offset + at, data))


def _decl_edit(raw: bytes, **changes: Any) -> bytes:
    """The level declaration (preamble bytes 208..251) changed; preamble CRC fixed."""
    pre = preamble_of(raw)
    decl = spec.LevelDecl.from_preamble(pre)
    new = dataclasses.replace(decl, **changes)
    return fix_crcs(replace_preamble(raw, reserved=pre.reserved[:14] + new.pack()))


def _level_data_flip(raw: bytes, j: int, index: int) -> bytes:
    """Flip a byte of record ``index``'s level-``j`` blob and fix that blob's CRC only."""
    pre = preamble_of(raw)
    decl = spec.LevelDecl.from_preamble(pre)
    m = decl.count
    at = decl.entry.offset + (m - 1) * spec.SECTION_ENTRY_SIZE
    at += (index * (m - 2) + j - 2) * spec.BLOB_REF_SIZE
    ref = spec.BlobRef.unpack(raw[at : at + spec.BLOB_REF_SIZE])
    out = _flip(raw, ref.offset)
    return replace_level_blob(out, index, j, crc=spec.crc32(out[ref.offset : ref.end]))


def levels_invalid() -> list[InvalidVector]:
    E, F = "levels_n6h2", "levels_four"
    v = InvalidVector
    return [
        v(
            "levels_count_two",
            "invalid_header",
            "levels_n6h2 declaring level_count 2 (a two-level file is a 1.0 file, §14.1)",
            lambda b: _decl_edit(b[E], count=2),
        ),
        v(
            "levels_count_nine",
            "invalid_header",
            "levels_n6h2 declaring level_count 9 (§14.1)",
            lambda b: _decl_edit(b[E], count=9),
        ),
        v(
            "levels_widths_not_rising",
            "invalid_header",
            "levels_n6h2 with widths 2, 2, 6 (§14.1)",
            lambda b: _decl_edit(b[E], widths_raw=bytes([2, 2, 6, 0, 0, 0, 0, 0])),
        ),
        v(
            "levels_width_past_count",
            "invalid_header",
            "levels_n6h2 with a nonzero widths[3] (§14.1)",
            lambda b: _decl_edit(b[E], widths_raw=bytes([2, 4, 6, 7, 0, 0, 0, 0])),
        ),
        v(
            "levels_top_width_not_n",
            "invalid_header",
            "levels_n6h2 with widths 2, 4, 5 while n = 6 (§14.1)",
            lambda b: _decl_edit(b[E], widths_raw=bytes([2, 4, 5, 0, 0, 0, 0, 0])),
        ),
        v(
            "levels_flag_cleared",
            "layout",
            "levels_n6h2 without the LEVELS flag: read as 1.0, its DATA blob is 24 bytes, not 16 "
            "(never a wrong model, §14.1)",
            lambda b: replace_preamble(b[E], incompat_flags=0),
        ),
        v(
            "levels_crc",
            "checksum",
            "levels_n6h2 with its LEVELS CRC wrong (§14.4 step 10)",
            lambda b: _levels_crc_wrong(b[E]),
        ),
        v(
            "levels_length_wrong",
            "layout",
            "levels_n6h2 with LEVELS.length 24 more (DATA's place moves, §14.4 step 8)",
            lambda b: _decl_edit(
                b[E],
                entry=dataclasses.replace(
                    spec.LevelDecl.from_preamble(preamble_of(b[E])).entry, length=120
                ),
            ),
        ),
        v(
            "level_entry_offset",
            "layout",
            "levels_n6h2 with R_2.offset 64 bytes late (§14.2)",
            lambda b: replace_level_entry(b[E], 2, offset=_level_entry(b[E], 2).offset + 64),
        ),
        v(
            "level_entry_reserved",
            "invalid_header",
            "levels_n6h2 with a nonzero reserved byte in R_1's entry (§14.4 step 10a)",
            lambda b: replace_level_entry(b[E], 1, reserved=b"\x00\x01\x00\x00"),
        ),
        v(
            "level_entry_past_full_end",
            "layout",
            "levels_n6h2 with R_2 one byte longer than LOW (§14.4 step 10a)",
            lambda b: replace_level_entry(b[E], 2, length=_level_entry(b[E], 2).length + 1),
        ),
        v(
            "level_blob_offset",
            "layout",
            "levels_four: record 0's level-3 blob 64 bytes late (§7.1, §14.2)",
            lambda b: replace_level_blob(b[F], 0, 3, offset=_level_ref(b[F], 0, 3).offset + 64),
        ),
        v(
            "level_blob_of_raw_record",
            "invalid_header",
            "levels_four: the RAW record 'r' with a nonzero level-2 reference (§14.4 step 11)",
            lambda b: replace_level_blob(b[F], 1, 2, crc=1),
        ),
        v(
            "level_blob_codec_2",
            "unsupported_feature",
            "levels_four: record 2's level-2 blob with codec 2 (§8)",
            lambda b: replace_level_blob(b[F], 2, 2, codec=2),
        ),
        v(
            "level_blob_zstd_flag_clear",
            "invalid_header",
            "levels_four: record 0's level-3 blob with codec 1 but no ZSTD flag (§3.3)",
            lambda b: replace_level_blob(b[F], 0, 3, codec=1),
        ),
        v(
            "level_blob_crc",
            "checksum",
            "levels_four: a byte of a's level-3 blob changed, R_3's CRC fixed (the blob's own "
            "CRC still fails when a's 8-bit values are read, §14.4 step 13)",
            lambda b: fix_crcs(_flip(b[F], _level_ref(b[F], 0, 3).offset), data=True),
            when="read",
            tensor="a",
            mode="8",
        ),
        v(
            "level_section_crc",
            "checksum",
            "levels_four: a byte of a's level-2 blob and that blob's CRC changed: R_2's CRC fails "
            "when a 5-bit level is paged in (whole-level rule, §14.4 step 13)",
            lambda b: _level_data_flip(b[F], 2, 0),
            when="read",
            tensor="a",
            mode="5",
        ),
        v(
            "level_padding",
            "layout",
            "levels_n6h2 with a nonzero byte in the padding between R_1 and R_2 (CRCs fixed: "
            "only a full verification finds it, §14.4 step 14)",
            lambda b: fix_crcs(_flip(b[E], _level_entry(b[E], 1).end + 5), data=True),
            when="verify",
        ),
    ]


def _levels_crc_wrong(raw: bytes) -> bytes:
    """The LEVELS CRC in the preamble off by one bit; the preamble CRC fixed."""
    pre = preamble_of(raw)
    decl = spec.LevelDecl.from_preamble(pre)
    bad = dataclasses.replace(decl, entry=dataclasses.replace(decl.entry, crc=decl.entry.crc ^ 1))
    return dataclasses.replace(pre, reserved=pre.reserved[:14] + bad.pack()).pack() + raw[256:]


def _level_entry(raw: bytes, j: int) -> SectionEntry:
    decl = spec.LevelDecl.from_preamble(preamble_of(raw))
    at = decl.entry.offset + (j - 1) * spec.SECTION_ENTRY_SIZE
    return SectionEntry.unpack(raw[at : at + spec.SECTION_ENTRY_SIZE])


def _level_ref(raw: bytes, index: int, j: int) -> spec.BlobRef:
    decl = spec.LevelDecl.from_preamble(preamble_of(raw))
    m = decl.count
    at = decl.entry.offset + (m - 1) * spec.SECTION_ENTRY_SIZE
    at += (index * (m - 2) + j - 2) * spec.BLOB_REF_SIZE
    return spec.BlobRef.unpack(raw[at : at + spec.BLOB_REF_SIZE])


def _build_levels(tmp: pathlib.Path, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """The version 1.1 vectors (§14), listed under ``levels_valid`` and ``levels_invalid``: a
    1.0 reader skips them (or checks that it rejects each with ``unsupported_feature``)."""
    raws: dict[str, bytes] = {}
    vecs = levels_vectors()
    by_name = {v.name: v for v in vecs}
    manifest["levels_valid"] = []
    for vec in vecs:
        if vec.cut_of is not None:
            base = by_name[vec.cut_of[0]]
            full = raws[base.name]
            decl = spec.LevelDecl.from_preamble(preamble_of(full))
            ends = [preamble_of(full).part_end] + [
                _level_entry(full, j).end for j in range(1, decl.count)
            ]
            raw = full[: ends[vec.cut_of[1]]]
            available = base.widths[: vec.cut_of[1] + 1]
            tensors_of = base
        else:
            path = tmp / f"{vec.name}.nq"
            _write_levels(vec, path)
            raw = path.read_bytes()
            available = vec.widths
            tensors_of = vec
        raws[vec.name] = raw
        rel = f"valid/{vec.name}.nq"
        files[rel] = raw
        entry: dict[str, Any] = {
            "file": rel,
            "description": vec.description,
            "n": vec.widths[-1],
            "h": vec.widths[0],
            "levels": list(vec.widths),
            "available": list(available),
            "part_only": len(available) < len(vec.widths),
            "compressed": bool(preamble_of(raw).incompat_flags & IncompatFlag.ZSTD),
            "tensors": [],
        }
        for i, (tentry, npys) in enumerate(_levels_expected(tensors_of, available)):
            tentry["expected"] = {}
            for suffix, data in npys.items():
                npy_rel = f"valid/{vec.name}/{i}.{suffix}.npy"
                files[npy_rel] = data
                tentry["expected"][suffix] = npy_rel
            entry["tensors"].append(tentry)
        manifest["levels_valid"].append(entry)
    manifest["levels_invalid"] = []
    for inv in levels_invalid():
        rel = f"invalid/{inv.name}.nq"
        files[rel] = inv.make(raws)
        item: dict[str, Any] = {
            "file": rel,
            "error": inv.error,
            "when": inv.when,
            "description": inv.description,
        }
        if inv.when == "read":
            item["tensor"], item["bits"] = inv.tensor, int(inv.mode or 0)
        manifest["levels_invalid"].append(item)


def _rewrite_meta_any_length(vec: ValidVector, meta: dict[str, Any], tmp: pathlib.Path) -> bytes:
    """Re-write ``vec`` with different metadata (the writer adds its own "format" key)."""
    meta = {k: v for k, v in meta.items() if k != "format"}
    again = ValidVector(vec.name, vec.description, vec.n, vec.h, vec.tensors, vec.compress, meta)
    path = tmp / f"{vec.name}.meta.nq"
    _write(again, path)
    return path.read_bytes()


def _meta_text(raw: bytes) -> bytes:
    meta = preamble_of(raw).section(Section.META)
    return raw[meta.offset : meta.end]


def _with_meta_members(vec: ValidVector, members: dict[str, bytes], tmp: pathlib.Path) -> bytes:
    """``vec`` written with a META made of ``members`` as given (plus the writer's "format"),
    sorted, without whitespace: written first with a placeholder of exactly that length, whose
    bytes are then replaced (so no section moves and no padding is left)."""
    fmt = json.loads(_meta_text(_rewrite_meta_any_length(vec, {}, tmp)))["format"]
    members = {**members, "format": json.dumps(fmt, sort_keys=True, separators=(",", ":")).encode()}
    text = b"{" + b",".join(json.dumps(k).encode() + b":" + members[k] for k in sorted(members))
    text += b"}"
    short = len(_meta_text(_rewrite_meta_any_length(vec, {"pad": ""}, tmp)))
    raw = _rewrite_meta_any_length(vec, {"pad": "x" * (len(text) - short)}, tmp)
    if len(_meta_text(raw)) != len(text):
        raise RuntimeError(f"{vec.name}: placeholder META is not {len(text)} bytes")
    return replace_meta(raw, text)


def _only_adds(old: bytes, new: bytes) -> bool:
    """True if manifest ``new`` lists every entry of ``old`` unchanged, in the same place, and
    more entries after them, or new keys (vectors were added, none changed)."""
    before, after = json.loads(old), json.loads(new)
    if before == after or not set(before) <= set(after):
        return False
    for key, value in before.items():
        if isinstance(value, list):
            if after[key][: len(value)] != value:
                return False
        elif after[key] != value:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "spec" / "vectors")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files, _ = build(pathlib.Path(tmp))
    written, same, differ = 0, 0, []
    for rel, data in sorted(files.items()):
        path = args.out / rel
        if path.exists():
            if rel == "manifest.json" and _only_adds(path.read_bytes(), data):
                path.write_bytes(data)  # the index grows with new vectors; old entries stay
                written += 1
            elif path.read_bytes() == data:
                same += 1
            else:
                differ.append(rel)
            continue  # never overwrite a vector
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
    print(
        f"{written} files written, {same} unchanged, {len(differ)} differ from what this "
        "writer produces now"
    )
    for rel in differ:
        print(f"  DIFFERS (left untouched): {rel}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
