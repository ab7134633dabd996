"""The C reader (examples/c-reader/nqread.c) on the 1.1 vectors of several levels (spec §14):
every level it reaches dumps to the expected codes and float32 values, finer levels are
part_only, and every invalid 1.1 vector fails with its code."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from test_c_reader import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNSUPPORTED,
    Runner,
    c_reader_bins,  # noqa: F401 - fixture
    nqread,  # noqa: F401 - fixture
)

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def _id(entry: dict) -> str:
    return pathlib.Path(entry["file"]).stem


@pytest.mark.parametrize("vector", MANIFEST["levels_valid"], ids=_id)
def test_every_level_dumps_to_its_expected_arrays(nqread: Runner, vector: dict) -> None:  # noqa: F811
    path = VECTORS / vector["file"]
    res = nqread("info", path)
    assert res.rc == EXIT_OK, res.stderr
    lines = res.stdout.decode().splitlines()
    assert "version 1.1" in lines and f"part_only {int(vector['part_only'])}" in lines
    (levels,) = [line for line in lines if line.startswith("levels ")]
    assert [int(x.split(":")[0]) for x in levels.split()[1:]] == vector["levels"]
    for t in vector["tensors"]:
        exp = t["expected"]
        if t["kind"] == "RAW":
            res = nqread("dump", path, t["name"])
            if vector["compressed"] and res.rc == EXIT_UNSUPPORTED:
                assert res.code == "unsupported_feature"  # no zstd decoder in nqread
                continue
            assert res.rc == EXIT_OK and res.stdout == np.load(VECTORS / exp["raw"]).tobytes()
            continue
        for width in vector["levels"]:
            values = nqread("dump", path, t["name"], "--bits", str(width))
            codes = nqread("dump", path, t["name"], "--bits", str(width), "--codes")
            if width not in vector["available"]:
                assert (values.rc, values.code) == (EXIT_UNSUPPORTED, "part_only")
                continue
            if vector["compressed"] and values.rc == EXIT_UNSUPPORTED:
                assert values.code == "unsupported_feature"  # no zstd decoder in nqread
                continue
            assert values.rc == EXIT_OK, values.stderr
            want = np.load(VECTORS / exp[f"f32_{width}"])
            assert values.stdout == want.astype("<f4").tobytes(), width
            want_q = np.load(VECTORS / exp[f"codes_{width}"]).astype("<i4")
            assert codes.stdout == want_q.tobytes(), width
    if not vector["part_only"] and not vector["compressed"]:
        first = next(t for t in vector["tensors"] if t["kind"] == "NESTED")
        full = nqread("dump", path, first["name"], "--mode", "full")
        want = np.load(VECTORS / first["expected"][f"f32_{vector['n']}"])
        assert full.stdout == want.astype("<f4").tobytes()
    res = nqread("check", path)
    assert res.rc == (EXIT_UNSUPPORTED if vector["compressed"] else EXIT_OK), res.stderr


def test_a_coarse_level_reads_no_byte_past_its_end(nqread: Runner) -> None:  # noqa: F811
    path = VECTORS / "valid" / "levels_four.nq"
    res = nqread("info", path)
    ends = {
        int(w): int(e)
        for w, e in (x.split(":") for x in res.stdout.decode().split("\nlevels ")[1].split()[:4])
    }
    for width, end in ends.items():
        res = nqread("dump", path, "a", "--bits", str(width), "--stats")
        assert res.rc == EXIT_OK, res.stderr
        read_end = int(res.stderr.split("read_end=")[1].split()[0])
        assert read_end <= end


@pytest.mark.parametrize("vector", MANIFEST["levels_invalid"], ids=_id)
def test_invalid_levels_vector_fails_with_its_code(nqread: Runner, vector: dict) -> None:  # noqa: F811
    path = VECTORS / vector["file"]
    if vector["when"] == "open":
        res = nqread("info", path)
        assert (res.rc, res.code) == (EXIT_INVALID, vector["error"]), res.stderr
    elif vector["when"] == "read":
        res = nqread("dump", path, vector["tensor"], "--bits", str(vector["bits"]))
        assert (res.rc, res.code) == (EXIT_INVALID, vector["error"]), res.stderr
    else:
        assert nqread("info", path).rc == EXIT_OK
        res = nqread("check", path)
        assert (res.rc, res.code) == (EXIT_INVALID, vector["error"]), res.stderr


@pytest.mark.timeout(600)
def test_readers_agree_on_mutants_of_the_levels_vectors(
    tmp_path: pathlib.Path,
    c_reader_bins: dict[str, pathlib.Path],  # noqa: F811
) -> None:
    # the differential check of tests/test_differential.py, on the 1.1 vectors only (the
    # general run draws them rarely among all vectors)
    from _hostile import mutate
    from test_c_reader import _runner
    from test_differential import assert_agree

    run = _runner(c_reader_bins["asan"])
    sources = [p.read_bytes() for p in sorted(VECTORS.glob("*/level*.nq"))]
    assert len(sources) == len(MANIFEST["levels_valid"]) + len(MANIFEST["levels_invalid"])
    rng = np.random.default_rng(17)
    path = tmp_path / "mutant.nq"
    for i in range(300):
        path.write_bytes(mutate(sources[int(rng.integers(0, len(sources)))], rng))
        try:
            assert_agree(path, run("check", path))
        except AssertionError as exc:
            keep = tmp_path / f"disagree-{i}.nq"
            keep.write_bytes(path.read_bytes())
            raise AssertionError(f"mutant {i} (kept as {keep}): {exc}") from None
