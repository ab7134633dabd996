"""State dicts from local files: ``torch.load(weights_only=True)`` or safetensors, unwrapped
from common checkpoint wrappers, and loaded strictly with a message that lists what does not
fit (used by :mod:`nqformat.zoo` for ``--weights`` and packaged weights)."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nqformat.errors import ModelSourceError

__all__ = ["SAFETENSORS_SUFFIX", "TORCH_SUFFIXES", "load_state_dict_file", "load_strict"]

#: file suffixes read with ``torch.load(weights_only=True)`` (no arbitrary pickle code runs).
TORCH_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt"})
SAFETENSORS_SUFFIX = ".safetensors"
#: checkpoint wrappers commonly put around a state dict (``{"state_dict": {...}}``).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: prefix added by ``nn.DataParallel``/DDP to every key.
DATA_PARALLEL_PREFIX = "module."
#: how many names a key-mismatch message lists.
MAX_LISTED = 5


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    for _ in range(2):  # {"state_dict": {...}} or {"model": {"state_dict": ...}} at most
        if _is_state_dict(obj):
            break
        inner = None
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj):
        raise ModelSourceError(
            f"{source}: not a state dict (expected a mapping of names to tensors, "
            f"got {type(obj).__name__})"
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in sd):
        sd = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load`` with
    ``weights_only=True``: no pickle code runs) or ``.safetensors``."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ModelSourceError(f"{p}: no such weights file")
    suffix = p.suffix.lower()
    try:
        if suffix == SAFETENSORS_SUFFIX:
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        elif suffix in TORCH_SUFFIXES:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise ModelSourceError(
                f"{p}: unknown weights format {suffix or '(no suffix)'!r}; expected "
                f"{', '.join(sorted(TORCH_SUFFIXES))} or {SAFETENSORS_SUFFIX}"
            )
    except ModelSourceError:
        raise
    except Exception as exc:  # torch/safetensors raise many unrelated types
        raise ModelSourceError(f"{p}: cannot read weights: {exc}") from exc
    return _unwrap(obj, str(p))


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what does not match."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (file vs model): {_listed(wrong)}")
    if problems:
        raise ModelSourceError(f"{source} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(dict(sd), strict=True)
