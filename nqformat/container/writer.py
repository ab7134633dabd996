"""Streaming, deterministic, atomic writer of ``.nq`` files (spec ``spec/nq-v1.md``).

Design: each data section (DATA, HIGH, LOW) is appended blob by blob to an anonymous spool file
in the target's directory while its CRC is computed, so only one tensor's packed bytes are in
memory at a time. ``close()`` then knows every length, writes preamble + INDEX + NAMES + META to
a temporary file next to the target, copies the three spools in (in-kernel where the OS allows),
fsyncs and renames it over the target. An exception or a kill leaves no file at the target path:
the spools are unlinked files, and the only named temporary exists during ``close()``.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, Any

import numpy as np

from nqformat import bitpack
from nqformat._atomic import AtomicFile
from nqformat.container import spec
from nqformat.container.header import check_meta
from nqformat.container.spec import (
    BlobRef,
    Codec,
    DType,
    IncompatFlag,
    Kind,
    Preamble,
    Section,
    SectionEntry,
    TensorRecord,
)
from nqformat.errors import (
    DuplicateNameError,
    InvalidNameError,
    LimitError,
    MetadataError,
    NQError,
    QuantizationError,
)

__all__ = ["ZSTD_LEVEL", "NQWriter", "canonical_json"]

#: zstd level of compressed blobs; fixed so the same input gives the same bytes (§8).
ZSTD_LEVEL = 10
_COPY_CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """META bytes (§6): sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"metadata is not JSON-serializable: {exc}") from exc
    except RecursionError:
        raise MetadataError(
            f"metadata nests deeper than {spec.MAX_META_DEPTH} levels (§6)"
        ) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MetadataError(f"metadata is not valid UTF-8: {exc}") from exc


