"""Tokenizer (and sentence-transformers) files of a model directory, carried in META so a file
rebuilds a usable model without the original directory.

META is limited to 16 MiB (spec §6); the files go in whole when their JSON-encoded size fits
:data:`ASSET_BUDGET`, else none go in and META says which files must be supplied instead.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

from nqformat.errors import NQError

__all__ = ["ASSET_BUDGET", "ASSET_FILES", "collect", "load_tokenizer", "write_assets"]

#: the files looked for, relative to the model directory (transformers' and
#: sentence-transformers' names); binary ones (sentencepiece models) are stored base64
ASSET_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
#: at most this many bytes of JSON for the files, leaving the rest of META's 16 MiB (spec §6)
#: for the config and the quantizer's own entries
ASSET_BUDGET = 12 << 20


def collect(directory: pathlib.Path, budget: int = ASSET_BUDGET) -> dict[str, Any]:
    """META ``model.assets``: ``{"stored": true, "files": {name: {"text"|"base64": ...}}}``, or
    ``{"stored": false, "supply": [names], "reason": ...}`` when they exceed ``budget``."""
    files: dict[str, dict[str, str]] = {}
    for name in ASSET_FILES:
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            files[name] = {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            files[name] = {"base64": base64.b64encode(data).decode("ascii")}
    size = len(json.dumps(files, ensure_ascii=False).encode("utf-8"))
    if size <= budget:
        return {"stored": True, "files": files}
    return {
        "stored": False,
        "supply": sorted(files),
        "reason": (
            f"the tokenizer files take {size:,} bytes of JSON, more than the {budget:,} bytes "
            "META keeps for them (16 MiB in all, spec §6): supply these files from the original "
            "model directory to nqformat.hf.load_tokenizer(..., directory=DIR)"
        ),
    }


def write_assets(model_meta: Mapping[str, Any], directory: str | os.PathLike[str]) -> list[str]:
    """Write the files stored in META ``model.assets`` (and config.json) into ``directory``;
    returns the names written. NQError if the file did not store them."""
    assets = model_meta.get("assets") or {}
    if not assets.get("stored"):
        raise NQError(
            "this file does not carry its tokenizer files: "
            + str(assets.get("reason", "none were found in the converted directory"))
        )
    out = pathlib.Path(directory)
    written = []
    for name, entry in dict(assets.get("files") or {}).items():
        target = (out / name).resolve()
        if out.resolve() not in target.parents:
            raise NQError(f"META asset name {name!r} leaves the target directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if "base64" in entry:
            target.write_bytes(base64.b64decode(entry["base64"]))
        else:
            target.write_text(entry["text"], encoding="utf-8")
        written.append(name)
    (out / "config.json").write_text(json.dumps(model_meta["config"]), encoding="utf-8")
    return written


def load_tokenizer(
    path: str | os.PathLike[str], *, directory: str | os.PathLike[str] | None = None
) -> Any:
    """The tokenizer of a ``.nq`` file converted from a Hugging Face directory: from the files
    in its META, or from ``directory`` when the file could not carry them."""
    from transformers import AutoTokenizer

    if directory is not None:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    import nqformat

    with nqformat.open(path) as f:
        meta = f.metadata
    with tempfile.TemporaryDirectory(prefix="nq-tokenizer-") as tmp:
        write_assets(meta.get("model") or {}, tmp)
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
