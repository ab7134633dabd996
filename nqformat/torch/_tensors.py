"""torch <-> numpy/.nq dtype plumbing shared by the converter and the runtime (spec §4.1)."""

from __future__ import annotations

import numpy as np
import torch

from nqformat.errors import NQError

__all__ = ["FLOAT_DTYPES", "nq_dtype", "to_numpy", "to_torch", "writable_view"]

#: torch dtype -> .nq dtype name (spec §4.1); anything else cannot be stored.
_NQ_DTYPE: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
#: dtypes a NESTED weight may have (spec §4.1).
FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


def nq_dtype(tensor: torch.Tensor, name: str) -> str:
    """The .nq dtype name of a tensor; NQError for dtypes the format has no code for."""
    try:
        return _NQ_DTYPE[tensor.dtype]
    except KeyError:
        raise NQError(f"{name}: dtype {tensor.dtype} has no .nq dtype code (spec §4.1)") from None


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy view of a tensor; bfloat16 becomes its uint16 bit patterns (numpy has no
    bfloat16, and the writer takes BF16 that way)."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def to_torch(array: np.ndarray, stored: str) -> torch.Tensor:
    """A torch tensor for ``array``, copied only if read-only (the reader hands out read-only
    file views for RAW tensors, fresh arrays for dequantized ones); ``stored`` is the file's
    dtype name, so BF16 bit patterns come back as bfloat16."""
    owned = array if array.flags.writeable else np.array(array, copy=True)
    if stored == "BF16":
        return torch.from_numpy(owned.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(owned)


def writable_view(tensor: torch.Tensor, stored: str) -> np.ndarray | None:
    """A writeable numpy view of ``tensor``'s own memory that takes values of the file's dtype
    ``stored`` as ``NQFile.read`` returns them (``"F32"`` for dequantized weights; BF16 as
    uint16 bit patterns), so a load can write in place instead of copying; None where the
    memory cannot take them as they are (not on the CPU, not contiguous, another dtype)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    if stored == "BF16":
        if tensor.dtype is not torch.bfloat16:
            return None
        return tensor.detach().view(torch.int16).numpy().view(np.uint16)
    if _NQ_DTYPE.get(tensor.dtype) != stored:
        return None
    return tensor.detach().numpy()
