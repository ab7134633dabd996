"""Tensors of a local Hugging Face checkpoint, read one at a time.

A directory holds ``model.safetensors``, or shards ``model-0000x-of-0000y.safetensors`` named by
``model.safetensors.index.json``, or the older ``pytorch_model.bin`` (sharded the same way). Each
safetensors read opens the shard, copies the one tensor out and closes the shard again, so its
mapping never accumulates resident pages: converting holds one tensor, not one shard, in memory.
``.bin`` shards are pickles and are opened with ``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nqformat.errors import NQError

__all__ = ["Checkpoint", "CheckpointError", "Format", "open_checkpoint"]


class CheckpointError(NQError):
    """A model directory whose weights cannot be found or read."""


class Format(StrEnum):
    SAFETENSORS = "safetensors"
    BIN = "bin"


#: (single file, shard index) per format, in the order they are looked for (transformers' names)
_LAYOUTS = (
    (Format.SAFETENSORS, "model.safetensors", "model.safetensors.index.json"),
    (Format.BIN, "pytorch_model.bin", "pytorch_model.bin.index.json"),
)


@dataclass(frozen=True)
class Checkpoint:
    """Where every tensor of a checkpoint lives (name -> shard file)."""

    directory: pathlib.Path
    format: Format
    shards: tuple[pathlib.Path, ...]
    locations: dict[str, pathlib.Path]

    def names(self) -> list[str]:
        return list(self.locations)

    def __contains__(self, name: object) -> bool:
        return name in self.locations

    @property
    def largest_shard_bytes(self) -> int:
        return max(p.stat().st_size for p in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards)

    def read(self, name: str) -> Any:
        """One tensor (a torch.Tensor of the checkpoint's dtype, owning its memory)."""
        path = self.locations.get(name)
        if path is None:
            raise CheckpointError(f"{self.directory}: no tensor {name!r} in the checkpoint")
        if self.format is Format.SAFETENSORS:
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    return f.get_tensor(name)
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot read {name!r}: {exc}") from exc
        return _bin_shard(path)[name].clone()  # own memory: the mapping may go

    def dtypes(self) -> dict[str, str]:
        """Tensor name -> dtype name as stored (from the headers, reading no data)."""
        out: dict[str, str] = {}
        if self.format is Format.SAFETENSORS:
            for shard in self.shards:
                for name, entry in _safetensors_header(shard).items():
                    if name != "__metadata__":
                        out[name] = str(entry.get("dtype"))
            return out
        for shard in self.shards:
            for name, t in _bin_shard(shard).items():
                out[name] = str(t.dtype).removeprefix("torch.")
        return out


_BIN_CACHE: dict[pathlib.Path, dict[str, Any]] = {}


def _bin_shard(path: pathlib.Path) -> dict[str, Any]:
    """A ``.bin`` shard, memory-mapped; one shard is kept open at a time."""
    shard = _BIN_CACHE.get(path)
    if shard is None:
        import torch

        _BIN_CACHE.clear()
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a loadable state dict: {exc}") from exc
        if not isinstance(shard, dict):
            raise CheckpointError(f"{path}: holds a {type(shard).__name__}, not a state dict")
        _BIN_CACHE[path] = shard
    return shard


def _safetensors_header(path: pathlib.Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: truncated safetensors header")
        length = int.from_bytes(head, "little")
        if length > os.path.getsize(path) - 8:
            raise CheckpointError(f"{path}: safetensors header longer than the file")
        try:
            return dict(json.loads(f.read(length)))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors header: {exc}") from exc


def _names_in(fmt: Format, path: pathlib.Path) -> Iterator[str]:
    if fmt is Format.SAFETENSORS:
        yield from (k for k in _safetensors_header(path) if k != "__metadata__")
    else:
        yield from _bin_shard(path)


def open_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    """Find the weights of a Hugging Face model directory (safetensors preferred over .bin)."""
    d = pathlib.Path(directory)
    for fmt, single, index in _LAYOUTS:
        if (d / index).is_file():
            try:
                weight_map = json.loads((d / index).read_text())["weight_map"]
                locations = {str(k): d / str(v) for k, v in dict(weight_map).items()}
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{d / index}: not a shard index ({exc})") from exc
            shards = tuple(dict.fromkeys(locations.values()))
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise CheckpointError(f"{d}: shard(s) named by {index} are missing: {missing}")
            return Checkpoint(d, fmt, shards, locations)
        if (d / single).is_file():
            path = d / single
            return Checkpoint(d, fmt, (path,), dict.fromkeys(_names_in(fmt, path), path))
    raise CheckpointError(
        f"{d}: no model.safetensors, pytorch_model.bin or shard index "
        "(model.safetensors.index.json) in this directory"
    )
