"""Malformed input (issue 2, item 7): every damaged file gives the format's error or a valid
open, never another exception, a crash or a hang."""

from __future__ import annotations

import os
import pathlib

import pytest
from _container_util import write_small
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nqformat
from nqformat.container import spec
from nqformat.container.spec import Kind
from nqformat.container.testing import fix_crcs
from nqformat.errors import NQFormatError, PartOnlyError, TruncatedError


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, int, int]:
    """(bytes, header_end, part_end, full_end) of a small valid file."""
    path = tmp_path_factory.mktemp("malformed") / "small.nq"
    write_small(path, n=5, h=2)
    with nqformat.open(path) as f:
        return path.read_bytes(), f.header_end, f.part_end, f.full_end


def _exercise(path: pathlib.Path) -> str:
    """Open and read everything; return "error:<code>" or "ok"/"part_only". Any exception
    other than the format's own propagates and fails the test."""
    try:
        with nqformat.open(path) as f:
            modes = ("part",) if f.part_only else ("part", "full")
            for name in f.names():
                for mode in modes:
                    try:
                        f.read(name, mode)
                        if f.info(name).kind is Kind.NESTED:
                            f.codes(name, "high" if mode == "part" else "full")
                    except NQFormatError as exc:  # lazily found: CRC or decompression
                        assert not isinstance(exc, PartOnlyError)
            assert isinstance(f.verify(), list)
            return "part_only" if f.part_only else "ok"
    except NQFormatError as exc:
        return f"error:{exc.code}"


@pytest.mark.timeout(300)
def test_truncation_at_every_offset_is_truncated_or_part_only(
    valid: tuple[bytes, int, int, int], tmp_path: pathlib.Path
) -> None:
    raw, _, part_end, _ = valid
    path = tmp_path / "cut.nq"
    path.write_bytes(raw)
    assert _exercise(path) == "ok"
    for size in range(len(raw) - 1, -1, -1):  # shrinking one file in place is cheap
        os.truncate(path, size)
        if size < part_end:
            with pytest.raises(TruncatedError):
                nqformat.open(path)
            continue
        with nqformat.open(path) as f:
            assert f.part_only, size
            for name in f.names():
                f.read(name, "part")
            with pytest.raises(PartOnlyError):
                f.page_in_low()
            assert f.max_offset_read <= part_end


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_header_byte_is_caught_by_a_crc(
    valid: tuple[bytes, int, int, int], tmp_path: pathlib.Path, mask: int
) -> None:
    raw, header_end, _, _ = valid
    path = tmp_path / "flip.nq"
    for offset in range(header_end):
        flipped = bytearray(raw)
        flipped[offset] ^= mask
        path.write_bytes(bytes(flipped))
        # magic and version are checked before the preamble CRC (§11 steps 2-4)
        with pytest.raises(NQFormatError):
            nqformat.open(path)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_header_byte_with_fixed_crcs_never_escapes(
    valid: tuple[bytes, int, int, int], tmp_path: pathlib.Path, mask: int
) -> None:
    raw, header_end, _, _ = valid
    path = tmp_path / "flip.nq"
    outcomes: dict[str, int] = {}
    for offset in range(header_end):
        flipped = bytearray(raw)
        flipped[offset] ^= mask
        path.write_bytes(fix_crcs(flipped))
        outcome = _exercise(path)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # the deeper checks were reached, not just the CRCs
    deeper = {k for k in outcomes if k.startswith("error:")} - {"error:checksum"}
    assert {"error:layout", "error:invalid_header"} <= deeper, outcomes


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=6),
    fix=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 2**20)),
)
def test_random_corruption_never_escapes(
    valid: tuple[bytes, int, int, int],
    tmp_path: pathlib.Path,
    edits: list,
    fix: bool,
    cut: int | None,
) -> None:
    raw, header_end, _, _ = valid
    buf = bytearray(raw)
    for offset, value in edits:
        # most edits land in the header, where the parsing is
        buf[offset % (header_end if offset % 3 else len(buf))] = value
    data = fix_crcs(buf, data=True) if fix else bytes(buf)
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path / "fuzz.nq"
    path.write_bytes(data)
    assert _exercise(path) in {"ok", "part_only"} or _exercise(path).startswith("error:")


def test_hostile_sizes_are_refused_before_allocation(
    valid: tuple[bytes, int, int, int], tmp_path: pathlib.Path
) -> None:
    from nqformat.container.testing import replace_preamble, replace_section

    raw, _, _, _ = valid
    path = tmp_path / "hostile.nq"
    huge = [
        replace_preamble(raw, tensor_count=2**32 - 1),
        replace_section(raw, spec.Section.META, length=2**63 + 5),
        replace_section(raw, spec.Section.NAMES, length=300 << 20),
        replace_preamble(raw, full_end=2**64 - 1),
    ]
    for data in huge:
        path.write_bytes(data)
        with pytest.raises(nqformat.LimitError):
            nqformat.open(path)


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        (b'{"a":' + b"[" * 63 + b"]" * 63 + b"}", True),  # depth 64: the limit
        (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", False),  # depth 65
        (b'{"s":"[[[[{{{{"}', True),  # brackets inside strings do not nest
        (b'{"a":"\\ud800"}', True),  # a lone surrogate escape is valid JSON
        (b'{"a":1,"\\u0061":2}', False),  # duplicate key after unescaping
        (b'\xef\xbb\xbf{"a":1}', False),  # byte order mark
        (b'{"a":Infinity}', False),
        (b'{"a":1} x', False),  # trailing garbage
        (b"{}", True),
    ],
)
def test_meta_rules_of_spec_section_6(
    valid: tuple[bytes, int, int, int], tmp_path: pathlib.Path, meta: bytes, ok: bool
) -> None:
    from nqformat.container.testing import replace_meta

    path = tmp_path / "meta.nq"
    path.write_bytes(replace_meta(valid[0], meta))
    if ok:
        with nqformat.open(path) as f:
            assert isinstance(f.metadata, dict)
    else:
        with pytest.raises(nqformat.MetadataError):
            nqformat.open(path)
