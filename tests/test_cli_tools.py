"""nqtool inspect / verify / extract / eval, and the size arithmetic of nqformat.report.

Files are written with NQWriter directly (fast); eval runs on a converted random-init model,
which checks the mechanics (loading, switching, counting), not accuracy.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
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
    assert sizes["fp32"] == 4 * (sum(numel.values()) + sum(a.size for a in RAW.values()))
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

_BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _Block())\n"
    "from nqformat.cli import main\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    assert 'torch' not in sys.modules\n"
)


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


def _invalid_vectors() -> list[tuple[str, str]]:
    manifest = VECTORS / "manifest.json"
    if not manifest.exists():
        return []
    entries = json.loads(manifest.read_text())
    entries = entries.get("vectors", entries) if isinstance(entries, dict) else entries
    return [(e["file"], e["error"]) for e in entries if e.get("error")]


@pytest.mark.parametrize("vector", _invalid_vectors(), ids=lambda v: v[0])
def test_verify_rejects_every_invalid_conformance_vector(vector: tuple[str, str]) -> None:
    name, error = vector
    code, _, err = run("verify", VECTORS / name)
    if error == "part_only":
        pytest.fail("part_only vectors are valid files; the manifest should not list them here")
    assert code == EXIT_INVALID_FILE, err
    assert "Traceback" not in err
    assert f"[{error}]" in err or "FAIL" in err


def test_conformance_manifest_is_present() -> None:
    # The vectors are written once by the container engineer; this fails loudly if they vanish.
    assert (VECTORS / "manifest.json").exists(), "spec/vectors/manifest.json is missing"
    assert _invalid_vectors(), "the manifest lists no invalid vectors"
