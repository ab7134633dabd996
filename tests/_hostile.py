"""Hostile ``.nq`` files for tests and fuzzers (issue 11), and a bounded way to run a reader on
them.

:func:`forge` lays out a file from scratch, canonically (§3.2, §7.1) and with every CRC right,
from records whose fields the caller chooses freely: any dims, any blob bytes, any codec. That
reaches the checks a writer would never let a file get to (a compressed blob that claims 2^47
codes, a zstd frame made of RLE blocks, zero-size tensors with huge other dimensions).

:func:`run_bounded` runs one reader action in a fresh interpreter and reports its outcome, its
time and its peak memory above the interpreter's baseline: a crash (SIGBUS), a hang or a huge
allocation then fails one test instead of the test process.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from nqformat.container import spec
from nqformat.container.spec import (
    BlobRef,
    Codec,
    DType,
    Kind,
    Preamble,
    SectionEntry,
    TensorRecord,
)

__all__ = [
    "Blob",
    "Rec",
    "colliding_names",
    "exercise_reader",
    "fix_all_crcs",
    "forge",
    "mutate",
    "run_bounded",
    "zstd_rle_frame",
]

TESTS_DIR = pathlib.Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent


@dataclass(frozen=True)
class Blob:
    """Stored bytes of one blob and their codec."""

    data: bytes = b""
    codec: int = Codec.NONE


@dataclass(frozen=True)
class Rec:
    """One tensor as :func:`forge` writes it; nothing is checked."""

    name: bytes
    kind: int
    dtype: int
    dims: tuple[int, ...]
    data: Blob = Blob()
    high: Blob = field(default_factory=Blob)
    low: Blob = field(default_factory=Blob)


def forge(recs: list[Rec], *, n: int = 8, h: int = 6, meta: bytes = b"{}") -> bytes:
    """A complete file in canonical layout with correct CRCs; ZSTD flag set iff a blob has
    codec 1. RAW records get all-zero HIGH/LOW references."""
    names = b"".join(r.name for r in recs)
    index_len = spec.RECORD_SIZE * len(recs)
    header_end = spec.INDEX_OFFSET + index_len + len(names) + len(meta)
    sections: dict[str, bytearray] = {"data": bytearray(), "high": bytearray(), "low": bytearray()}
    refs: list[dict[str, tuple[int, int, int, int]]] = []
    for r in recs:
        used = ("data", "high", "low") if r.kind == Kind.NESTED else ("data",)
        rec_refs = {}
        for which in used:
            buf = sections[which]
            buf.extend(bytes(spec.align(len(buf), spec.BLOB_ALIGN) - len(buf)))
            blob: Blob = getattr(r, which)
            rec_refs[which] = (len(buf), len(blob.data), spec.crc32(blob.data), blob.codec)
            buf.extend(blob.data)
        refs.append(rec_refs)
    data_off = spec.align(header_end, spec.SECTION_ALIGN)
    high_off = spec.align(data_off + len(sections["data"]), spec.SECTION_ALIGN)
    low_off = spec.align(high_off + len(sections["high"]), spec.SECTION_ALIGN)
    base = {"data": data_off, "high": high_off, "low": low_off}
    records = []
    name_off = 0
    for r, rec_refs in zip(recs, refs, strict=True):
        blobs = {
            which: BlobRef(base[which] + off, length, crc, codec)
            for which, (off, length, crc, codec) in rec_refs.items()
        }
        dims = tuple(r.dims) + (0,) * (spec.MAX_DIMS - len(r.dims))
        records.append(
            TensorRecord(
                name_off,
                len(r.name),
                r.kind,
                r.dtype,
                len(r.dims),
                dims,
                blobs["data"],
                blobs.get("high", BlobRef()),
                blobs.get("low", BlobRef()),
            )
        )
        name_off += len(r.name)
    index = b"".join(rec.pack() for rec in records)
    any_zstd = any(b.codec == Codec.ZSTD for r in recs for b in (r.data, r.high, r.low))
    pre = Preamble(
        tensor_count=len(recs),
        n=n,
        h=h,
        part_end=high_off + len(sections["high"]),
        full_end=low_off + len(sections["low"]),
        sections=(
            SectionEntry(spec.INDEX_OFFSET, index_len, spec.crc32(index)),
            SectionEntry(spec.INDEX_OFFSET + index_len, len(names), spec.crc32(names)),
            SectionEntry(spec.INDEX_OFFSET + index_len + len(names), len(meta), spec.crc32(meta)),
            SectionEntry(data_off, len(sections["data"]), spec.crc32(sections["data"])),
            SectionEntry(high_off, len(sections["high"]), spec.crc32(sections["high"])),
            SectionEntry(low_off, len(sections["low"]), spec.crc32(sections["low"])),
        ),
        incompat_flags=1 if any_zstd else 0,
    )
    out = bytearray(pre.pack() + index + names + meta)
    for which in ("data", "high", "low"):
        out.extend(bytes(base[which] - len(out)))
        out.extend(sections[which])
    return bytes(out)


def zstd_rle_frame(content_size: int, byte: int = 0) -> bytes:
    """One zstd frame (RFC 8878) of ``content_size`` copies of ``byte``, made of RLE blocks of
    128 KiB: 4 bytes per block, the best ratio zstd allows (32768:1), built without
    compressing anything. Window 128 KiB, so any decoder accepts it."""
    block = 128 << 10
    # Frame_Header_Descriptor: FCS_flag 3 (8 bytes), no single segment, no checksum, no dict;
    # Window_Descriptor: exponent 7 -> windowLog 17 = 128 KiB
    head = struct.pack("<IBBQ", 0xFD2FB528, 0xC0, 7 << 3, content_size)

    def rle(size: int, last: int) -> bytes:  # Block_Type 1 = RLE_Block
        return (last | (1 << 1) | (size << 3)).to_bytes(3, "little") + bytes([byte])

    if content_size == 0:
        return head + (1).to_bytes(3, "little")  # one empty, last Raw_Block
    full, rest = divmod(content_size, block)
    if rest:
        return head + rle(block, 0) * full + rle(rest, 1)
    return head + rle(block, 0) * (full - 1) + rle(block, 1)


def fix_all_crcs(raw: bytes) -> bytes:
    """``raw`` with every CRC its own header describes recomputed, wherever the bytes they
    cover lie inside ``raw``: blob CRCs of the INDEX records, the six section CRCs, then the
    preamble CRC (the same as the C fuzz harness). Mutants then get past the checksums."""
    if len(raw) < spec.PREAMBLE_SIZE:
        return raw
    buf = bytearray(raw)
    size = len(buf)
    (count,) = struct.unpack_from("<I", buf, 12)
    count = min(count, (size - spec.PREAMBLE_SIZE) // spec.RECORD_SIZE)
    for k in range(count):
        rec = spec.PREAMBLE_SIZE + spec.RECORD_SIZE * k
        for ref in (rec + 80, rec + 104, rec + 128):
            off, length = struct.unpack_from("<QQ", buf, ref)
            if off <= size and length <= size - off:
                struct.pack_into("<I", buf, ref + 16, spec.crc32(buf[off : off + length]))
    for s in range(spec.SECTION_COUNT):
        entry = spec.SECTION_TABLE_OFFSET + spec.SECTION_ENTRY_SIZE * s
        off, length = struct.unpack_from("<QQ", buf, entry)
        if off <= size and length <= size - off:
            struct.pack_into("<I", buf, entry + 16, spec.crc32(buf[off : off + length]))
    crc = spec.crc32(buf[: spec.PREAMBLE_CRC_OFFSET])
    struct.pack_into("<I", buf, spec.PREAMBLE_CRC_OFFSET, crc)
    return bytes(buf)


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One random mutant of ``raw``: a few bit flips, byte sets, interesting integers written
    into the header, a cut or a duplicated range; CRCs fixed in half of them."""
    buf = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 6))
        if not buf:
            break
        # header bytes are where the structure is: aim there most of the time
        hot = min(len(buf), 4096)
        pos = int(rng.integers(0, hot if rng.random() < 0.8 else len(buf)))
        if op == 0:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            buf[pos] = int(rng.integers(0, 256))
        elif op == 2:
            value = int(rng.choice(_INTERESTING))
            width = int(rng.choice([1, 2, 4, 8]))
            chunk = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            buf[pos : pos + width] = chunk[: max(0, len(buf) - pos)]
        elif op == 3:
            del buf[int(rng.integers(0, len(buf) + 1)) :]
        elif op == 4:
            start = int(rng.integers(0, len(buf)))
            piece = buf[start : start + int(rng.integers(1, 64))]
            buf[pos:pos] = piece
        else:
            del buf[pos : pos + int(rng.integers(1, 64))]
    out = bytes(buf)
    return fix_all_crcs(out) if rng.random() < 0.5 else out


