"""Reader-side size accounting for a ``.nq`` file: what it costs on disk and to switch models.

Shared by ``nqtool inspect`` and the benchmark so both print the same figures. It reads only the
tensor index (shapes, dtypes, blob lengths) and the section table, never tensor data, and needs
only the standard library and the container's numpy-only modules (no torch).

The baselines follow the NestQuant paper (seeds/nestquant-paper.md):

- *ideal*: every nested weight costs exactly ``h + l + 1`` bits (``h`` for HIGH, ``l + 1`` for
  LOW; per tensor, rounded up to a byte), plus the raw tensors, the per-channel parameters and
  the header. The difference from the file is alignment padding (and compression, if any).
- *FP32*: 4 bytes for every element of every tensor (paper Tables 9 and 10, "FP32 model size").
- *diverse bitwidths* (paper Tables 8 to 11): a separate INT-n model and a separate INT-h model,
  each densely packed (n or h bits per weight), each with its own per-channel scale and offset
  (two float32 per output channel) and its own copy of the raw tensors. No header or padding is
  counted for them, so this baseline is a lower bound and our reductions against it are
  conservative.
- *switching* (paper Table 11, §4.3.3): upgrading part-bit to full-bit pages in LOW and pages out
  nothing; downgrading pages out LOW and pages in nothing. The diverse models instead page in the
  whole other model and page out the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nqformat.bitpack import packed_size
from nqformat.container.spec import Kind, params_length

if TYPE_CHECKING:
    from nqformat.container.reader import NQFile

__all__ = [
    "DIVERSE_PARAM_BYTES_PER_CHANNEL",
    "FP32_BYTES",
    "NESTED_PARAM_BYTES_PER_CHANNEL",
    "SizeReport",
    "SwitchCost",
    "Switching",
    "TensorRow",
    "ideal_reduction_vs_diverse",
    "section_name",
    "size_report",
    "summarize",
    "tensor_rows",
]

#: FP32 baseline: bytes per element of every tensor (paper Tables 9 and 10).
FP32_BYTES = 4
#: spec §7.2: a NESTED data blob holds four float32 arrays of dims[0] (full and part scale/offset).
NESTED_PARAM_BYTES_PER_CHANNEL = params_length(1)
#: a lone INT-k model of the diverse baseline needs one float32 scale and one offset per channel.
DIVERSE_PARAM_BYTES_PER_CHANNEL = 8

_KIND_NESTED = "nested"
_KIND_RAW = "raw"


@dataclass(frozen=True)
class TensorRow:
    """One tensor as the index describes it; byte counts are stored (possibly compressed) bytes."""

    name: str
    kind: str  # "nested" | "raw"
    shape: tuple[int, ...]
    dtype: str
    numel: int
    data_bytes: int
    high_bytes: int
    low_bytes: int
    itemsize: int  # bytes per element of the stored dtype (RAW) or of the original weight
    compressed: bool = False

    @property
    def channels(self) -> int:
        """Output channels of a nested weight (its first dimension); 0 for raw tensors."""
        if self.kind != _KIND_NESTED or not self.shape:
            return 0
        return self.shape[0]


@dataclass(frozen=True)
class SwitchCost:
    """Bytes moved between storage and memory for one model switch."""

    page_in: int
    page_out: int

    @property
    def total(self) -> int:
        return self.page_in + self.page_out


@dataclass(frozen=True)
class Switching:
    """Paper Table 11 for this file: ours (nested) against the diverse-bitwidths pair."""

    upgrade_nested: SwitchCost
    upgrade_diverse: SwitchCost
    downgrade_nested: SwitchCost
    downgrade_diverse: SwitchCost

    @property
    def upgrade_reduction(self) -> float:
        """Fraction of the diverse models' upgrade traffic that nesting saves."""
        return _reduction(self.upgrade_nested.total, self.upgrade_diverse.total)

    @property
    def downgrade_reduction(self) -> float:
        return _reduction(self.downgrade_nested.total, self.downgrade_diverse.total)


