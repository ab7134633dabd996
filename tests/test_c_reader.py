"""The C reader in examples/c-reader agrees with the spec vectors and the Python reader.

The C program is built twice from source into a temporary directory: once as shipped (-O2) and
once under AddressSanitizer + UBSan. Every behaviour test runs against both builds; a sanitizer
report in stderr fails the test even when the exit code looks right.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from _container_util import two_faults_in_one_read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nqformat
from nqformat import NQWriter
from nqformat.errors import NQFormatError

ROOT = pathlib.Path(__file__).resolve().parents[1]
C_READER_DIR = ROOT / "examples" / "c-reader"
VECTORS_DIR = ROOT / "spec" / "vectors"

#: exit codes documented in examples/c-reader/README.md
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNSUPPORTED = 4

BUILDS = ("release", "asan")
BINARY_NAMES = {"release": "nqread", "asan": "nqread-asan"}
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehavior")
ERROR_CODE_RE = re.compile(r"\[([a-z_]+)\]")


@dataclass(frozen=True)
class Result:
    """One run of nqread."""

    rc: int
    stdout: bytes
    stderr: str

    @property
    def code(self) -> str | None:
        """The spec §11 code named in the error message, if any."""
        m = ERROR_CODE_RE.search(self.stderr)
        return m.group(1) if m else None


Runner = Callable[..., Result]


@pytest.fixture(scope="session")
def c_reader_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Both builds, made with the documented `make` targets (plain `cc` if make is absent)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: `cc` is not on PATH, so examples/c-reader cannot be built")
    out = tmp_path_factory.mktemp("c-reader")
    make = shutil.which("make")
    for target in ("all", "asan"):
        if make:
            cmd = [make, "-s", "-C", str(C_READER_DIR), f"OUT={out}", target]
        else:  # the Makefile's own flags, for a machine with a compiler but no make
            flags = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
            extra = (
                ["-O2"]
                if target == "all"
                else ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
            )
            name = BINARY_NAMES["release" if target == "all" else "asan"]
            cmd = ["cc", *flags, *extra, "-o", str(out / name), str(C_READER_DIR / "nqread.c")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"build failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    return {build: out / name for build, name in BINARY_NAMES.items()}


def _runner(binary: pathlib.Path) -> Runner:
    def run(*args: str | os.PathLike[str]) -> Result:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
        proc = subprocess.run(
            [str(binary), *map(str, args)], capture_output=True, env=env, check=False, timeout=120
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        found = [m for m in SANITIZER_MARKERS if m in stderr]
        assert not found, f"sanitizer report from {binary.name} {args}:\n{stderr}"
        return Result(proc.returncode, proc.stdout, stderr)

    return run


@pytest.fixture(params=BUILDS)
def nqread(request: pytest.FixtureRequest, c_reader_bins: dict[str, pathlib.Path]) -> Runner:
    """Runs one build of nqread; fails on any sanitizer report."""
    return _runner(c_reader_bins[request.param])


# ------------------------------------------------------------------------------------------------
# Comparing the C reader with the Python reader
# ------------------------------------------------------------------------------------------------


def python_error_code(path: pathlib.Path) -> str | None:
    """First §11 code the Python reader raises while opening and reading everything, or None."""
    try:
        with nqformat.open(path) as f:
            for name in f.names():
                for mode in ("part", "full"):
                    f.read(name, mode)
    except NQFormatError as exc:
        return exc.code
    return None


def assert_dumps_match_python(nqread: Runner, path: pathlib.Path) -> int:
    """Every tensor: C values (both modes) and codes equal the Python reader's bit for bit."""
    checked = 0
    with nqformat.open(path) as f:
        for info in f.tensors():
            name = info.name
            for mode in ("part", "full"):
                res = nqread("dump", path, name, "--mode", mode)
                assert res.rc == EXIT_OK, res.stderr
                expected = np.ascontiguousarray(f.read(name, mode))
                assert res.stdout == expected.astype(expected.dtype.newbyteorder("<")).tobytes(), (
                    f"{name} {mode}"
                )
                checked += 1
            if info.kind.name != "NESTED":
                continue
            for args, part in (
                (("--mode", "part"), "high"),
                (("--mode", "full"), "full"),
                (("--low",), "low"),
            ):
                res = nqread("dump", path, name, "--codes", *args)
                assert res.rc == EXIT_OK, res.stderr
                got = np.frombuffer(res.stdout, "<i4")
                np.testing.assert_array_equal(got, f.codes(name, part).ravel().astype(np.int32))
    return checked