_INTERESTING = [
    0,
    1,
    2,
    7,
    8,
    64,
    127,
    128,
    255,
    256,
    4095,
    4096,
    1 << 16,
    1 << 20,
    1 << 31,
    (1 << 32) - 1,
    1 << 47,
    1 << 48,
    (1 << 48) + 1,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def colliding_names(count: int, bits: int = 18) -> list[bytes]:
    """``count`` distinct printable-ASCII names whose 64-bit FNV-1a hashes agree in their low
    ``bits`` bits: they all fall into one bucket of a power-of-two hash table of up to
    ``2^bits`` slots (what made the C reader's duplicate check quadratic). FNV's low bits depend
    only on low bits, and each step can be inverted, so suffixes are matched to prefixes by a
    table lookup instead of a search."""
    mask = (1 << bits) - 1
    prime_inv = pow(_FNV_PRIME, -1, 1 << bits)
    alphabet = np.arange(0x30, 0x7B, dtype=np.uint64)  # '0'..'z': 75 printable symbols
    # states after every 3-byte prefix
    a, b, c = np.meshgrid(alphabet, alphabet, alphabet, indexing="ij")
    prefixes = np.stack([a.ravel(), b.ravel(), c.ravel()], axis=1)
    state = np.full(len(prefixes), _FNV_OFFSET & mask, dtype=np.uint64)
    for k in range(3):
        state = ((state ^ prefixes[:, k]) * np.uint64(_FNV_PRIME)) & np.uint64(mask)
    by_state = np.full(1 << bits, -1, dtype=np.int64)
    by_state[state] = np.arange(len(prefixes))
    target = 0
    names: list[bytes] = []
    for s0 in alphabet:
        for s1 in alphabet:
            # state needed before suffix (s0, s1, s2) so that the final state is `target`
            need = np.full(len(alphabet), target, dtype=np.uint64)
            for byte in (alphabet, np.full(len(alphabet), s1), np.full(len(alphabet), s0)):
                need = ((need * np.uint64(prime_inv)) & np.uint64(mask)) ^ byte.astype(np.uint64)
            hit = by_state[need]
            for s2, p in zip(alphabet[hit >= 0], hit[hit >= 0], strict=True):
                names.append(bytes([*prefixes[p].tolist(), int(s0), int(s1), int(s2)]))
                if len(names) == count:
                    return names
    raise ValueError(f"only {len(names)} colliding names of 6 bytes")


def fnv1a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


# --- running a reader action in a bounded child process ------------------------------------------

_CHILD = r"""
import json, os, sys, time
sys.path[:0] = [{tests!r}]
import nqformat, _hostile
from nqformat.errors import NQFormatError

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM: the peak measured is this action's, not the parent's or imports'
base = status("VmRSS")
t0 = time.perf_counter()
try:
    outcome = _hostile.ACTIONS[{action!r}]({path!r}, **{kwargs!r})
except NQFormatError as exc:
    outcome = "error:" + exc.code
seconds = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({{"outcome": outcome, "seconds": seconds, "extra_bytes": max(0, peak - base)}}))
"""


@dataclass(frozen=True)
class Bounded:
    """What one bounded run did: ``"ok"``, ``"error:<code>"``, or ``"signal:<n>"``/``"exit:<n>"``
    (a crash), with its time and peak memory above the child's baseline."""

    outcome: str
    seconds: float
    extra_bytes: int
    stderr: str


def run_bounded(
    action: str, path: os.PathLike[str] | str, *, timeout: float = 60, **kwargs: object
) -> Bounded:
    """Run ``ACTIONS[action](path, **kwargs)`` in a fresh interpreter (with this checkout
    first on the path), killed after ``timeout`` seconds."""
    code = _CHILD.format(tests=str(TESTS_DIR), action=action, path=str(path), kwargs=kwargs)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Bounded("timeout", float(timeout), 0, "")
    if proc.returncode != 0:
        what = f"signal:{-proc.returncode}" if proc.returncode < 0 else f"exit:{proc.returncode}"
        return Bounded(what, float("nan"), 0, proc.stderr)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Bounded(data["outcome"], data["seconds"], data["extra_bytes"], proc.stderr)


# Actions a child may run. Each returns "ok" (or raises the format's error).


def _read_everything(path: str, max_bytes: int | None = None) -> str:
    """Open, read every tensor in every mode available, its codes, then verify()."""
    import nqformat

    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    with nqformat.open(path, **kwargs) as f:
        modes = ("part",) if f.part_only else ("part", "full")
        for info in f.tensors():
            for mode in modes:
                f.read(info.name, mode)
            if info.kind is Kind.NESTED:
                for part in ("high",) if f.part_only else ("high", "low", "full"):
                    f.codes(info.name, part)
        problems = f.verify()
    return "ok" if not problems else "problems:" + "; ".join(problems)[:300]


def _verify_only(path: str) -> str:
    import nqformat

    with nqformat.open(path) as f:
        problems = f.verify()
    return "ok" if not problems else "problems:" + "; ".join(problems)[:300]


def _open_only(path: str) -> str:
    import nqformat

    with nqformat.open(path) as f:
        f.metadata  # noqa: B018 - parsed at open; touched to be sure
    return "ok"


def _truncate_while_open(path: str, keep: int) -> str:
    """Open, cut the file to ``keep`` bytes behind the reader's back, then read everything."""
    import nqformat

    with nqformat.open(path) as f:
        os.truncate(path, keep)
        for info in f.tensors():
            f.read(info.name, "part")
            f.read(info.name, "full")
    return "ok"


def exercise_reader(path: os.PathLike[str] | str, max_bytes: int) -> None:
    """Open, read every tensor in every mode, its codes, verify: what the Python fuzzer does
    with each input. Only the format's own errors may come out; a blob's own fault is
    swallowed so that the other tensors are still read."""
    import nqformat
    from nqformat.errors import NQFormatError

    try:
        with nqformat.open(path, max_bytes=max_bytes) as f:
            modes = ("part",) if f.part_only else ("part", "full")
            for info in f.tensors():
                for mode in modes:
                    try:
                        f.read(info.name, mode)
                        if info.kind is Kind.NESTED:
                            f.codes(info.name, "high" if mode == "part" else "full")
                    except NQFormatError:
                        pass
            f.verify()
    except NQFormatError:
        pass


ACTIONS = {
    "read_everything": _read_everything,
    "verify": _verify_only,
    "open": _open_only,
    "truncate_while_open": _truncate_while_open,
}


def iter_vectors() -> Iterator[pathlib.Path]:
    """Every conformance vector file."""
    yield from sorted((ROOT / "spec" / "vectors").rglob("*.nq"))


# sanity of the module's own arithmetic, cheap enough to run at import
assert fnv1a(b"a") == 0xAF63DC4C8601EC8C
assert DType.U8 == 6


# --- the hostile classes of issue 11, as files --------------------------------------------------

#: the issue's bound on what one hostile file may cost a reader, above its baseline
EXTRA_MEMORY_LIMIT = 300 << 20
META_LIMIT = spec.MAX_META_LENGTH


def _zstd(data: bytes) -> Blob:
    import zstandard

    return Blob(zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data), 1)


