"""What one read may allocate, for the read budget (spec §10): upper bounds per blob and per
``read``/``codes`` call, checked before anything is allocated."""

from __future__ import annotations

from nqformat.container import spec
from nqformat.container.header import TensorInfo
from nqformat.container.spec import Codec, Kind, Section

__all__ = ["blob_cost", "codes_cost", "read_cost"]


def blob_cost(
    info: TensorInfo, which: Section, n: int, h: int, widths: tuple[int, ...] = ()
) -> int:
    """Bytes one blob costs a read: its stored bytes, plus the decompressed ones (codec 1)."""
    ref = {Section.DATA: info.data, Section.HIGH: info.high, Section.LOW: info.low}[which]
    raw = spec.raw_blob_length(info.kind, which, info.dtype, info.shape, n, h, widths)
    return ref.length + (raw if ref.codec != Codec.NONE else 0)


def read_cost(info: TensorInfo, mode: str, n: int, h: int, widths: tuple[int, ...] = ()) -> int:
    """Upper bound on the bytes ``read`` allocates (§10 read budget): the blobs it reads, the
    int8 code buffers and int16 recomposition (full), and the float32 result."""
    if info.kind is Kind.RAW:  # the result is an array over the blob's bytes, no copy
        return blob_cost(info, Section.DATA, n, h, widths)
    cost = blob_cost(info, Section.DATA, n, h, widths) + blob_cost(info, Section.HIGH, n, h)
    cost += info.numel * (1 + 4)  # H codes, float32 values
    if mode == "full":
        cost += blob_cost(info, Section.LOW, n, h) + info.numel * (1 + 2)  # L codes, q
    return cost


def codes_cost(info: TensorInfo, part: str, n: int, h: int) -> int:
    """Upper bound on the bytes ``codes`` allocates (§10 read budget)."""
    high = blob_cost(info, Section.HIGH, n, h) + info.numel
    low = blob_cost(info, Section.LOW, n, h) + info.numel
    return {"high": high, "low": low, "full": high + low + 2 * info.numel}[part]
