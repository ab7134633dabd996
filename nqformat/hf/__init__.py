"""Hugging Face model directories <-> ``.nq`` files.

``nqtool convert DIR`` streams a local Hugging Face checkpoint (config.json + safetensors or
``.bin`` shards) into a NestQuant file one tensor at a time, and ``nqformat.torch.load`` turns
such a file back into the ``transformers`` model (docs/transformers.md). This package is imported
only for those two cases; importing it costs nothing (``transformers`` and ``torch`` load lazily,
on first use of the functions below), and the reader side never imports it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

__all__ = [
    "CONFIG_FILE",
    "META_SOURCE",
    "build_module",
    "convert_directory",
    "is_hf_metadata",
    "is_model_dir",
    "load_tokenizer",
]

#: the file that marks a Hugging Face model directory
CONFIG_FILE = "config.json"
#: META ``model.source`` of a file converted from a Hugging Face directory
META_SOURCE = "transformers"

_LAZY = {
    "convert_directory": "nqformat.hf.convert",
    "build_module": "nqformat.hf.model",
    "load_tokenizer": "nqformat.hf.assets",
}


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding a ``config.json`` (what ``nqtool convert`` dispatches on)."""
    p = pathlib.Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def is_hf_metadata(model_meta: Any) -> bool:
    """True when a file's META ``model`` object says it came from a Hugging Face directory."""
    return isinstance(model_meta, dict) and model_meta.get("source") == META_SOURCE


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
