"""One atomic-write helper for the writer and ``nqtool extract``: the target appears whole or
not at all, with a plain open()'s permissions, and errors name the target, not the temporary."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import nqformat
from nqformat._atomic import AtomicFile
from nqformat.cli.extract import copy_prefix
from nqformat.errors import NQFormatError


def _umask() -> int:
    # test side only: the library never toggles the umask
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_commit_puts_the_bytes_at_the_target_with_open_permissions(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out.bin"
    with AtomicFile(target) as out:
        out.file.write(b"abc")
        assert not target.exists()  # nothing at the target before commit
    assert target.read_bytes() == b"abc"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_an_exception_leaves_the_old_target_and_no_temporary(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), AtomicFile(target) as out:
        out.file.write(b"new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_writer_error_names_the_target_not_the_temporary(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "model.nq"
    (target / "occupied").mkdir(parents=True)  # a non-empty directory: the rename must fail
    w = nqformat.NQWriter(target, n=4, h=2, metadata={})
    w.add_raw("b", np.ones(3, np.float32))
    with pytest.raises(OSError) as info:
        w.close()
    assert str(target) in str(info.value)
    assert ".nq-tmp" not in str(info.value) and "->" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nq"]


def test_extract_of_a_bad_prefix_names_neither_temporary_nor_leaves_one(
    tmp_path: pathlib.Path,
) -> None:
    src = tmp_path / "full.nq"
    with nqformat.NQWriter(src, n=4, h=2, metadata={}) as w:
        w.add_raw("b", np.ones(3, np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(NQFormatError) as info:
        copy_prefix(src, out_dir / "part.nq", 100)  # shorter than the preamble
    assert ".tmp" not in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_the_umask_is_never_changed_while_writing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    with nqformat.NQWriter(tmp_path / "m.nq", n=4, h=2, metadata={}) as w:
        w.add_raw("b", np.ones(3, np.float32))
    copy_prefix(tmp_path / "m.nq", tmp_path / "p.nq", (tmp_path / "m.nq").stat().st_size)
    assert (tmp_path / "p.nq").exists()
