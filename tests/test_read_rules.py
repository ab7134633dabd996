"""The read-time rules issue 17 settled in the spec (§7.2, §8, §9, §11 steps 13-14): what a
reader does where an independent implementer had to guess. The conformance vectors pin each
rule; these tests pin what a vector cannot (a reader without zstd, two faults in one read)."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
from _container_util import damage_blob, two_faults_in_one_read, write_compressible

import nqformat
from nqformat.container import spec
from nqformat.container.dequant import zstd_frame_header
from nqformat.container.testing import (
    preamble_of,
    record_of,
)
from nqformat.errors import (
    ChecksumError,
    InvalidHeaderError,
    LayoutError,
    PartOnlyError,
    UnsupportedFeatureError,
)

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"


def test_blobs_of_one_read_are_checked_data_then_high_then_low(tmp_path: pathlib.Path) -> None:
    # two faults: HIGH's frame magic damaged (layout) and LOW.crc wrong (checksum); a full-bit
    # read checks HIGH completely before LOW is paged in, so layout comes first (§11 step 13)
    path = two_faults_in_one_read(tmp_path)
    with nqformat.open(path) as f, pytest.raises(LayoutError):
        f.read("w", "full")
    # LOW.crc alone is still caught: it is the second fault
    with nqformat.open(path) as f, pytest.raises(ChecksumError):
        f.page_in_low()


def test_reader_without_zstd_reports_unsupported_feature_after_crc_and_header(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_compressible(tmp_path / "m.nq")
    bad_header = tmp_path / "bad_header.nq"
    bad_header.write_bytes(damage_blob(path.read_bytes(), "high", 0))
    bad_crc = tmp_path / "bad_crc.nq"
    raw = bytearray(path.read_bytes())
    raw[record_of(bytes(raw), 0).high.offset + 8] ^= 1  # blob CRC not fixed
    bad_crc.write_bytes(bytes(raw))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` now fails
    with nqformat.open(path) as f:  # the ZSTD flag is known: open succeeds (§3.3)
        np.testing.assert_array_equal(f.params("w").scale_full, [1.0])  # codec 0 still reads
        with pytest.raises(UnsupportedFeatureError):
            f.read("w", "part")
    with nqformat.open(bad_header) as f, pytest.raises(LayoutError):
        f.read("w", "part")
    with nqformat.open(bad_crc) as f, pytest.raises(ChecksumError):
        f.read("w", "part")


def test_frame_header_window_bound_is_inclusive() -> None:
    def frame(descriptor: int) -> bytes:
        # magic, descriptor (FCS flag 2: 4-byte content size, no single segment), window, size
        return bytes.fromhex("28b52ffd") + bytes([0x80, descriptor]) + (100).to_bytes(4, "little")

    assert zstd_frame_header(frame(17 << 3), 100, "t").window_size == spec.ZSTD_MAX_WINDOW
    with pytest.raises(LayoutError, match="window"):
        zstd_frame_header(frame((17 << 3) | 1), 100, "t")
    with pytest.raises(LayoutError, match="window"):
        zstd_frame_header(frame(18 << 3), 100, "t")


def test_part_only_is_reported_before_any_blob_is_read(tmp_path: pathlib.Path) -> None:
    path = VECTORS / "invalid" / "part_only_full_read_bad_blob.nq"
    with nqformat.open(path) as f:
        before = f.bytes_read
        for call in (lambda: f.read("w", "full"), lambda: f.codes("w", "low")):
            with pytest.raises(PartOnlyError):
                call()
        assert f.bytes_read == before  # refused from the header alone
        with pytest.raises(ChecksumError):  # the damaged blob is there for part mode
            f.read("w", "part")


def test_non_finite_parameters_fail_reads_in_both_modes_and_verify() -> None:
    for name in ("param_nan", "param_inf"):
        with nqformat.open(VECTORS / "invalid" / f"{name}.nq") as f:
            for mode in ("part", "full"):
                with pytest.raises(InvalidHeaderError):
                    f.read("w", mode)
            with pytest.raises(InvalidHeaderError):
                f.params("w")
            np.testing.assert_array_equal(f.read("b"), [0.5, -1.25])  # other tensors read
            problems = f.verify()
            assert len(problems) == 1 and "not finite" in problems[0], problems


def test_verify_ignores_the_bytes_after_part_end_of_a_part_only_file() -> None:
    path = VECTORS / "valid" / "part_only_nonzero_tail.nq"
    raw = path.read_bytes()
    pre = preamble_of(raw)
    assert pre.part_end < len(raw) < pre.full_end and raw[pre.part_end] != 0
    with nqformat.open(path) as f:
        assert f.part_only and f.verify() == []


def _fused(q: int, s: np.float32, o: np.float32) -> np.float32:
    """q * s + o rounded once to binary32 (an FMA), exactly: the product is exact in binary64,
    and the sum's rounding is decided by comparing with the two neighbouring binary32 values."""
    from fractions import Fraction

    exact = Fraction(q) * Fraction(float(s)) + Fraction(float(o))
    near = np.float32(float(exact))
    cands = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.uint32)) & 1))


def test_dequant_edge_vector_holds_the_values_the_vectors_readme_claims() -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    (vec,) = [v for v in manifest["valid"] if v["file"] == "valid/dequant_edge_values.nq"]
    expected = vec["tensors"][0]["expected"]
    for model, codes_key, part in (("full_f32", "full", False), ("part_f32", "high", True)):
        values = np.load(VECTORS / expected[model])
        codes = np.load(VECTORS / expected[codes_key])
        assert ((values == 0) & np.signbit(values)).any()  # -0.0
        assert np.isposinf(values).any() and np.isneginf(values).any()
        assert not np.isnan(values).any()
        with nqformat.open(VECTORS / vec["file"]) as f:
            p = f.params("w")
            scale, offset = (p.scale_part, p.offset_part) if part else (p.scale_full, p.offset_full)
        sensitive = 0
        for (c, e), w in np.ndenumerate(values):
            if not np.isfinite(w):
                continue
            q, s, o = int(codes[c, e]), scale[c], offset[c]
            fused, binary64 = _fused(q, s, o), np.float32(float(q) * float(s) + float(o))
            sensitive += bool(w != fused and w != binary64)
        assert sensitive >= 8, sensitive  # rounding the product first matters for these