# ------------------------------------------------------------------------------------------------
# Files written by the Python writer
# ------------------------------------------------------------------------------------------------


def _nested(rng: np.random.Generator, shape: tuple[int, ...], n: int, h: int) -> dict:
    """Random H, L whose recomposition q = H*2^l + L stays inside the n-bit range."""
    l = n - h  # noqa: E741
    q = rng.integers(-(1 << (n - 1)), 1 << (n - 1), size=shape)
    high = np.clip(np.floor_divide(q + (1 << l) // 2, 1 << l), -(1 << (h - 1)), (1 << (h - 1)) - 1)
    low = q - high * (1 << l)
    c = shape[0]
    params = rng.standard_normal((4, c)).astype(np.float32)
    return {
        "w_high": high.astype(np.int8),
        "w_low": low.astype(np.int8),
        "scale_full": np.abs(params[0]) / 64,
        "offset_full": params[1],
        "scale_part": np.abs(params[2]) / 8,
        "offset_part": params[3],
    }


def write_model(path: pathlib.Path, n: int, h: int, seed: int, *, compress: bool = False) -> None:
    """A small model with NESTED and RAW tensors of several dtypes and awkward shapes."""
    rng = np.random.default_rng(seed)
    with NQWriter(path, n=n, h=h, metadata={"source": "test_c_reader"}, compress=compress) as w:
        w.add_nested("conv.weight", **_nested(rng, (6, 3, 3, 3), n, h))
        w.add_raw("conv.bias", rng.standard_normal(6).astype(np.float32))
        w.add_nested("fc.weight", **_nested(rng, (10, 37), n, h))
        w.add_nested("empty.weight", **_nested(rng, (4, 0), n, h))
        w.add_raw("bn.num_batches_tracked", np.array(7, dtype=np.int64))
        w.add_raw("half", rng.standard_normal((3, 5)).astype(np.float16))
        w.add_raw("zeros", np.zeros((4096,), np.float32))  # compressible
        w.add_raw("mask", np.array([True, False, True]))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("model") / "model.nq"
    write_model(path, 8, 6, seed=0)
    return path


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # nqread is stateless
)
@given(data=st.data())
def test_dumps_of_python_written_files_equal_python_reader(nqread: Runner, data) -> None:
    n = data.draw(st.integers(2, 8), label="n")
    h = data.draw(st.integers(1, n - 1), label="h")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "m.nq"
        write_model(path, n, h, seed)
        assert assert_dumps_match_python(nqread, path) == 16


def test_info_lists_sections_and_tensors_like_python_reader(
    nqread: Runner, model_file: pathlib.Path
) -> None:
    res = nqread("info", model_file)
    assert res.rc == EXIT_OK, res.stderr
    lines = res.stdout.decode().splitlines()
    fields = dict(
        line.split(" ", 1) for line in lines if not line.startswith(("section ", "tensor "))
    )
    with nqformat.open(model_file) as f:
        assert (int(fields["n"]), int(fields["h"]), int(fields["l"])) == (f.n, f.h, f.l)
        assert int(fields["part_end"]) == f.part_end and int(fields["full_end"]) == f.full_end
        assert int(fields["tensor_count"]) == len(f.names())
        sections = [line.split()[1:] for line in lines if line.startswith("section ")]
        assert sections == [
            [s.name, f"offset={s.offset}", f"length={s.length}", f"crc=0x{s.crc:08x}"]
            for s in f.sections()
        ]
        tensors = [line.split(" ", 4)[1:] for line in lines if line.startswith("tensor ")]
        assert tensors == [
            [t.kind.name, t.dtype.name, "[" + ",".join(map(str, t.shape)) + "]", t.name]
            for t in f.tensors()
        ]


def test_check_accepts_a_valid_file(nqread: Runner, model_file: pathlib.Path) -> None:
    res = nqread("check", model_file)
    assert (res.rc, res.stdout) == (EXIT_OK, b"ok\n"), res.stderr


def test_part_mode_never_reads_at_or_past_part_end(
    nqread: Runner, model_file: pathlib.Path
) -> None:
    with nqformat.open(model_file) as f:
        part_end = f.part_end
    res = nqread("dump", model_file, "fc.weight", "--mode", "part", "--stats")
    assert res.rc == EXIT_OK, res.stderr
    read_end = int(re.search(r"read_end=(\d+)", res.stderr).group(1))
    assert 0 < read_end <= part_end
    res = nqread("dump", model_file, "fc.weight", "--mode", "full", "--stats")
    assert int(re.search(r"read_end=(\d+)", res.stderr).group(1)) > part_end


@pytest.fixture(scope="module")
def part_only_file(model_file: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    """The canonical part-bit-only file: the first part_end bytes (spec §9)."""
    with nqformat.open(model_file) as f:
        part_end = f.part_end
    path = tmp_path_factory.mktemp("part") / "part.nq"
    path.write_bytes(model_file.read_bytes()[:part_end])
    return path


def test_part_only_file_serves_part_mode_like_the_full_file(
    nqread: Runner, model_file: pathlib.Path, part_only_file: pathlib.Path
) -> None:
    for name in ("conv.weight", "fc.weight", "conv.bias"):
        full = nqread("dump", model_file, name, "--mode", "part")
        part = nqread("dump", part_only_file, name, "--mode", "part")
        assert (part.rc, part.stdout) == (EXIT_OK, full.stdout), part.stderr
    info = nqread("info", part_only_file)
    assert b"part_only 1\n" in info.stdout


@pytest.mark.parametrize("args", [("--mode", "full"), ("--codes", "--low")])
def test_full_bit_data_of_part_only_file_is_a_part_only_error(
    nqread: Runner, part_only_file: pathlib.Path, args: tuple[str, ...]
) -> None:
    res = nqread("dump", part_only_file, "fc.weight", *args)
    assert (res.rc, res.code, res.stdout) == (EXIT_UNSUPPORTED, "part_only", b"")
    with nqformat.open(part_only_file) as f, pytest.raises(NQFormatError) as exc:
        f.read("fc.weight", "full")
    assert exc.value.code == "part_only"


def test_zstd_blob_is_reported_unsupported_but_the_header_is_read(
    nqread: Runner, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "z.nq"
    write_model(path, 8, 6, seed=1, compress=True)
    with nqformat.open(path) as f:
        compressed = [t.name for t in f.tensors() if t.data.codec != 0]
    assert "zeros" in compressed
    assert nqread("info", path).rc == EXIT_OK
    res = nqread("dump", path, "zeros", "--mode", "part")
    assert (res.rc, res.code, res.stdout) == (EXIT_UNSUPPORTED, "unsupported_feature", b"")
    assert "zstandard" in res.stderr
    assert nqread("check", path).rc == EXIT_UNSUPPORTED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dump", "{f}", "no.such.tensor"), "no tensor named"),
        (("dump", "{f}", "conv.weight", "--mode", "half"), "--mode must be"),
        (("dump", "{f}", "conv.bias", "--codes"), "RAW tensor"),
        (("dump", "{f}", "conv.weight", "--low"), "--low needs --codes"),
        (("frobnicate", "{f}"), "unknown command"),
        (("info",), "missing FILE"),
    ],
)
def test_bad_command_lines_exit_with_usage_code(
    nqread: Runner, model_file: pathlib.Path, args: tuple[str, ...], message: str
) -> None:
    res = nqread(*(a.format(f=model_file) for a in args))
    assert res.rc == EXIT_USAGE and message in res.stderr and res.stdout == b""


# ------------------------------------------------------------------------------------------------
# Corrupted files: the C reader reports the same §11 code as the Python reader
# ------------------------------------------------------------------------------------------------


def _flip(offset: Callable[[nqformat.NQFile], int]) -> Callable[[bytes, nqformat.NQFile], bytes]:
    def mutate(data: bytes, f: nqformat.NQFile) -> bytes:
        b = bytearray(data)
        b[offset(f)] ^= 0x01
        return bytes(b)

    return mutate


MUTATIONS: dict[str, Callable[[bytes, nqformat.NQFile], bytes]] = {
    "shorter_than_preamble": lambda d, f: d[:255],
    "magic_byte": _flip(lambda f: 3),
    "version_major": _flip(lambda f: 8),
    "preamble_reserved_byte": _flip(lambda f: 210),
    "cut_inside_high": lambda d, f: d[: f.part_end - 1],
    "byte_appended": lambda d, f: d + b"\0",
    "index_byte": _flip(lambda f: 256 + 20),
    "names_byte": _flip(lambda f: f.sections()[1].offset),
    "meta_byte": _flip(lambda f: f.sections()[2].offset + 1),
    "data_blob_byte": _flip(lambda f: f.info("fc.weight").data.offset),
    "high_blob_byte": _flip(lambda f: f.info("fc.weight").high.offset + 3),
    "low_blob_byte": _flip(lambda f: f.info("conv.weight").low.offset),
}


PREAMBLE_CRC_AT = 252  # spec §3.1
SECTION_TABLE_AT = 64  # spec §3.2
RECORD_SIZE = 160  # spec §4
INDEX_AT = 256


def _refresh_crcs(b: bytearray) -> None:
    """Recomputes the INDEX/NAMES/META CRCs and the preamble CRC (spec §3.1, §3.2)."""
    for k in range(3):
        entry = SECTION_TABLE_AT + 24 * k
        offset, length = struct.unpack_from("<QQ", b, entry)
        struct.pack_into("<I", b, entry + 16, zlib.crc32(b[offset : offset + length]))
    struct.pack_into("<I", b, PREAMBLE_CRC_AT, zlib.crc32(b[:PREAMBLE_CRC_AT]))


def _forge(fmt: str, at: Callable[[nqformat.NQFile], int], value: Callable[[int], int]):
    """Sets one header field, then fixes every header CRC so a deeper check must catch it."""

    def mutate(data: bytes, f: nqformat.NQFile) -> bytes:
        b = bytearray(data)
        offset = at(f)
        (old,) = struct.unpack_from(fmt, b, offset)
        struct.pack_into(fmt, b, offset, value(old))
        _refresh_crcs(b)
        return bytes(b)

    return mutate


def _record(name: str, field: int) -> Callable[[nqformat.NQFile], int]:
    return lambda f: INDEX_AT + RECORD_SIZE * f.names().index(name) + field


def _rename(data: bytes, f: nqformat.NQFile) -> bytes:
    """Gives fc.weight the name conv.bias (same length): a duplicate name."""
    b = bytearray(data)
    names = f.sections()[1].offset
    start = names + sum(len(n.encode()) for n in f.names()[: f.names().index("fc.weight")])
    b[start : start + len("conv.bias")] = b"conv.bias"
    _refresh_crcs(b)
    return bytes(b)


FORGED: dict[str, Callable[[bytes, nqformat.NQFile], bytes]] = {
    "n_over_8": _forge("<B", lambda f: 32, lambda v: 9),
    "h_equal_to_n": _forge("<B", lambda f: 33, lambda v: 8),
    "unknown_incompat_bit": _forge("<Q", lambda f: 16, lambda v: v | 4),
    "tensor_count_over_limit": _forge("<I", lambda f: 12, lambda v: 2**20 + 1),
    "meta_length_over_limit": _forge("<Q", lambda f: SECTION_TABLE_AT + 48 + 8, lambda v: 17 << 20),
    "data_offset_not_canonical": _forge("<Q", lambda f: SECTION_TABLE_AT + 72, lambda v: v + 4096),
    "kind_2": _forge("<B", _record("conv.weight", 12), lambda v: 2),
    "dtype_11": _forge("<B", _record("conv.bias", 13), lambda v: 11),
    "ndim_9": _forge("<B", _record("fc.weight", 14), lambda v: 9),
    "unknown_codec": _forge("<B", _record("conv.bias", 80 + 20), lambda v: 9),
    "numel_over_2_48": _forge("<Q", _record("conv.weight", 16), lambda v: 2**47),
    "name_offset_moved": _forge("<Q", _record("conv.bias", 0), lambda v: v + 1),
    "name_not_utf8": _forge("<B", lambda f: f.sections()[1].offset, lambda v: 0xFF),
    "duplicate_name": _rename,
    "blob_offset_moved": _forge("<Q", _record("conv.bias", 80), lambda v: v + 64),
    "blob_length_short": _forge("<Q", _record("conv.bias", 88), lambda v: v - 4),
    "unused_dim_not_zero": _forge("<Q", _record("conv.bias", 16 + 8 * 3), lambda v: 5),
    "zstd_flag_without_zstd_blob": _forge("<Q", lambda f: 16, lambda v: v | 1),
    "empty_name": _forge("<I", _record("conv.weight", 8), lambda v: 0),
    "name_offset_huge": _forge("<Q", _record("conv.bias", 0), lambda v: 2**64 - 1),
    "blob_offset_over_2_63": _forge("<Q", _record("conv.bias", 80), lambda v: 2**63),
    "blob_length_huge": _forge("<Q", _record("conv.bias", 88), lambda v: 2**64 - 1),
    "meta_not_an_object": _forge("<B", lambda f: f.sections()[2].offset, lambda v: ord("[")),
}


@pytest.mark.parametrize("mutation", sorted(FORGED))
def test_forged_header_gives_the_python_readers_error_code(
    nqread: Runner, model_file: pathlib.Path, tmp_path: pathlib.Path, mutation: str
) -> None:
    with nqformat.open(model_file) as f:
        data = FORGED[mutation](model_file.read_bytes(), f)
    path = tmp_path / "forged.nq"
    path.write_bytes(data)
    expected = python_error_code(path)
    assert expected not in (None, "checksum")  # the forgery must get past the CRCs
    for command in ("info", "check"):
        res = nqread(command, path)
        assert (res.rc, res.code) == (EXIT_INVALID, expected), res.stderr


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_corrupted_file_gives_the_python_readers_error_code(
    nqread: Runner, model_file: pathlib.Path, tmp_path: pathlib.Path, mutation: str
) -> None:
    with nqformat.open(model_file) as f:
        data = MUTATIONS[mutation](model_file.read_bytes(), f)
    path = tmp_path / "bad.nq"
    path.write_bytes(data)
    expected = python_error_code(path)
    assert expected is not None
    res = nqread("check", path)
    assert (res.rc, res.code) == (EXIT_INVALID, expected), res.stderr
    assert res.stderr.startswith(f"nqread: invalid file [{expected}]: ")


def python_open_code(path: pathlib.Path) -> str | None:
    """The §11 code the Python reader raises on open (steps 1-12), or None."""
    try:
        with nqformat.open(path):
            return None
    except NQFormatError as exc:
        return exc.code


def test_random_corruptions_open_like_python_and_never_crash(
    nqread: Runner, model_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    rng = np.random.default_rng(7)
    original = model_file.read_bytes()
    header_end = 4096  # the model's header fits in the first page; most damage goes there
    path = tmp_path / "fuzz.nq"
    codes = set()
    for i in range(60):
        b = bytearray(original)
        if i % 10 == 9:
            b = b[: int(rng.integers(0, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                at = int(rng.integers(0, header_end if rng.random() < 0.8 else len(b)))
                b[at] = int(rng.integers(0, 256))
            if rng.random() < 0.5:
                _refresh_crcs(b)  # get past the CRCs to the structural checks
        path.write_bytes(bytes(b))
        expected = python_open_code(path)
        res = nqread("info", path)
        assert (res.rc, res.code) == (
            (EXIT_OK, None) if expected is None else (EXIT_INVALID, expected)
        ), f"mutation {i}: {res.stderr}"
        assert nqread("check", path).rc in (EXIT_OK, EXIT_INVALID)
        codes.add(expected)
    assert len(codes) >= 4  # the corruptions reach several different checks


# ------------------------------------------------------------------------------------------------
# Conformance vectors (spec/vectors/manifest.json)
# ------------------------------------------------------------------------------------------------


def _manifest() -> dict:
    path = VECTORS_DIR / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


MANIFEST = _manifest()

#: NESTED expectations of the manifest -> nqread arguments and the blobs that request reads
NESTED_REQUESTS = {
    "part_f32": (("--mode", "part"), ("data", "high")),
    "full_f32": (("--mode", "full"), ("data", "high", "low")),
    "high": (("--codes", "--mode", "part"), ("high",)),
    "full": (("--codes", "--mode", "full"), ("high", "low")),
    "low": (("--codes", "--low"), ("low",)),
}


def _vector_id(entry: dict) -> str:
    return pathlib.Path(entry["file"]).stem


def _compressed(f: nqformat.NQFile, name: str, blobs: tuple[str, ...]) -> bool:
    info = f.info(name)
    return any(getattr(info, blob).codec != 0 for blob in blobs)


def test_vectors_are_present() -> None:
    assert MANIFEST.get("format_version") == "1.0"
    assert MANIFEST["valid"] and MANIFEST["invalid"]


@pytest.mark.parametrize("vector", MANIFEST.get("valid", []), ids=_vector_id)
def test_valid_vector_decodes_to_the_expected_arrays(nqread: Runner, vector: dict) -> None:
    path = VECTORS_DIR / vector["file"]
    res = nqread("info", path)
    assert res.rc == EXIT_OK, res.stderr
    lines = res.stdout.decode().splitlines()
    assert f"n {vector['n']}" in lines and f"h {vector['h']}" in lines
    assert f"part_only {int(vector['part_only'])}" in lines
    assert [line.split(" ", 4)[1:] for line in lines if line.startswith("tensor ")] == [
        [t["kind"], t["dtype"], "[" + ",".join(map(str, t["shape"])) + "]", t["name"]]
        for t in vector["tensors"]
    ]
    with nqformat.open(path) as f:
        for tensor in vector["tensors"]:
            name, expected = tensor["name"], tensor["expected"]
            if tensor["kind"] == "RAW":
                raw = np.load(VECTORS_DIR / expected["raw"], allow_pickle=False)
                for mode in ("part", "full"):
                    res = nqread("dump", path, name, "--mode", mode)
                    if _compressed(f, name, ("data",)):
                        assert (res.rc, res.code) == (EXIT_UNSUPPORTED, "unsupported_feature")
                        continue
                    assert res.rc == EXIT_OK, res.stderr
                    assert res.stdout == raw.tobytes() == f.read(name, mode).tobytes()
                continue
            for key, (args, blobs) in NESTED_REQUESTS.items():
                res = nqread("dump", path, name, *args)
                if vector["part_only"] and "low" in blobs:
                    assert key not in expected
                    assert (res.rc, res.code, res.stdout) == (EXIT_UNSUPPORTED, "part_only", b"")
                    continue
                if _compressed(f, name, blobs):
                    assert (res.rc, res.code) == (EXIT_UNSUPPORTED, "unsupported_feature")
                    continue
                assert res.rc == EXIT_OK, f"{name} {key}: {res.stderr}"
                want = np.load(VECTORS_DIR / expected[key], allow_pickle=False)
                if key.endswith("_f32"):
                    python = f.read(name, key.removesuffix("_f32"))
                    assert res.stdout == want.astype("<f4").tobytes() == python.tobytes(), key
                else:
                    got = np.frombuffer(res.stdout, "<i4").reshape(want.shape)
                    np.testing.assert_array_equal(got, want, err_msg=f"{name} {key}")


@pytest.mark.parametrize("vector", MANIFEST.get("invalid", []), ids=_vector_id)
def test_invalid_vector_is_rejected_with_its_error_code(nqread: Runner, vector: dict) -> None:
    path = VECTORS_DIR / vector["file"]
    error, when = vector["error"], vector["when"]
    if when == "open":
        for args in (("info", path), ("check", path), ("dump", path, "any.name")):
            res = nqread(*args)
            assert (res.rc, res.code, res.stdout) == (EXIT_INVALID, error, b""), res.stderr
        return
    assert nqread("info", path).rc == EXIT_OK
    if when == "read":
        with nqformat.open(path) as f:
            blobs = ("data", "high", "low") if vector["mode"] == "full" else ("data", "high")
            info = f.info(vector["tensor"])
            compressed = info.kind.name == "NESTED" and _compressed(f, info.name, blobs)
            compressed = compressed or info.data.codec != 0
        res = nqread("dump", path, vector["tensor"], "--mode", vector["mode"])
        if error == "part_only":  # not a corrupt file: nqread's exit code for unavailable data
            assert (res.rc, res.code, res.stdout) == (EXIT_UNSUPPORTED, error, b""), res.stderr
        elif res.rc == EXIT_UNSUPPORTED:
            # nqread checks zstd frame headers but cannot decompress: damage inside a frame
            # body is the one read error it reports as "unsupported" instead of `layout`
            assert compressed and error == "layout", res.stderr
            assert res.code == "unsupported_feature" and "does not decompress" in res.stderr
        else:
            assert (res.rc, res.code, res.stdout) == (EXIT_INVALID, error, b""), res.stderr
        return
    assert when == "verify", when
    with nqformat.open(path) as f:
        names = f.names()
    for name in names:  # reading succeeds; only the full check finds the problem
        for mode in ("part", "full"):
            assert nqread("dump", path, name, "--mode", mode).rc == EXIT_OK
    res = nqread("check", path)
    assert (res.rc, res.code) == (EXIT_INVALID, error), res.stderr


def test_window_over_the_bound_is_layout_from_the_frame_header(nqread: Runner) -> None:
    # §8: checked from the header, so this reader (no zstd) rejects it rather than "unsupported"
    path = VECTORS_DIR / "invalid" / "zstd_window_over_2_27.nq"
    res = nqread("dump", path, "zeros", "--mode", "part")
    assert (res.rc, res.code, res.stdout) == (EXIT_INVALID, "layout", b""), res.stderr
    assert "window" in res.stderr


def test_blobs_of_one_read_are_checked_data_then_high_then_low(
    nqread: Runner, tmp_path: pathlib.Path
) -> None:
    path = two_faults_in_one_read(tmp_path)  # HIGH frame damaged, LOW.crc wrong
    res = nqread("dump", path, "w", "--mode", "full")
    assert (res.rc, res.code) == (EXIT_INVALID, "layout"), res.stderr


def test_non_finite_parameters_are_rejected_by_dump_and_check(nqread: Runner) -> None:
    for name in ("param_nan", "param_inf"):
        path = VECTORS_DIR / "invalid" / f"{name}.nq"
        for args in (("dump", path, "w", "--mode", "full"), ("check", path)):
            res = nqread(*args)
            assert (res.rc, res.code) == (EXIT_INVALID, "invalid_header"), res.stderr
        assert nqread("dump", path, "w", "--codes").rc == EXIT_OK  # codes need no parameters
        assert nqread("dump", path, "b").rc == EXIT_OK


def test_check_ignores_the_bytes_after_part_end_of_a_part_only_file(nqread: Runner) -> None:
    res = nqread("check", VECTORS_DIR / "valid" / "part_only_nonzero_tail.nq")
    assert (res.rc, res.stdout) == (EXIT_OK, b"ok (part-bit-only file: LOW not checked)\n")


# ------------------------------------------------------------------------------------------------
# A real network layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_init_resnet18_dumps_equal_python_reader(
    c_reader_bins: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    from click.testing import CliRunner

    from nqformat.cli import main as nqtool

    path = tmp_path / "resnet18.nq"
    args = ["convert", "resnet18", "--n", "8", "--h", "6", "--random-init", "-o", str(path)]
    result = CliRunner().invoke(nqtool, args)
    assert result.exit_code == 0, result.output
    with nqformat.open(path) as f:
        count = len(f.names())
        nested = sum(t.kind.name == "NESTED" for t in f.tensors())
    assert nested == 21  # the 20 Conv2d and the Linear of resnet18
    for build in BUILDS:
        nqread = _runner(c_reader_bins[build])
        assert nqread("check", path).rc == EXIT_OK
        assert assert_dumps_match_python(nqread, path) == 2 * count
