"""Lazy reader of ``.nq`` files (spec ``spec/nq-v1.md``): numpy + stdlib, zstandard lazily.

``open(path)`` reads the preamble and header only and validates them in the order of spec §11
(:mod:`~nqformat.container.header`) before anything else is allocated. Blob bytes are reached
through a :class:`~nqformat.container.source.ByteSource`: one read-only map of ``[DATA.offset,
part_end)`` and, only when the LOW section is paged in, a second one of LOW. Values come from
:mod:`~nqformat.container.dequant`; :meth:`NQFile.verify` is :mod:`~nqformat.container.verify`.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from nqformat import bitpack, fused
from nqformat.container import spec
from nqformat.container.bulkread import BulkReads, low_crc_error
from nqformat.container.costs import blob_cost, codes_cost, read_cost
from nqformat.container.dequant import Scratch as _Scratch
from nqformat.container.dequant import check_params_finite as _check_params_finite
from nqformat.container.dequant import dequantize as _dequantize
from nqformat.container.dequant import zstd_decompress as _zstd_decompress
from nqformat.container.header import Header, TensorInfo, parse_header
from nqformat.container.levelread import LevelReads
from nqformat.container.source import ByteSource, FileSource, crc_range
from nqformat.container.spec import Codec, Kind, Section
from nqformat.errors import (
    ChecksumError,
    LimitError,
    NQError,
    PartOnlyError,
    TensorNotFoundError,
)

__all__ = [
    "ChannelParams",
    "NQFile",
    "SectionInfo",
    "TensorInfo",
    "TensorNotFoundError",
    "open",
    "parse_header",
]


@dataclass(frozen=True)
class ChannelParams:
    """Per-output-channel dequantization parameters of a NESTED tensor (§7.2)."""

    scale_full: np.ndarray
    offset_full: np.ndarray
    scale_part: np.ndarray
    offset_part: np.ndarray


@dataclass(frozen=True)
class SectionInfo:
    """One section table entry (§3.2), with its name."""

    name: str
    offset: int
    length: int
    crc: int


_PART_MAP = "part"  # DATA and HIGH: [DATA.offset, part_end)
_LOW_MAP = "low"  # LOW: [LOW.offset, full_end)


class NQFile(LevelReads, BulkReads):
    """An open ``.nq`` file; use :func:`open`. Everything but the header is read lazily."""

    _PART_MAP = _PART_MAP  # the source's map keys, for nqformat.container.verify
    _LOW_MAP = _LOW_MAP

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        source: ByteSource | None = None,
        max_bytes: int = spec.DEFAULT_READ_BUDGET,
    ) -> None:
        """``source`` serves the bytes instead of the local file at ``path`` (which then only
        names the file in messages); the NQFile closes it. ``max_bytes`` is the read budget
        (§10): the most one read of one tensor may allocate."""
        #: the http(s) address when opened by URL (``path`` is then the URL as a Path)
        self.url = path if isinstance(path, str) and _is_url(path) else None
        self.path = pathlib.Path(path)
        self._verify_blobs = verify
        self.max_bytes = int(max_bytes)
        self._src: ByteSource = FileSource(self.path) if source is None else source
        self._header: Header
        try:
            self.file_size = self._src.size
            pre_bytes = self._src.pread(0, min(self.file_size, spec.PREAMBLE_SIZE))
            self._header = parse_header(pre_bytes, self._src.pread, self.file_size)
            pre = self._header.preamble
            self._src.map(_PART_MAP, pre.sections[Section.DATA].offset, pre.part_end)
        except BaseException:
            self._src.close()
            raise
        self._pre = pre
        self._by_name = {t.name: t for t in self._header.tensors}
        self._checked: set[tuple[int, Section]] = set()
        self._streamed_low: dict[int, bytes] = {}  # record index -> LOW blob checked alone
        self._scratch_local = threading.local()
        self._closed = False

    @property
    def _where(self) -> str | pathlib.Path:
        """The file as messages name it: its URL, else its path."""
        return self.url or self.path

    # --- attributes -----------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return self._pre.n

    @property
    def h(self) -> int:
        return self._pre.h

    @property
    def l(self) -> int:  # noqa: E743 - the paper's name for n - h
        return self._pre.n - self._pre.h

    @property
    def levels(self) -> tuple[int, ...]:
        """The widths of the nested models, coarsest first: ``(h, n)`` for a 1.0 file, e.g.
        ``(4, 6, 8)`` for a file of several levels (§14)."""
        lv = self._header.levels
        return lv.widths if lv is not None else (self._pre.h, self._pre.n)

    @property
    def level_ends(self) -> tuple[int, ...]:
        """The byte end of each level (§14.2): the prefix a reader of that level needs."""
        lv = self._header.levels
        return lv.ends if lv is not None else (self._pre.part_end, self._pre.full_end)

    @property
    def available_levels(self) -> tuple[int, ...]:
        """The widths this file (or prefix of one) can serve: those whose end it reaches."""
        return tuple(
            w for w, end in zip(self.levels, self.level_ends, strict=True) if end <= self.file_size
        )

    @property
    def version(self) -> tuple[int, int]:
        return (self._pre.version_major, self._pre.version_minor)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._header.metadata

    @property
    def part_only(self) -> bool:
        """True when the file ends before ``full_end``: only the part-bit model is present."""
        return self._header.part_only

    @property
    def part_end(self) -> int:
        return self._pre.part_end

    @property
    def full_end(self) -> int:
        return self._pre.full_end

    @property
    def header_end(self) -> int:
        return self._header.header_end

    @property
    def incompat_flags(self) -> int:
        return self._pre.incompat_flags

    @property
    def bytes_read(self) -> int:
        """Bytes requested through the file layer so far (preamble, header, blobs, LOW)."""
        return self._src.bytes_read

    @property
    def max_offset_read(self) -> int:
        """End of the furthest byte range requested so far."""
        return self._src.max_end

    @property
    def low_resident(self) -> bool:
        return self._src.mapped(_LOW_MAP)

    # --- index ----------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [t.name for t in self._header.tensors]

    def tensors(self) -> list[TensorInfo]:
        return list(self._header.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._by_name, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise TensorNotFoundError(f"no tensor {name!r} in {self._where}{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._header.tensors)

    def sections(self) -> list[SectionInfo]:
        return [
            SectionInfo(which.name, e.offset, e.length, e.crc)
            for which, e in zip(Section, self._pre.sections, strict=True)
        ]

    # --- data -----------------------------------------------------------------------------------

    def read(
        self,
        name: str,
        mode: Literal["part", "full"] = "part",
        *,
        out: np.ndarray | None = None,
        bits: int | None = None,
    ) -> np.ndarray:
        """The tensor's values: NESTED dequantized to float32 (§7.2), RAW as stored (a read-only
        view for uncompressed blobs). ``bits`` picks a level by its width (one of
        :attr:`levels`; §14) and overrides ``mode``, which names the lowest ("part") and the
        highest ("full") level.

        With ``out`` (a writeable C-contiguous array of the tensor's shape and of
        ``info(name).np_dtype``) the values are written there and ``out`` is returned: a NESTED
        tensor is dequantized straight into it, with no float32 temporary. With the C kernel
        (``nqformat.fused.BACKEND == "c"``) codes are decoded a few KiB at a time; the numpy
        path decodes through scratch buffers this file keeps (per thread, as large as the
        largest tensor's codes) until :meth:`release_buffers` or :meth:`close`."""
        info = self.info(name)
        if mode not in ("part", "full"):
            raise NQError(f"mode must be 'part' or 'full', got {mode!r}")
        if out is not None:
            _check_out(out, info)
        level = self._level_of(mode, bits)
        if self._header.levels is not None and info.kind is Kind.NESTED and level > 0:
            return self._read_level(info, level, out)
        mode = "part" if level == 0 else "full"
        if mode == "full" and info.kind is Kind.NESTED:
            self._check_has_low()  # §11 step 13: refused before any blob is read
        self._check_budget(
            info, read_cost(info, mode, self.n, self.h, self._widths), f"read({mode!r})"
        )
        if info.kind is Kind.RAW:
            data = self._blob(info, Section.DATA)
            stored = np.frombuffer(data, dtype=info.dtype.np_dtype).reshape(info.shape)
            if out is None:
                return stored
            np.copyto(out, stored)
            return out
        params = self.params(name)
        if mode == "part":
            scale, offset = params.scale_part, params.offset_part
        else:
            scale, offset = params.scale_full, params.offset_full
        if fused.BACKEND == "c":
            # one pass from the packed blobs to float32 (nqformat/fused.py), bit-identical to
            # the numpy path below; blobs checked in the order data, high, low (§11 step 13)
            high = self._blob(info, Section.HIGH)
            low = None if mode == "part" else self._blob(info, Section.LOW)
            values = np.empty(info.shape, np.float32) if out is None else out
            fused.dequantize_packed(
                high,
                low,
                h=self.h,
                lbits=self.l,
                count=info.numel,
                rows=info.shape[0],
                scale=scale,
                offset=offset,
                out=values.reshape(-1),
                threads=None,
            )
            return values
        scratch = self._scratch()
        if mode == "part":
            codes = self._unpack(info, Section.HIGH, self.h, scratch.int8(info.numel, 0))
        else:
            codes = self._full_codes(info, scratch)
        values = _dequantize(codes, scale, offset, info.shape, out=out)
        return values if out is None else out

    def codes(self, name: str, part: Literal["high", "low", "full"] = "full") -> np.ndarray:
        """Integer codes of a NESTED tensor in its shape: H or L (int8), q = H*2^l + L (int16)."""
        info = self._nested(name)
        if part not in ("high", "low", "full"):
            raise NQError(f"part must be 'high', 'low' or 'full', got {part!r}")
        if self._header.levels is not None and part != "high":
            if part == "full":
                return self.level_codes(name, self.n)
            width = self.levels[1] - self.levels[0] + 1
            self._check_level_present(1)  # §11 step 13: part_only before the budget and blobs
            self._check_budget(info, self._level_cost(info, 1), "codes('low')")
            buf = np.frombuffer(self._residual_blob(info, 1), dtype=np.uint8)
            return bitpack.unpack(buf, width, info.numel).reshape(info.shape)
        if part != "high":
            self._check_has_low()
        self._check_budget(info, codes_cost(info, part, self.n, self.h), f"codes({part!r})")
        if part == "high":
            return self._unpack(info, Section.HIGH, self.h)
        if part == "low":
            return self._unpack(info, Section.LOW, self.l + 1)
        return self._full_codes(info, _Scratch())  # a fresh scratch: the caller owns it

    def params(self, name: str) -> ChannelParams:
        """The four parameter arrays (§7.2), all checked finite (else InvalidHeaderError)."""
        info = self._nested(name)
        arr = np.frombuffer(self._blob(info, Section.DATA), dtype="<f4")
        _check_params_finite(arr, repr(info.name))
        c = info.shape[0]
        return ChannelParams(arr[0:c], arr[c : 2 * c], arr[2 * c : 3 * c], arr[3 * c : 4 * c])

    def page_in_low(self) -> int:
        """Map LOW and check ``LOW.crc`` (when verifying); returns the bytes paged in."""
        self._check_open()
        self._check_has_low()
        if self.low_resident:
            return 0
        low = self._pre.sections[Section.LOW]
        self._drop_streamed_low()  # the whole section supersedes blobs checked alone
        self._src.map(_LOW_MAP, low.offset, low.end)
        if self._verify_blobs and low.length:
            try:
                actual = crc_range(self._src, _LOW_MAP, low.offset, low.length)
            except BaseException:
                self._src.unmap(_LOW_MAP)
                raise
            if actual != low.crc:
                self._src.unmap(_LOW_MAP)
                raise low_crc_error(low.crc, actual)
        return low.length - self._release_levels()  # all of LOW supersedes levels paged in

    def low_order(self) -> list[str]:
        """Names of the NESTED tensors in the recommended LOW order: META
        ``sensitivity.low_order`` (most valuable first, spec/metadata.md), tensors it does not
        list after it in record order; record order when META has none (older files) or it is
        not a list of names (META is informational: a bad one never fails a read)."""
        nested = [t.name for t in self._header.tensors if t.kind is Kind.NESTED]
        sens = self.metadata.get("sensitivity")
        order = sens.get("low_order") if isinstance(sens, dict) else None
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            return nested
        rank: dict[str, int] = {}
        for name in order:
            rank.setdefault(name, len(rank))
        last = len(rank)
        return sorted(nested, key=lambda name: rank.get(name, last))  # stable: record order

    def stream_low(
        self,
        names: Iterable[str] | None = None,
        *,
        order: Literal["recommended", "file"] = "recommended",
    ) -> Iterator[tuple[str, ChecksumError | None]]:
        """Page LOW in blob by blob, to use it while it arrives (spec §11 step 13, streamed LOW).

        Yields ``(name, None)`` for each NESTED tensor (all, or only ``names``) as soon as its LOW
        blob is in and its own CRC matches: ``read(name, "full")`` then uses that blob, before
        the rest of LOW exists. A blob whose CRC is wrong yields ``(name, error)`` and that
        tensor stays part-bit. Streaming all of LOW (no ``names``) ends by checking ``LOW.crc``:
        LOW is then resident as after :meth:`page_in_low`, or, if the CRC is wrong, every blob
        streamed is dropped and :class:`ChecksumError` raised.

        ``order="recommended"`` (default) takes the blobs most valuable first, as META
        ``sensitivity.low_order`` recommends (:meth:`low_order`), so that stopping early leaves
        the best model those blobs allow; ``order="file"`` takes record order. Over HTTP LOW is
        one range request consumed as it arrives (``names``: up to their last blob), so its
        bytes come in record order: a file whose records are in the recommended order
        (``convert_model(..., low_order="sensitivity")``) delivers its best blobs first."""
        self._check_open()
        self._check_has_low()
        if self.low_resident:
            return
        if order not in ("recommended", "file"):
            raise NQError(f"order must be 'recommended' or 'file', got {order!r}")
        nested = [t for t in self._header.tensors if t.kind is Kind.NESTED]
        if names is not None:
            wanted = {self._nested(name).index for name in names}
            nested = [t for t in nested if t.index in wanted]
        low = self._pre.sections[Section.LOW]
        advise = getattr(self._src, "advise", None)  # a remote source reads ahead; a file need not
        if advise is not None and nested:
            # the blobs lie in record order: one request from the first to the last of them
            advise(nested[0].low.offset, low.end if names is None else nested[-1].low.end)
        if order == "recommended":
            rank = {name: i for i, name in enumerate(self.low_order())}
            nested.sort(key=lambda t: rank[t.name])
        for info in nested:
            ref = info.low
            stored = self._src.pread(ref.offset, ref.length)
            if self._verify_blobs and (actual := spec.crc32(stored)) != ref.crc:
                yield (
                    info.name,
                    ChecksumError(
                        f"{info.name!r}: LOW blob CRC is {ref.crc:#010x}, computed {actual:#010x}: "
                        "this tensor stays part-bit (§11 step 13)"
                    ),
                )
                continue
            self._streamed_low[info.index] = stored
            self._checked.add((info.index, Section.LOW))
            yield info.name, None
        if names is None:
            self.page_in_low()  # LOW.crc now; on failure no streamed blob stays in use

    def _check_has_low(self) -> None:
        if self.part_only:
            raise PartOnlyError(
                f"{self._where} is a part-bit-only file ({self.file_size} of {self.full_end} "
                "bytes): it has no LOW section, so only mode='part' is available (§9)"
            )

    def _drop_streamed_low(self) -> None:
        for info in self._header.tensors:
            if info.kind is Kind.NESTED:
                self._checked.discard((info.index, Section.LOW))
        self._streamed_low.clear()

    def release_buffers(self) -> None:
        """Drop the code buffers ``read`` reuses (up to four bytes per element of the largest
        nested tensor); the next read makes new ones. For long-lived open files."""
        self._scratch_local = threading.local()

    def release_low(self) -> int:
        """Unmap LOW again (and drop streamed LOW blobs); returns the bytes released (0 if LOW
        was not resident)."""
        self._drop_streamed_low()
        released = self._release_levels()
        if not self.low_resident:
            return released
        self._src.unmap(_LOW_MAP)
        return released + self._pre.sections[Section.LOW].length

    def verify(self) -> list[str]:
        """Check everything present: section and blob CRCs, zero padding, decompression, code
        ranges. Returns a list of problems (empty = valid). LOW is checked when present."""
        from nqformat.container.verify import find_problems

        return [str(p) for p in find_problems(self)]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.release_buffers()
            self._src.close()

    def __enter__(self) -> NQFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "part-only" if self.part_only else "full"
        return (
            f"<NQFile {str(self._where)!r} n={self.n} h={self.h} tensors={len(self)} {mode}"
            f"{' closed' if self._closed else ''}>"
        )

    # --- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NQError(f"{self._where} is closed")

    def _nested(self, name: str) -> TensorInfo:
        info = self.info(name)
        if info.kind is not Kind.NESTED:
            raise NQError(f"{name!r} is a RAW tensor: it has no codes or channel parameters")
        return info

    def _blob(
        self, info: TensorInfo, which: Section, *, force_check: bool = False, named: bool = True
    ) -> memoryview:
        """Stored bytes of one blob, CRC-checked (§11 step 13) and decompressed. Errors name the
        tensor unless ``named`` is False (verify puts the name in front itself)."""
        self._check_open()
        if which is Section.DATA:
            ref, key = info.data, _PART_MAP
        elif which is Section.HIGH:
            ref, key = info.high, _PART_MAP
        else:
            ref, key = info.low, _LOW_MAP
            if not self.low_resident and info.index not in self._streamed_low:
                self.page_in_low()
        raw_len = spec.raw_blob_length(
            info.kind, which, info.dtype, info.shape, self.n, self.h, self._widths
        )
        # the stored bytes and (codec 1) the decompressed ones, before either is allocated
        self._check_budget(info, blob_cost(info, which, self.n, self.h, self._widths), which.name)
        if which is Section.LOW and not self.low_resident:
            stored = memoryview(self._streamed_low[info.index])  # checked alone (stream_low)
        else:
            stored = self._src.view(key, ref.offset, ref.length)
        if force_check or (self._verify_blobs and (info.index, which) not in self._checked):
            actual = spec.crc32(stored)
            if actual != ref.crc:
                where = f"{info.name!r}: " if named else ""
                raise ChecksumError(
                    f"{where}{which.name} blob CRC is {ref.crc:#010x}, computed "
                    f"{actual:#010x} (§7.1)"
                )
            self._checked.add((info.index, which))
        if ref.codec == Codec.NONE:
            return stored
        what = f"{info.name!r} {which.name}" if named else which.name
        return memoryview(_zstd_decompress(stored, raw_len, what))

    def _check_budget(self, info: TensorInfo, nbytes: int, what: str) -> None:
        """LimitError, before anything is allocated, when ``nbytes`` exceed the read budget."""
        if nbytes > self.max_bytes:
            raise LimitError(
                f"{info.name!r}: {what} needs {nbytes:,} bytes, more than the read budget of "
                f"{self.max_bytes:,} (§10; pass max_bytes= to nqformat.open to raise it)"
            )

    def _unpack(
        self, info: TensorInfo, which: Section, width: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        buf = np.frombuffer(self._blob(info, which), dtype=np.uint8)
        return bitpack.unpack(buf, width, info.numel, out=out).reshape(info.shape)

    def _full_codes(self, info: TensorInfo, scratch: _Scratch) -> np.ndarray:
        """q = H * 2^l + L (§7.3) in a scratch int16 array of the tensor's shape; HIGH is
        read before LOW (the blob order of §11 step 13)."""
        high = self._unpack(info, Section.HIGH, self.h, scratch.int8(info.numel, 0))
        low = self._unpack(info, Section.LOW, self.l + 1, scratch.int8(info.numel, 1))
        full = scratch.int16(info.numel).reshape(info.shape)
        # H * 2^l + L is exact in int16 since |q| < 2^8 (forced: int8 could wrap)
        np.left_shift(high, self.l, out=full, dtype=np.int16)
        np.add(full, low, out=full, dtype=np.int16)
        return full

    def _scratch(self) -> _Scratch:
        scratch = getattr(self._scratch_local, "buffers", None)
        if scratch is None:
            scratch = self._scratch_local.buffers = _Scratch()
        return scratch


def _check_out(out: object, info: TensorInfo) -> None:
    """``read(out=...)`` needs an array it can write the tensor's values into as they are."""
    if not isinstance(out, np.ndarray):
        raise NQError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != info.np_dtype or out.shape != info.shape:
        raise NQError(
            f"out for {info.name!r} must be {info.np_dtype} of shape {info.shape}, got "
            f"{out.dtype} of shape {out.shape}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise NQError(f"out for {info.name!r} must be writeable and C-contiguous")


def _is_url(path: str) -> bool:
    from nqformat.remote import is_url  # the package only: no HTTP client is imported

    return is_url(path)


def open(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    max_bytes: int = spec.DEFAULT_READ_BUDGET,
    **remote: Any,
) -> NQFile:
    """Open a ``.nq`` file lazily (a context manager). ``verify`` checks each blob's CRC when
    it is first read and ``LOW.crc`` when LOW is paged in; the header is always checked.
    ``max_bytes`` is the read budget (spec §10, default 4 GiB): a read of one tensor that would
    allocate more raises LimitError (code ``limit``) before allocating anything.

    An ``http://`` or ``https://`` URL is read with byte-range requests through an on-disk
    cache (:func:`nqformat.remote.open_url`, which takes the ``remote`` options ``cache``,
    ``cache_dir``, ``timeout``, ``retries``)."""
    if isinstance(path, str) and _is_url(path):
        from nqformat.remote import open_url

        return open_url(path, verify=verify, max_bytes=max_bytes, **remote)
    if remote:
        raise TypeError(f"options {sorted(remote)} apply to http(s) URLs only")
    return NQFile(path, verify=verify, max_bytes=max_bytes)
