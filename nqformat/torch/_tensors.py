"""torch <-> numpy/.nq dtype plumbing shared by the converter and the runtime (spec §4.1)."""

from __future__ import annotations

import numpy as np
import torch

from nqformat.errors import NQError

__all__ = ["FLOAT_DTYPES", "nq_dtype", "to_numpy", "to_torch"]

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
