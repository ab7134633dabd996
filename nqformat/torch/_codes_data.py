"""The DATA section of a codes-resident load (``nqformat.torch.resident``): RAW values into the
module's tensors and the channel parameters of every NESTED tensor into one array, each blob
checked against its own CRC (§11 step 13) and written to its place by one ``fused.scatter``
call per read."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import increment_version

from nqformat import fused
from nqformat.container.reader import NQFile, TensorInfo
from nqformat.container.spec import DType, Kind, Section
from nqformat.errors import NQError
from nqformat.torch._tensors import _NQ_DTYPE, to_torch

__all__ = ["RawWriter", "owner_of", "read_data"]


def owner_of(modules: Mapping[str, nn.Module], name: str) -> tuple[nn.Module, str, str]:
    """The module holding state entry ``name``, its path and the attribute name
    (``modules``: ``dict(module.named_modules())``, one walk instead of one per tensor)."""
    path, _, attr = name.rpartition(".")
    return modules[path], path, attr


class RawWriter:
    """Where the RAW tensors' values go: the module's own tensors (a module passed in, or
    reloaded), or CPU memory of their own for tensors on meta (their own storage each:
    ``safetensors.save_file`` refuses tensors that share one). The values are copied: the
    blobs' bytes belong to a piece of DATA that goes once it is used.

    :meth:`address` names the memory a blob's bytes go to as they are (a CPU tensor of the
    file's dtype, contiguous), so that one ``fused.scatter`` per piece writes them all: a
    Python or torch call per tensor was most of the cost (Lite0: 246 tensors); the other
    tensors are converted by :meth:`copy`."""

    def __init__(self, modules: Mapping[str, nn.Module], own: Mapping[str, torch.Tensor]):
        self.modules, self.own = modules, own
        self.written: list[torch.Tensor] = []  # tensors of the module written in place

    def target(self, info: TensorInfo) -> torch.Tensor:
        target = self.own[info.name]
        if not target.is_meta:
            self.written.append(target)
            return target
        owner, _, attr = owner_of(self.modules, info.name)
        real = torch.empty(info.shape, dtype=target.dtype)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(real, requires_grad=target.requires_grad)
        else:
            owner._buffers[attr] = real
        return real

    def address(self, info: TensorInfo, target: torch.Tensor, length: int) -> int | None:
        """Where the blob's ``length`` bytes go verbatim, or None (then :meth:`copy`)."""
        if (
            target.dtype is _TORCH_DTYPE[info.dtype]
            and target.is_cpu
            and target.is_contiguous()
            and target.nbytes == length
        ):
            return target.data_ptr()
        return None

    @torch.no_grad()
    def copy(self, info: TensorInfo, target: torch.Tensor, blob: memoryview) -> None:
        view = _numpy_view(target)
        values = np.frombuffer(blob, dtype=info.dtype.np_dtype)
        if view is not None and view.dtype == values.dtype:
            np.copyto(view, values.reshape(view.shape))
        else:
            target.copy_(to_torch(values, info.dtype.name).reshape(target.shape))

    def finish(self) -> None:
        increment_version(self.written)  # as copy_ would: autograd sees the writes


#: the torch dtype of each .nq dtype (spec §4.1)
_TORCH_DTYPE = {DType[name]: dtype for dtype, name in _NQ_DTYPE.items()}


def _numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor's memory; None where numpy has no such dtype (bfloat16)."""
    if not t.is_cpu:
        return None
    try:
        return t.detach().numpy()
    except TypeError:
        return None


def read_data(
    f: NQFile, raws: RawWriter, params: np.ndarray, slots: dict[int, tuple[int, int]]
) -> None:
    """Every DATA blob, checked against its CRC: RAW values into the module (``raws``), the
    channel parameters of NESTED record ``i`` into ``params`` at byte ``slots[i][0]``
    (``slots[i][1]`` bytes). Blobs of one read go to their places in one ``fused.scatter``
    call. DATA is read a piece at a time, each piece's bytes gone before the next is read:
    holding all of DATA at once left its size as resident memory (freed, not returned by
    malloc)."""
    infos = f.tensors()
    base = params.ctypes.data
    done = [False] * len(infos)

    def place(info: TensorInfo, length: int) -> tuple[int | None, torch.Tensor | None]:
        if info.kind is Kind.NESTED:
            start, size = slots[info.index]
            if length != size:
                raise NQError(f"{info.name}: DATA blob of {length} bytes, expected {size}")
            return base + start, None
        target = raws.target(info)
        return raws.address(info, target, length), target

    for data, first, rows in f.blob_pieces(infos, Section.DATA):
        starts, lengths, addresses = [], [], []
        for i in rows:
            info = infos[i]
            start, length = info.data.offset - first, info.data.length
            address, target = place(info, length)
            if address is None:
                raws.copy(info, target, data[start : start + length])  # type: ignore[arg-type]
            else:
                starts.append(start)
                lengths.append(length)
                addresses.append(address)
            done[i] = True
        fused.scatter(data, starts, lengths, addresses)
    for info, read in zip(infos, done, strict=True):
        if not read:  # compressed or empty: alone, decompressed
            blob = f._blob(info, Section.DATA)
            address, target = place(info, len(blob))
            if address is None:
                raws.copy(info, target, blob)  # type: ignore[arg-type]
            else:
                fused.scatter(blob, [0], [len(blob)], [address])
    raws.finish()