def _nested_zeros(
    name: bytes,
    dims: tuple[int, ...],
    *,
    claim: tuple[int, ...] | None = None,
    n: int = 8,
    h: int = 6,
    compress: bool = True,
) -> Rec:
    """A NESTED tensor of all-zero codes and unit parameters; ``claim`` replaces the dims in
    the record (the blobs stay those of ``dims``)."""
    numel = int(np.prod(dims))
    params = np.concatenate(
        [
            np.ones(dims[0], "<f4"),
            np.zeros(dims[0], "<f4"),
            np.ones(dims[0], "<f4"),
            np.zeros(dims[0], "<f4"),
        ]
    ).tobytes()
    high = bytes(-(-numel * h // 8))
    low = bytes(-(-numel * (n - h + 1) // 8))
    wrap = _zstd if compress else Blob
    return Rec(name, Kind.NESTED, DType.F32, claim or dims, Blob(params), wrap(high), wrap(low))


def meta_file(meta: bytes) -> bytes:
    """A file with one small RAW tensor and ``meta`` as its META, verbatim."""
    rec = Rec(b"x", Kind.RAW, DType.F32, (2,), Blob(np.ones(2, "<f4").tobytes()))
    return forge([rec], meta=meta)


def _meta_escaped_quotes(size: int) -> bytes:
    # an unterminated string of escaped quotes: a backtracking string regex retries from every
    # quote, so it takes time quadratic in the length
    head = b'{"a":"'
    return head + b'\\"' * ((size - len(head)) // 2)


def _meta_long_string(size: int) -> bytes:
    return b'{"s":"' + b"x" * (size - 8) + b'"}'


def _meta_many_empty_objects(size: int) -> bytes:
    head, tail = b'{"a":[', b"{}]}"
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


def _meta_values(count: int) -> bytes:
    """A valid META of exactly ``count`` values and member names: {"a":[{},{},...]}."""
    return b'{"a":[' + b",".join([b"{}"] * (count - 3)) + b"]}"


def _bomb(size: int) -> bytes:
    """One RAW U8 tensor of ``size`` zero bytes stored as RLE blocks: a valid file of
    size / 32768 bytes."""
    return forge([Rec(b"bomb", Kind.RAW, DType.U8, (size,), Blob(zstd_rle_frame(size), 1))])


@dataclass(frozen=True)
class Scenario:
    """One hostile file, what to do with it, and the outcome the spec requires."""

    name: str
    build: object  # () -> bytes
    expect: str
    action: str = "read_everything"
    kwargs: dict = field(default_factory=dict)


SCENARIOS = [
    # META: a linear-time, bounded check
    Scenario(
        "meta_escaped_quotes_256k",
        lambda: meta_file(_meta_escaped_quotes(256 << 10)),
        "error:metadata",
        "open",
    ),
    Scenario(
        "meta_escaped_quotes_16m",
        lambda: meta_file(_meta_escaped_quotes(META_LIMIT)),
        "error:metadata",
        "open",
    ),
    Scenario(
        "meta_one_long_string_16m", lambda: meta_file(_meta_long_string(META_LIMIT)), "ok", "open"
    ),
    Scenario(
        "meta_empty_objects_16m",
        lambda: meta_file(_meta_many_empty_objects(META_LIMIT)),
        "error:metadata",
        "open",
    ),
    Scenario("meta_values_at_limit", lambda: meta_file(_meta_values(1 << 20)), "ok", "open"),
    Scenario(
        "meta_values_over_limit",
        lambda: meta_file(_meta_values((1 << 20) + 1)),
        "error:metadata",
        "open",
    ),
    Scenario(
        "meta_integer_5000_digits",
        lambda: meta_file(b'{"a":' + b"7" * 5000 + b"}"),
        "error:metadata",
        "open",
    ),
    Scenario("meta_integer_2_53", lambda: meta_file(b'{"a":-9007199254740992}'), "ok", "open"),
    Scenario(
        "meta_integer_over_2_53",
        lambda: meta_file(b'{"a":9007199254740993}'),
        "error:metadata",
        "open",
    ),
    Scenario("meta_1e999", lambda: meta_file(b'{"a":1e999}'), "error:metadata", "open"),
    Scenario(
        "meta_float_just_finite", lambda: meta_file(b'{"a":1.7976931348623158e308}'), "ok", "open"
    ),
    Scenario(
        "meta_float_rounds_to_inf",
        lambda: meta_file(b'{"a":1.7976931348623159e308}'),
        "error:metadata",
        "open",
    ),
    # declared sizes against the blob and the budget
    Scenario(
        "compressed_claims_2_47_codes",
        lambda: forge([_nested_zeros(b"w", (4, 64), claim=(4, 1 << 45))]),
        "error:layout",
    ),
    Scenario("compressed_raw_claims_2_40_bytes", lambda: _bomb(1 << 40), "error:limit"),
    Scenario(
        "decompression_bomb_1gib_within_budget",
        lambda: _bomb(1 << 30),
        "error:limit",
        kwargs={"max_bytes": 256 << 20},
    ),
    Scenario("decompression_bomb_small_ok", lambda: _bomb(1 << 20), "ok"),
    # zero-size tensors
    Scenario(
        "zero_size_raw_0_by_2_47",
        lambda: forge([Rec(b"z", Kind.RAW, DType.F64, (0, 1 << 47))]),
        "ok",
    ),
    Scenario(
        "zero_size_raw_2_47_by_0",
        lambda: forge([Rec(b"z", Kind.RAW, DType.F64, (1 << 47, 0, 2))]),
        "ok",
    ),
    Scenario(
        "zero_size_nested_0_by_2_47",
        lambda: forge([Rec(b"z", Kind.NESTED, DType.F32, (0, 1 << 47))]),
        "ok",
    ),
    Scenario(
        "zero_size_nested_1_by_0",
        lambda: forge([_nested_zeros(b"z", (1, 0), compress=False)]),
        "ok",
    ),
    Scenario(
        "zero_size_nonzero_product_over_2_48",
        lambda: forge([Rec(b"z", Kind.RAW, DType.U8, (1 << 40, 0, 1 << 40))]),
        "error:limit",
    ),
    Scenario(
        "zero_size_nested_huge_channels",
        lambda: forge([Rec(b"z", Kind.NESTED, DType.F32, (1 << 47, 0))]),
        "error:layout",
    ),
]
