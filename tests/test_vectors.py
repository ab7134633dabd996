"""Conformance vectors (spec/vectors/): decode every stored file; nothing is regenerated."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest

import nqformat
from nqformat.errors import ERROR_CLASSES, NQFormatError, PartOnlyError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def _load(rel: str) -> np.ndarray:
    return np.load(VECTORS / rel, allow_pickle=False)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.tobytes() == want.tobytes()  # bit-exact, NaN and -0.0 included


@pytest.mark.parametrize("vector", MANIFEST["valid"], ids=lambda v: v["file"])
def test_valid_vector_decodes_to_its_expected_arrays(vector: dict[str, Any]) -> None:
    with nqformat.open(VECTORS / vector["file"]) as f:
        assert (f.n, f.h) == (vector["n"], vector["h"])
        assert f.part_only == vector["part_only"]
        assert f.names() == [t["name"] for t in vector["tensors"]]
        for t in vector["tensors"]:
            info = f.info(t["name"])
            assert info.kind.name == t["kind"] and info.dtype.name == t["dtype"]
            assert list(info.shape) == t["shape"]
            exp = t["expected"]
            if t["kind"] == "RAW":
                _same(f.read(t["name"]), _load(exp["raw"]))
                continue
            _same(f.codes(t["name"], "high"), _load(exp["high"]))
            _same(f.read(t["name"], "part"), _load(exp["part_f32"]))
            if vector["part_only"]:
                with pytest.raises(PartOnlyError):
                    f.read(t["name"], "full")
                continue
            _same(f.codes(t["name"], "low"), _load(exp["low"]))
            _same(f.codes(t["name"], "full"), _load(exp["full"]))
            _same(f.read(t["name"], "full"), _load(exp["full_f32"]))
        assert f.verify() == []


@pytest.mark.parametrize("vector", MANIFEST["invalid"], ids=lambda v: v["file"])
def test_invalid_vector_raises_its_error_code(vector: dict[str, Any]) -> None:
    path = VECTORS / vector["file"]
    code = vector["error"]
    if vector["when"] == "open":
        with pytest.raises(NQFormatError) as exc_info:
            nqformat.open(path)
        assert exc_info.value.code == code, str(exc_info.value)
        assert isinstance(exc_info.value, ERROR_CLASSES[code])
        return
    with nqformat.open(path) as f:
        if vector["when"] == "read":
            with pytest.raises(NQFormatError) as exc_info:
                f.read(vector["tensor"], vector["mode"])
            assert exc_info.value.code == code, str(exc_info.value)
        else:
            assert vector["when"] == "verify"
            for name in f.names():
                f.read(name, "full")  # the damage is outside every blob
            assert f.verify() != []


def test_manifest_lists_every_file_and_only_known_codes() -> None:
    valid = MANIFEST["valid"] + MANIFEST.get("levels_valid", [])  # 1.1 vectors (spec §14)
    listed = {v["file"] for v in valid + MANIFEST["invalid"] + MANIFEST.get("levels_invalid", [])}
    for v in valid:
        for t in v["tensors"]:
            listed.update(t["expected"].values())
    on_disk = {
        p.relative_to(VECTORS).as_posix()
        for p in VECTORS.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "README.md")
    }
    assert listed == on_disk
    assert {v["error"] for v in MANIFEST["invalid"]} <= set(ERROR_CLASSES)
    assert all(v["when"] in ("open", "read", "verify") for v in MANIFEST["invalid"])


def test_vectors_cover_the_required_cases() -> None:
    valid = {v["file"].split("/")[-1][:-3]: v for v in MANIFEST["valid"]}
    pairs = {(v["n"], v["h"]) for v in valid.values()}
    assert {(8, 6), (8, 4), (4, 2), (2, 1), (8, 7)} <= pairs
    assert any(v["part_only"] for v in valid.values())
    assert any(v["compressed"] for v in valid.values())
    assert any(not v["compressed"] for v in valid.values())
    shapes = [t["shape"] for v in valid.values() for t in v["tensors"]]
    assert [] in shapes and any(0 in s for s in shapes)
    dtypes = {t["dtype"] for v in valid.values() for t in v["tensors"] if t["kind"] == "RAW"}
    assert len(dtypes) >= 10
    errors = {v["error"] for v in MANIFEST["invalid"]}
    assert set(ERROR_CLASSES) - {"part_only"} <= errors