class _Spool:
    """One data section being written: an anonymous temp file plus its running CRC."""

    def __init__(self, directory: pathlib.Path) -> None:
        # an unlinked file: nothing is left behind even on SIGKILL
        self.file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
            dir=directory, prefix=".nq-spool-"
        )
        self.length = 0
        self.crc = 0

    def append(self, data: bytes | memoryview) -> tuple[int, int]:
        """Write one blob at the next 64-aligned position (§7.1); return (relative offset, crc)."""
        pad = spec.align(self.length, spec.BLOB_ALIGN) - self.length
        if pad:
            self._write(bytes(pad))
        offset = self.length
        self._write(data)
        return offset, spec.crc32(data)

    def _write(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.crc = spec.crc32(data, self.crc)
        self.length += len(data)

    def copy_into(self, out: IO[bytes]) -> None:
        self.file.flush()
        self.file.seek(0)
        out.flush()
        remaining = self.length
        src, dst = self.file.fileno(), out.fileno()
        if hasattr(os, "copy_file_range"):
            try:
                while remaining:
                    done = os.copy_file_range(src, dst, min(remaining, 1 << 30))
                    if done == 0:
                        break
                    remaining -= done
            except OSError:
                pass  # e.g. cross-device or unsupported: fall back to a plain copy
            out.seek(0, os.SEEK_END)
            self.file.seek(self.length - remaining)
        while remaining:
            chunk = self.file.read(min(remaining, _COPY_CHUNK))
            if not chunk:
                raise OSError("spool file shrank while copying")
            out.write(chunk)
            remaining -= len(chunk)

    def crc_continue(self, value: int) -> int:
        """The CRC-32 ``value`` continued over this spool's bytes (reads them back)."""
        self.file.flush()
        self.file.seek(0)
        while chunk := self.file.read(_COPY_CHUNK):
            value = spec.crc32(chunk, value)
        return value

    def close(self) -> None:
        self.file.close()


def _encode_name(name: str) -> bytes:
    if not isinstance(name, str):
        raise InvalidNameError(f"tensor name must be str, got {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidNameError(f"tensor name {name!r} is not valid UTF-8: {exc}") from exc
    if not 1 <= len(raw) <= spec.MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"tensor name must be 1..{spec.MAX_NAME_LENGTH} UTF-8 bytes, got {len(raw)}: "
            f"{name[:40]!r}"
        )
    return raw


def _as_le_bytes(array: np.ndarray, dtype: np.dtype) -> memoryview:
    arr = np.ascontiguousarray(array, dtype=dtype)
    return memoryview(arr.reshape(-1).view(np.uint8))


def _param(values: Any, channels: int, what: str, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (channels,):
        raise QuantizationError(
            f"{name}: {what} must have shape ({channels},), got {tuple(arr.shape)}"
        )
    arr = arr.astype("<f4")
    if not np.all(np.isfinite(arr)):
        raise QuantizationError(f"{name}: {what} has non-finite values")
    return arr


class NQWriter:
    """Write one ``.nq`` file. Use as a context manager or call ``close()``/``abort()``.

    Tensors are stored in the order they are added. ``n``/``h`` apply to every NESTED tensor.
    ``compress=True`` stores a blob zstd-compressed only where that makes it smaller (§8).
    ``widths`` with three or more levels (coarsest ``h`` to finest ``n``, any order) writes a
    version 1.1 file of several nested levels (§14): add its NESTED tensors with
    :meth:`add_levels`. Two widths (or none) write the 1.0 file, byte for byte as before.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n: int,
        h: int,
        metadata: Mapping[str, Any],
        compress: bool = False,
        widths: Sequence[int] = (),
        _hook: Callable[[str], None] | None = None,
    ) -> None:
        if not spec.bits_valid(n, h):
            raise QuantizationError(f"need {spec.BITS_RULE}, got n={n}, h={h}")
        levels = tuple(sorted(int(w) for w in widths))
        if levels and (
            levels[0] != h
            or levels[-1] != n
            or len(set(levels)) != len(levels)
            or len(levels) > spec.MAX_LEVELS
        ):
            raise QuantizationError(f"widths {tuple(widths)} must be distinct, from h={h} to n={n}")
        #: the level widths, coarsest first, of a LEVELS file (§14); () for a 1.0 file
        self.widths: tuple[int, ...] = levels if len(levels) >= spec.MIN_LEVELS else ()
        if not isinstance(metadata, Mapping):
            raise MetadataError(f"metadata must be a mapping, got {type(metadata).__name__}")
        self.path = pathlib.Path(path)
        self.n, self.h, self.l = n, h, n - h
        self.compress = compress
        self._metadata = dict(metadata)
        # Test hook, to prove atomicity under SIGKILL: called with the tensor name before each
        # blob is spooled, and with "<close>" once the temp file is complete, before the rename.
        self._hook = _hook
        self._records: list[TensorRecord] = []
        self._names: list[bytes] = []
        self._names_length = 0
        self._seen: set[bytes] = set()
        self._zstd: Any = None
        self._any_compressed = False
        self._closed = False
        directory = self.path.parent if str(self.path.parent) else pathlib.Path(".")
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: directory does not exist")
        self._dir = directory
        self._spools = {s: _Spool(directory) for s in (Section.DATA, Section.HIGH, Section.LOW)}
        #: residual levels 2 .. m-1 of a LEVELS file (level 1 is the LOW spool), §14.2
        self._level_spools = [_Spool(directory) for _ in self.widths[2:]]
        self._level_refs: list[tuple[BlobRef, ...]] = []  # per record, relative offsets

    # --- adding tensors -------------------------------------------------------------------------

    def add_raw(self, name: str, array: np.ndarray, *, dtype: str | DType | None = None) -> None:
        """Store ``array`` as it is (RAW, §7.4).

        ``dtype`` is inferred from the array; pass ``dtype="BF16"`` with a uint16 array of
        bfloat16 bit patterns (numpy has no bfloat16).
        """
        self._check_open()
        arr = np.asarray(array)
        if dtype is not None:
            code = self._dtype(dtype)
            if code is DType.BF16 and arr.dtype not in (np.uint16, np.int16):
                raise NQError(f"{name}: BF16 needs a uint16 array of bit patterns, got {arr.dtype}")
            if code is not DType.BF16 and np.dtype(code.np_dtype) != arr.dtype.newbyteorder("<"):
                arr = arr.astype(code.np_dtype)
        else:
            try:
                code = DType.from_numpy(arr.dtype)
            except KeyError:
                raise NQError(
                    f"{name}: dtype {arr.dtype} has no .nq dtype code (§4.1); cast it first"
                ) from None
        shape = self._check_shape(name, arr.shape, nested=False)
        raw_name = self._claim_name(name)
        data = _as_le_bytes(arr, code.np_dtype)
        data_ref = self._append(Section.DATA, name, data)
        self._add_record(raw_name, Kind.RAW, code, shape, data_ref, BlobRef(), BlobRef())

    def add_nested(
        self,
        name: str,
        *,
        w_high: np.ndarray,
        w_low: np.ndarray,
        scale_full: np.ndarray,
        offset_full: np.ndarray,
        scale_part: np.ndarray,
        offset_part: np.ndarray,
        dtype: str | DType = "F32",
        w_int: np.ndarray | None = None,
    ) -> None:
        """Store a NESTED tensor: H, L codes and the per-channel parameters (§7.2, §7.3).

        Checks H and L ranges and that ``q = H*2^l + L`` is an n-bit code; with ``w_int``
        also that the recomposition equals it exactly. Raises QuantizationError otherwise.
        """
        self._check_open()
        if self.widths:
            raise NQError(f"{name}: a file of several levels takes add_levels, not add_nested")
        code = self._dtype(dtype)
        if not code.is_float:
            raise QuantizationError(f"{name}: a NESTED tensor needs a float dtype, got {code.name}")
        high = np.asarray(w_high)
        low = np.asarray(w_low)
        if high.shape != low.shape:
            raise QuantizationError(
                f"{name}: w_high shape {high.shape} differs from w_low shape {low.shape}"
            )
        for what, arr in (("w_high", high), ("w_low", low)):
            if arr.dtype.kind not in "iu":
                raise QuantizationError(f"{name}: {what} must be integer, got {arr.dtype}")
        shape = self._check_shape(name, high.shape, nested=True)
        raw_name = self._claim_name(name)
        try:
            _check_range(name, "w_high", high, *spec.code_range(self.h))
            _check_range(name, "w_low", low, *spec.code_range(self.l + 1))
            q = high.astype(np.int32) * (1 << self.l) + low.astype(np.int32)
            _check_range(name, "w_high*2^l + w_low", q, *spec.code_range(self.n))
            if w_int is not None:
                wi = np.asarray(w_int)
                if wi.shape != high.shape or not np.array_equal(wi, q):
                    bad = int(np.count_nonzero(wi != q)) if wi.shape == q.shape else -1
                    raise QuantizationError(
                        f"{name}: w_high*2^{self.l} + w_low != w_int "
                        + (f"at {bad} elements" if bad >= 0 else f"(shape {wi.shape})")
                    )
            del q
            channels = shape[0]
            params = [
                _param(v, channels, what, name)
                for v, what in (
                    (scale_full, "scale_full"),
                    (offset_full, "offset_full"),
                    (scale_part, "scale_part"),
                    (offset_part, "offset_part"),
                )
            ]
        except BaseException:
            self._seen.discard(raw_name)
            raise
        data_ref = self._append(Section.DATA, name, memoryview(np.concatenate(params)).cast("B"))
        high_ref = self._append(Section.HIGH, name, bitpack.pack(high, self.h).data)
        low_ref = self._append(Section.LOW, name, bitpack.pack(low, self.l + 1).data)
        self._add_record(raw_name, Kind.NESTED, code, shape, data_ref, high_ref, low_ref)

    def add_levels(
        self,
        name: str,
        *,
        w_high: np.ndarray,
        residuals: Sequence[np.ndarray],
        scales: Sequence[np.ndarray],
        offsets: Sequence[np.ndarray],
        dtype: str | DType = "F32",
        w_int: np.ndarray | None = None,
    ) -> None:
        """Store a NESTED tensor of a LEVELS file (§14): the coarsest codes H, the residuals
        L_1 ... L_(m-1) and one (scale, offset) pair per level, coarsest first.

        Checks every code range and that every q_j = q_(j-1)*2^d_j + L_j is a w_j-bit code; with
        ``w_int`` also that the finest q_(m-1) equals it. Raises QuantizationError otherwise."""
        self._check_open()
        widths = self.widths
        if not widths:
            raise NQError(f"{name}: add_levels needs a writer created with three or more widths")
        m = len(widths)
        if len(residuals) != m - 1 or len(scales) != m or len(offsets) != m:
            raise QuantizationError(
                f"{name}: {m} levels need {m - 1} residuals and {m} scales and offsets"
            )
        code = self._dtype(dtype)
        if not code.is_float:
            raise QuantizationError(f"{name}: a NESTED tensor needs a float dtype, got {code.name}")
        high = np.asarray(w_high)
        lows = [np.asarray(r) for r in residuals]
        named = [("w_high", high), *((f"residual {j}", a) for j, a in enumerate(lows, start=1))]
        for what, arr in named:
            if arr.shape != high.shape:
                raise QuantizationError(f"{name}: {what} shape {arr.shape} != {high.shape}")
            if arr.dtype.kind not in "iu":
                raise QuantizationError(f"{name}: {what} must be integer, got {arr.dtype}")
        shape = self._check_shape(name, high.shape, nested=True)
        raw_name = self._claim_name(name)
        try:
            _check_range(name, "w_high", high, *spec.code_range(widths[0]))
            q = high.astype(np.int32)
            for j, low in enumerate(lows, start=1):
                d = widths[j] - widths[j - 1]
                _check_range(name, f"residual {j}", low, *spec.code_range(d + 1))
                q = q * (1 << d) + low.astype(np.int32)
                _check_range(name, f"level {j} codes", q, *spec.code_range(widths[j]))
            if w_int is not None:
                wi = np.asarray(w_int)
                if wi.shape != high.shape or not np.array_equal(wi, q):
                    raise QuantizationError(f"{name}: the recomposed finest codes != w_int")
            del q
            channels = shape[0]
            # §14.3 order: full, part (levels m-1 and 0), then levels 1 .. m-2
            order = [m - 1, 0, *range(1, m - 1)]
            params = []
            for j in order:
                params.append(_param(scales[j], channels, f"scale of level {j}", name))
                params.append(_param(offsets[j], channels, f"offset of level {j}", name))
        except BaseException:
            self._seen.discard(raw_name)
            raise
        data_ref = self._append(Section.DATA, name, memoryview(np.concatenate(params)).cast("B"))
        high_ref = self._append(Section.HIGH, name, bitpack.pack(high, widths[0]).data)
        refs = []
        for j, low in enumerate(lows, start=1):
            packed = bitpack.pack(low, widths[j] - widths[j - 1] + 1).data
            spool = self._spools[Section.LOW] if j == 1 else self._level_spools[j - 2]
            refs.append(self._append_to(spool, name, packed))
        self._add_record(raw_name, Kind.NESTED, code, shape, data_ref, high_ref, refs[0])
        self._level_refs[-1] = tuple(refs[1:])

    # --- finishing ------------------------------------------------------------------------------

    def close(self) -> pathlib.Path:
        """Write header and sections to a temp file, fsync it and rename it onto ``path``."""
        self._check_open()
        try:
            return self._finish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written so far; nothing appears at ``path``."""
        if self._closed:
            return
        self._closed = True
        for spool in (*self._spools.values(), *self._level_spools):
            spool.close()

    def __enter__(self) -> NQWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    # --- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NQError(f"writer for {self.path} is already closed")

    @staticmethod
    def _dtype(dtype: str | DType) -> DType:
        if isinstance(dtype, DType):
            return dtype
        try:
            return DType[str(dtype).upper()]
        except KeyError:
            raise NQError(
                f"unknown dtype {dtype!r}; expected one of {', '.join(d.name for d in DType)}"
            ) from None

    def _claim_name(self, name: str) -> bytes:
        raw = _encode_name(name)
        if raw in self._seen:
            raise DuplicateNameError(f"tensor {name!r} was already added")
        if len(self._records) >= spec.MAX_TENSOR_COUNT:
            raise LimitError(f"more than {spec.MAX_TENSOR_COUNT} tensors (§10)")
        self._seen.add(raw)
        return raw

    @staticmethod
    def _check_shape(name: str, shape: tuple[int, ...], *, nested: bool) -> tuple[int, ...]:
        if len(shape) > spec.MAX_DIMS or (nested and len(shape) == 0):
            raise NQError(
                f"{name}: {'NESTED needs 1..' if nested else 'need 0..'}{spec.MAX_DIMS} dims, "
                f"got shape {shape}"
            )
        dims = tuple(int(d) for d in shape)
        try:
            spec.numel(dims)
        except LimitError as exc:
            raise LimitError(f"{name}: {exc}") from None
        return dims

    def _append(self, section: Section, name: str, data: bytes | memoryview) -> BlobRef:
        return self._append_to(self._spools[section], name, data)

    def _append_to(self, spool: _Spool, name: str, data: bytes | memoryview) -> BlobRef:
        if self._hook is not None:
            self._hook(name)
        codec = Codec.NONE
        if self.compress and len(data):
            packed = self._compressor().compress(data)
            if len(packed) < len(data):
                data, codec = packed, Codec.ZSTD
                self._any_compressed = True
        offset, crc = spool.append(data)
        # offset is relative to the section for now; _finish rebases it.
        return BlobRef(offset=offset, length=len(data), crc=crc, codec=codec)

    def _compressor(self) -> Any:
        if self._zstd is None:
            import zstandard  # lazily: only compressed files need it

            self._zstd = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_content_size=True, write_checksum=False, threads=0
            )
        return self._zstd

    def _add_record(
        self,
        raw_name: bytes,
        kind: Kind,
        dtype: DType,
        shape: tuple[int, ...],
        data: BlobRef,
        high: BlobRef,
        low: BlobRef,
    ) -> None:
        name_offset = self._names_length
        self._names_length += len(raw_name)
        dims = shape + (0,) * (spec.MAX_DIMS - len(shape))
        self._records.append(
            TensorRecord(name_offset, len(raw_name), kind, dtype, len(shape), dims, data, high, low)
        )
        self._names.append(raw_name)
        self._level_refs.append((BlobRef(),) * len(self._level_spools))

    def _layout(self, meta: bytes) -> tuple[Preamble, list[TensorRecord]]:
        count = len(self._records)
        names_len = sum(len(x) for x in self._names)
        index_len = spec.RECORD_SIZE * count
        levels_len = spec.levels_length(len(self.widths), count) if self.widths else 0
        header_end = spec.header_end(count, names_len, len(meta)) + levels_len
        if header_end > spec.MAX_HEADER_END:
            raise LimitError(f"header of {header_end} bytes exceeds 256 MiB (§10)")
        data, high, low = (self._spools[s] for s in (Section.DATA, Section.HIGH, Section.LOW))
        level_spools = [low, *self._level_spools]  # R_1 .. R_(m-1) of a LEVELS file (§14.2)
        level_offs = spec.level_offsets(0, [sp.length for sp in level_spools])
        low_len = level_offs[-1] + level_spools[-1].length
        lengths = (index_len, names_len, len(meta), data.length, high.length, low_len)
        offsets = spec.canonical_offsets(lengths, levels_len)
        data_off, high_off, low_off = offsets[Section.DATA :]
        part_end = high_off + high.length
        full_end = low_off + low_len

        def rebase(ref: BlobRef, base: int, used: bool) -> BlobRef:
            # RAW records keep all-zero HIGH/LOW references (§4)
            return BlobRef(ref.offset + base, ref.length, ref.crc, ref.codec) if used else ref

        records = [
            TensorRecord(
                r.name_offset,
                r.name_length,
                r.kind,
                r.dtype,
                r.ndim,
                r.dims,
                rebase(r.data, data_off, True),
                rebase(r.high, high_off, r.kind == Kind.NESTED),
                rebase(r.low, low_off, r.kind == Kind.NESTED),
            )
            for r in self._records
        ]
        index = b"".join(r.pack() for r in records)
        names = b"".join(self._names)
        low_crc = low.crc
        if self.widths:  # LOW.crc runs over every level and the zero padding between them
            low_crc = cursor = 0
            for spool, rel in zip(level_spools, level_offs, strict=True):
                low_crc = spool.crc_continue(spec.crc32(bytes(rel - cursor), low_crc))
                cursor = rel + spool.length
        crcs = (spec.crc32(index), spec.crc32(names), spec.crc32(meta), data.crc, high.crc, low_crc)
        sections = tuple(SectionEntry(*entry) for entry in zip(offsets, lengths, crcs, strict=True))
        flags = int(IncompatFlag.ZSTD) if self._any_compressed else 0
        reserved = bytes(6 + 8 + 44)
        self._levels_blob = b""
        if self.widths:
            entries = b"".join(
                SectionEntry(low_off + rel, sp.length, sp.crc).pack()
                for sp, rel in zip(level_spools, level_offs, strict=True)
            )
            refs = b"".join(
                rebase(ref, low_off + level_offs[j + 1], r.kind == Kind.NESTED).pack()
                for r, row in zip(self._records, self._level_refs, strict=True)
                for j, ref in enumerate(row)
            )
            self._levels_blob = entries + refs
            assert len(self._levels_blob) == levels_len
            entry = SectionEntry(header_end - levels_len, levels_len, spec.crc32(self._levels_blob))
            reserved = bytes(14) + spec.LevelDecl.of(entry, self.widths).pack()
            flags |= int(IncompatFlag.LEVELS)
        self._level_offsets = [low_off + rel for rel in level_offs]
        preamble = Preamble(
            tensor_count=count,
            n=self.n,
            h=self.h,
            part_end=part_end,
            full_end=full_end,
            sections=sections,
            incompat_flags=flags,
            version_minor=spec.LEVELS_MINOR if self.widths else spec.VERSION_MINOR,
            reserved=reserved,
        )
        return preamble, records

    def _meta_bytes(self) -> bytes:
        from nqformat import __version__

        meta = dict(self._metadata)
        fmt = dict(meta.get("format") or {})
        minor = spec.LEVELS_MINOR if self.widths else spec.VERSION_MINOR
        fmt.update(
            {
                "spec": f"{spec.VERSION_MAJOR}.{minor}",
                "writer": f"nqformat {__version__}",
            }
        )
        meta["format"] = fmt
        raw = canonical_json(meta)
        if len(raw) > spec.MAX_META_LENGTH:
            raise MetadataError(f"metadata is {len(raw)} bytes; the limit is 16 MiB (§6)")
        check_meta(raw)  # the reader's own check (§6): depth, size, number ranges
        return raw

    def _finish(self) -> pathlib.Path:
        meta = self._meta_bytes()
        preamble, records = self._layout(meta)
        with AtomicFile(self.path, suffix=".nq-tmp") as target:
            out = target.file
            out.write(preamble.pack())
            out.write(b"".join(r.pack() for r in records))
            out.write(b"".join(self._names))
            out.write(meta)
            out.write(self._levels_blob)
            placed = [
                (preamble.section(Section.DATA).offset, self._spools[Section.DATA]),
                (preamble.section(Section.HIGH).offset, self._spools[Section.HIGH]),
                *zip(
                    self._level_offsets,
                    [self._spools[Section.LOW], *self._level_spools],
                    strict=True,
                ),
            ]
            for offset, spool in placed:
                gap = offset - out.tell()
                if gap:
                    out.write(bytes(gap))
                spool.copy_into(out)
            if out.tell() != preamble.full_end:
                raise OSError(
                    f"{self.path}: wrote {out.tell()} bytes, expected {preamble.full_end}"
                )
            target.sync()
            if self._hook is not None:
                self._hook("<close>")
        self.abort()  # releases the spools; the file is in place
        return self.path


def _check_range(name: str, what: str, arr: np.ndarray, lo: int, hi: int) -> None:
    if arr.size == 0:
        return
    amin, amax = int(arr.min()), int(arr.max())
    if amin < lo or amax > hi:
        raise QuantizationError(f"{name}: {what} must lie in [{lo}, {hi}], got [{amin}, {amax}]")
