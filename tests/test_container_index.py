"""The INDEX is checked as one numpy array (spec §11 step 11); the record-by-record walk stays the
only source of errors. These tests hold the two to the same answers: wherever the walk raises,
the array check declines (returns None), and wherever the walk accepts, the array check gives
the same TensorInfos or declines."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from _container_util import random_nested, write_small
from hypothesis import given, settings
from hypothesis import strategies as st

from nqformat import NQWriter
from nqformat.container import header as hdr
from nqformat.container import spec
from nqformat.container.spec import Section
from nqformat.container.testing import fix_crcs
from nqformat.errors import NQFormatError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"


def _both(raw: bytes) -> tuple[object, object] | None:
    """(walk result or its error, array result) for a file's bytes; None when the preamble or a
    header CRC already rejects it (step 11 is never reached)."""
    try:
        pre = hdr._check_preamble(raw[: spec.PREAMBLE_SIZE], len(raw))
        header = raw[: pre.sections[Section.META].end]
        hdr._check_header_crcs(pre, header)
    except NQFormatError:
        return None
    try:
        walked: object = hdr._check_records_each(pre, header)
    except NQFormatError as exc:
        walked = exc
    return walked, hdr._records_vectorised(pre, header)


def _agree(raw: bytes) -> str:
    """Assert the two checks agree; say which way the file went."""
    both = _both(raw)
    if both is None:
        return "rejected before step 11"
    walked, vectorised = both
    if isinstance(walked, NQFormatError):
        assert vectorised is None, walked
        return f"error:{walked.code}"
    if vectorised is None:
        return "declined"
    assert vectorised == walked
    return "same"


def _many_tensors(path: pathlib.Path, *, compress: bool) -> None:
    """Nested and raw tensors of every dtype, odd sizes, zero-size and scalar RAW ones."""
    rng = np.random.default_rng(5)
    with NQWriter(path, n=6, h=4, metadata={"note": "index"}, compress=compress) as w:
        for i in range(40):
            shape = (int(rng.integers(1, 9)), int(rng.integers(1, 7)), 3, 3)[: 1 + i % 4]
            w.add_nested(f"layer{i}.weight", **random_nested(rng, shape, 6, 4).kwargs())
            dtype = ("<f4", "<f2", "<f8", "|i1", "|u1", "<i2", "<i4", "<i8", "|b1")[i % 9]
            w.add_raw(f"layer{i}.bias", (rng.integers(0, 2, size=shape[:1]).astype(dtype)))
            w.add_raw(f"layer{i}.ü名", np.zeros((0, 3), np.float32) if i % 2 else np.float32(i))
        w.add_raw("bf16", np.arange(6, dtype=np.uint16), dtype="BF16")


@pytest.mark.parametrize("compress", [False, True])
def test_valid_files_take_the_array_check_and_match_the_walk(
    tmp_path: pathlib.Path, compress: bool
) -> None:
    path = tmp_path / "many.nq"
    _many_tensors(path, compress=compress)
    assert _agree(path.read_bytes()) == "same"
    write_small(path, n=5, h=2, compress=compress)
    assert _agree(path.read_bytes()) == "same"


def test_every_conformance_vector_gets_the_same_answer_from_both_checks() -> None:
    outcomes = {_agree(p.read_bytes()) for p in sorted(VECTORS.rglob("*.nq"))}
    assert "same" in outcomes  # the valid vectors
    assert "declined" not in outcomes  # the array check handles every conforming vector


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_index_or_names_byte_gives_the_same_answer(
    tmp_path: pathlib.Path, mask: int
) -> None:
    path = tmp_path / "small.nq"
    write_small(path, n=8, h=3, compress=mask == 0x80)
    raw = path.read_bytes()
    pre = hdr._check_preamble(raw[: spec.PREAMBLE_SIZE], len(raw))
    outcomes = set()
    for offset in range(pre.sections[Section.INDEX].offset, pre.sections[Section.NAMES].end):
        flipped = bytearray(raw)
        flipped[offset] ^= mask
        outcomes.add(_agree(fix_crcs(flipped)))
    assert {"error:layout", "error:invalid_header"} <= outcomes, outcomes


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("index") / "many.nq"
    _many_tensors(path, compress=False)
    return path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from([0, 1, 2, 7, 63, 64, 128, 255])),
        min_size=1,
        max_size=4,
    )
)
def test_random_index_edits_give_the_same_answer(many: bytes, edits: list[tuple[int, int]]) -> None:
    pre = hdr._check_preamble(many[: spec.PREAMBLE_SIZE], len(many))
    start, end = pre.sections[Section.INDEX].offset, pre.sections[Section.NAMES].end
    buf = bytearray(many)
    for offset, value in edits:
        buf[start + offset % (end - start)] = value
    _agree(fix_crcs(buf))
