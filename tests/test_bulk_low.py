"""NQFile.low_blobs (the codes runtime's upgrade): all of LOW in one read, LOW.crc checked
first and then every blob's own CRC (§11 step 13), each blob as the single-blob read gives it."""

from __future__ import annotations

import pathlib

import pytest
from _container_util import write_compressible, write_small

import nqformat
from nqformat.container import spec
from nqformat.container.spec import Kind, Section
from nqformat.container.testing import fix_crcs
from nqformat.errors import ChecksumError


def _nested(f: nqformat.NQFile) -> list:
    return [i for i in f.tensors() if i.kind is Kind.NESTED]


@pytest.mark.parametrize("compress", [False, True])
def test_low_blobs_equal_blob_by_blob_reads_in_one_read(tmp_path, compress) -> None:
    path = tmp_path / "s.nq"
    write_small(path, compress=compress)
    with nqformat.open(path) as f, nqformat.open(path) as g:
        infos = _nested(f)[::-1]  # any order
        low = {s.name: s for s in f.sections()}["LOW"].length
        before = f.bytes_read
        views, paged = f.low_blobs(infos)
        assert paged == low and f.low_resident
        if not compress:
            assert f.bytes_read - before == low  # one read, no second pass for the blob CRCs
        assert [bytes(v) for v in views] == [bytes(g._blob(i, Section.LOW)) for i in infos]


def test_zstd_low_blobs_are_decompressed(tmp_path) -> None:
    path = write_compressible(tmp_path / "z.nq")
    with nqformat.open(path) as f, nqformat.open(path) as g:
        views, _ = f.low_blobs(_nested(f))
        assert [bytes(v) for v in views] == [bytes(g._blob(i, Section.LOW)) for i in _nested(g)]


def _damaged(src: pathlib.Path, dst: pathlib.Path, *, fix_low_crc: bool) -> pathlib.Path:
    """fc.weight's LOW blob with one byte changed; its record's CRC kept (so the blob is
    corrupt); LOW.crc recomputed over the damage with ``fix_low_crc``."""
    raw = bytearray(src.read_bytes())
    with nqformat.open(src) as f:
        ref = f.info("fc.weight").low
    raw[ref.offset] ^= 0x04
    out = fix_crcs(bytes(raw), data=True) if fix_low_crc else bytes(raw)
    dst.write_bytes(out)
    return dst


def test_a_wrong_low_crc_fails_before_any_blob_is_used(tmp_path) -> None:
    write_small(tmp_path / "s.nq")
    bad = _damaged(tmp_path / "s.nq", tmp_path / "bad.nq", fix_low_crc=False)
    with nqformat.open(bad) as f:
        with pytest.raises(ChecksumError, match="LOW CRC"):
            f.low_blobs(_nested(f))
        assert not f.low_resident  # no L code of this file may be used
    with nqformat.open(bad, verify=False) as f:  # the user asked for no checks
        assert len(f.low_blobs(_nested(f))[0]) == 2


def test_a_corrupt_blob_under_a_right_low_crc_names_its_tensor(tmp_path) -> None:
    write_small(tmp_path / "s.nq")
    bad = _damaged(tmp_path / "s.nq", tmp_path / "bad.nq", fix_low_crc=True)
    with nqformat.open(bad) as f:
        with pytest.raises(ChecksumError, match=r"'fc\.weight': LOW blob CRC"):
            f.low_blobs(_nested(f))
        assert not f.low_resident


def test_low_over_the_read_budget_is_read_blob_by_blob_with_the_same_bytes(tmp_path) -> None:
    path = tmp_path / "s.nq"
    write_small(path)
    with nqformat.open(path) as f:
        low = {s.name: s for s in f.sections()}["LOW"].length
        largest = max(i.low.length for i in _nested(f))
    with nqformat.open(path, max_bytes=low - 1) as f, nqformat.open(path) as g:
        assert largest <= low - 1
        views, paged = f.low_blobs(_nested(f))
        assert paged == low and f.low_resident
        assert [bytes(v) for v in views] == [bytes(g._blob(i, Section.LOW)) for i in _nested(g)]


def test_blob_crc_fixture_really_breaks_only_the_blob(tmp_path) -> None:
    """The damaged file of the test above: LOW.crc right, fc.weight's blob CRC wrong."""
    write_small(tmp_path / "s.nq")
    bad = _damaged(tmp_path / "s.nq", tmp_path / "bad.nq", fix_low_crc=True).read_bytes()
    with nqformat.open(tmp_path / "bad.nq") as f:
        ref = f.info("fc.weight").low
        low = {s.name: s for s in f.sections()}["LOW"]
    assert spec.crc32(bad[low.offset : low.offset + low.length]) == low.crc
    assert spec.crc32(bad[ref.offset : ref.offset + ref.length]) != ref.crc
