"""Shared helpers of the container tests: synthetic NESTED tensors and the spec §7.2 oracle."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

import nqformat
from nqformat import NQWriter
from nqformat.container import spec
from nqformat.container.spec import Section
from nqformat.container.testing import (
    fix_crcs,
    preamble_of,
    record_of,
    replace_blob,
    replace_section,
)


@dataclass(frozen=True)
class Nested:
    """Codes and parameters of one synthetic NESTED tensor."""

    high: np.ndarray  # int8
    low: np.ndarray  # int8
    scale_full: np.ndarray
    offset_full: np.ndarray
    scale_part: np.ndarray
    offset_part: np.ndarray
    n: int
    h: int

    @property
    def full(self) -> np.ndarray:
        return self.high.astype(np.int16) * (1 << (self.n - self.h)) + self.low

    def kwargs(self) -> dict[str, Any]:
        return {
            "w_high": self.high,
            "w_low": self.low,
            "scale_full": self.scale_full,
            "offset_full": self.offset_full,
            "scale_part": self.scale_part,
            "offset_part": self.offset_part,
        }

    def expected(self, mode: str) -> np.ndarray:
        """Spec §7.2 dequantization, written independently of the reader: per element."""
        codes = self.full if mode == "full" else self.high.astype(np.int16)
        scale = self.scale_full if mode == "full" else self.scale_part
        offset = self.offset_full if mode == "full" else self.offset_part
        out = np.empty(codes.shape, np.float32)
        for idx in np.ndindex(codes.shape):
            c = idx[0]
            prod = np.float32(np.float32(codes[idx]) * scale[c])
            out[idx] = np.float32(prod + offset[c])
        return out


def random_nested(rng: np.random.Generator, shape: tuple[int, ...], n: int, h: int) -> Nested:
    """Random H, L with q = H*2^l + L inside the n-bit range, and random parameters."""
    l = n - h  # noqa: E741
    q = rng.integers(-(1 << (n - 1)), 1 << (n - 1), size=shape)
    # H = round(q / 2^l), clamped to h bits; L the residual, which then fits l+1 bits.
    high = np.clip(np.round(q / (1 << l)), -(1 << (h - 1)), (1 << (h - 1)) - 1).astype(np.int8)
    low = (q - high.astype(np.int64) * (1 << l)).astype(np.int8)
    c = shape[0]
    return Nested(
        high=high,
        low=low,
        scale_full=rng.uniform(1e-3, 1e-1, c).astype(np.float32),
        offset_full=rng.uniform(-1, 1, c).astype(np.float32),
        scale_part=rng.uniform(1e-3, 1e-1, c).astype(np.float32) * (1 << l),
        offset_part=rng.uniform(-1, 1, c).astype(np.float32),
        n=n,
        h=h,
    )


def write_small(
    path: pathlib.Path, *, n: int = 8, h: int = 6, compress: bool = False, seed: int = 0
) -> dict[str, Any]:
    """A small file: two NESTED tensors (one with an odd element count) and two RAW ones."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {
        "conv.weight": random_nested(rng, (4, 3, 3, 3), n, h),
        "fc.weight": random_nested(rng, (3, 5), n, h),
        "fc.bias": rng.standard_normal(3).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    meta = {"model": {"arch": "tiny"}, "note": "room for META edits in tests " * 5}
    with NQWriter(path, n=n, h=h, metadata=meta, compress=compress) as w:
        for name, t in tensors.items():
            if isinstance(t, Nested):
                w.add_nested(name, **t.kwargs(), w_int=t.full)
            else:
                w.add_raw(name, t)
    return tensors


def write_compressible(path: pathlib.Path) -> pathlib.Path:
    """One channel (incompressible 16-byte DATA blob, codec 0) of 4096 zero codes (HIGH and LOW
    blobs codec 1)."""
    one = np.ones(1, np.float32)
    with NQWriter(path, n=8, h=6, metadata={}, compress=True) as w:
        zeros = np.zeros((1, 4096), np.int8)
        w.add_nested(
            "w",
            w_high=zeros,
            w_low=zeros,
            scale_full=one,
            offset_full=one,
            scale_part=one,
            offset_part=one,
        )
    with nqformat.open(path) as f:
        info = f.info("w")
        assert (info.data.codec, info.high.codec, info.low.codec) == (0, 1, 1)
    return path


def damage_blob(raw: bytes, which: str, pos: int) -> bytes:
    """Byte ``pos`` of w's ``which`` blob changed; every CRC fixed."""
    ref = getattr(record_of(raw, 0), which)
    buf = bytearray(raw)
    buf[ref.offset + pos] ^= 0x10
    out = replace_blob(bytes(buf), 0, which, crc=spec.crc32(buf[ref.offset : ref.end]))
    return fix_crcs(out, data=True)


def two_faults_in_one_read(tmp_path: pathlib.Path) -> pathlib.Path:
    """write_compressible's file with HIGH's frame magic damaged (layout; CRCs fixed) and
    LOW.crc wrong (checksum): a full-bit read of "w" meets the HIGH fault first (§11 step 13)."""
    raw = write_compressible(tmp_path / "m.nq").read_bytes()
    raw = damage_blob(raw, "high", 0)
    low = preamble_of(raw).section(Section.LOW)
    path = tmp_path / "two_faults.nq"
    path.write_bytes(replace_section(raw, Section.LOW, crc=low.crc ^ 1))
    return path