@dataclass(frozen=True)
class SizeReport:
    """Every size figure of one file. Bytes are exact integers; ratios are derived properties."""

    n: int
    h: int
    l: int  # noqa: E741 - the paper's name for n - h
    tensor_count: int
    nested_count: int
    raw_count: int
    nested_elements: int
    nested_channels: int
    raw_elements: int
    raw_bytes: int  # raw tensors, uncompressed
    params_bytes: int  # per-channel parameters of nested tensors (spec §7.2)
    header_bytes: int  # preamble + INDEX + NAMES + META (header_end)
    data_section: int
    high_section: int
    low_section: int
    part_bytes: int  # part_end: the part-bit-only file
    full_bytes: int  # full_end: the complete file
    ideal_part: int
    ideal_full: int
    fp32: int
    diverse_full_model: int  # the separate INT-n model
    diverse_part_model: int  # the separate INT-h model
    switching: Switching = field(repr=False)

    @property
    def diverse_total(self) -> int:
        return self.diverse_full_model + self.diverse_part_model

    @property
    def overhead_vs_ideal(self) -> float:
        """How much larger the file is than the ideal (0.01 = 1 % larger)."""
        return self.full_bytes / self.ideal_full - 1.0 if self.ideal_full else 0.0

    @property
    def part_overhead_vs_ideal(self) -> float:
        return self.part_bytes / self.ideal_part - 1.0 if self.ideal_part else 0.0

    @property
    def reduction_vs_fp32(self) -> float:
        return _reduction(self.full_bytes, self.fp32)

    @property
    def reduction_vs_diverse(self) -> float:
        """Paper Table 9's "storage reduction" against storing the INT-n and INT-h models."""
        return _reduction(self.full_bytes, self.diverse_total)

    @property
    def ideal_reduction_vs_diverse(self) -> float:
        """Paper Table 8: the reduction from bit widths alone, (n+h - (n+1)) / (n+h)."""
        return ideal_reduction_vs_diverse(self.n, self.h)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: every field plus the derived ratios."""
        out = asdict(self)
        out.pop("switching")
        out.update(
            diverse_total=self.diverse_total,
            overhead_vs_ideal=self.overhead_vs_ideal,
            part_overhead_vs_ideal=self.part_overhead_vs_ideal,
            reduction_vs_fp32=self.reduction_vs_fp32,
            reduction_vs_diverse=self.reduction_vs_diverse,
            ideal_reduction_vs_diverse=self.ideal_reduction_vs_diverse,
        )
        return out

    def switching_dict(self) -> dict[str, Any]:
        s = self.switching
        return {
            "upgrade": {
                "nested": asdict(s.upgrade_nested),
                "diverse": asdict(s.upgrade_diverse),
                "reduction": s.upgrade_reduction,
            },
            "downgrade": {
                "nested": asdict(s.downgrade_nested),
                "diverse": asdict(s.downgrade_diverse),
                "reduction": s.downgrade_reduction,
            },
        }


def _reduction(ours: int, baseline: int) -> float:
    return 1.0 - ours / baseline if baseline else 0.0


def ideal_reduction_vs_diverse(n: int, h: int) -> float:
    """Paper Table 8: one nested weight costs n+1 bits, the INT-n + INT-h pair n+h bits."""
    return 1.0 - (n + 1) / (n + h)


def tensor_rows(nqfile: NQFile) -> list[TensorRow]:
    """One ``TensorRow`` per index record, in file order (header only, no tensor data)."""
    rows = []
    for info in nqfile.tensors():
        nested = info.kind == Kind.NESTED
        blobs = [info.data] + ([info.high, info.low] if nested else [])
        rows.append(
            TensorRow(
                name=info.name,
                kind=_KIND_NESTED if nested else _KIND_RAW,
                shape=tuple(int(d) for d in info.shape),
                dtype=info.dtype.name,
                numel=int(info.numel),
                data_bytes=int(info.data.length),
                high_bytes=int(info.high.length) if nested else 0,
                low_bytes=int(info.low.length) if nested else 0,
                itemsize=int(info.dtype.itemsize),
                compressed=any(int(b.codec) != 0 for b in blobs),
            )
        )
    return rows


def summarize(
    rows: Sequence[TensorRow] | Iterable[TensorRow],
    *,
    n: int,
    h: int,
    header_bytes: int,
    data_section: int,
    high_section: int,
    low_section: int,
    part_bytes: int,
    full_bytes: int,
) -> SizeReport:
    """The pure arithmetic behind ``size_report``; takes index rows and section lengths."""
    rows = list(rows)
    l = n - h  # noqa: E741
    nested = [r for r in rows if r.kind == _KIND_NESTED]
    raw = [r for r in rows if r.kind == _KIND_RAW]
    nested_elements = sum(r.numel for r in nested)
    channels = sum(r.channels for r in nested)
    raw_bytes = sum(r.numel * r.itemsize for r in raw)
    params = NESTED_PARAM_BYTES_PER_CHANNEL * channels
    high_ideal = sum(packed_size(r.numel, h) for r in nested)
    low_ideal = sum(packed_size(r.numel, l + 1) for r in nested)
    ideal_part = header_bytes + raw_bytes + params + high_ideal
    diverse_params = DIVERSE_PARAM_BYTES_PER_CHANNEL * channels
    diverse_full = sum(packed_size(r.numel, n) for r in nested) + diverse_params + raw_bytes
    diverse_part = high_ideal + diverse_params + raw_bytes
    switching = Switching(
        upgrade_nested=SwitchCost(page_in=low_section, page_out=0),
        upgrade_diverse=SwitchCost(page_in=diverse_full, page_out=diverse_part),
        downgrade_nested=SwitchCost(page_in=0, page_out=low_section),
        downgrade_diverse=SwitchCost(page_in=diverse_part, page_out=diverse_full),
    )
    return SizeReport(
        n=n,
        h=h,
        l=l,
        tensor_count=len(rows),
        nested_count=len(nested),
        raw_count=len(raw),
        nested_elements=nested_elements,
        nested_channels=channels,
        raw_elements=sum(r.numel for r in raw),
        raw_bytes=raw_bytes,
        params_bytes=params,
        header_bytes=header_bytes,
        data_section=data_section,
        high_section=high_section,
        low_section=low_section,
        part_bytes=part_bytes,
        full_bytes=full_bytes,
        ideal_part=ideal_part,
        ideal_full=ideal_part + low_ideal,
        fp32=FP32_BYTES * sum(r.numel for r in rows),
        diverse_full_model=diverse_full,
        diverse_part_model=diverse_part,
        switching=switching,
    )


def section_name(section: Any) -> str:
    """``SectionInfo.name`` as text, whether the reader gives a string or a ``Section`` enum."""
    return str(getattr(section.name, "name", section.name))


def size_report(nqfile: NQFile, rows: Sequence[TensorRow] | None = None) -> SizeReport:
    """All size figures of an open file, from its header alone."""
    sections = {section_name(s): s for s in nqfile.sections()}
    meta = sections["META"]
    return summarize(
        tensor_rows(nqfile) if rows is None else rows,
        n=nqfile.n,
        h=nqfile.h,
        header_bytes=int(meta.offset) + int(meta.length),
        data_section=int(sections["DATA"].length),
        high_section=int(sections["HIGH"].length),
        low_section=int(sections["LOW"].length),
        part_bytes=int(nqfile.part_end),
        full_bytes=int(nqfile.full_end),
    )
