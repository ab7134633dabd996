"""The transformers side: config, model class, the memory-free skeleton, and what each state-dict
entry becomes in the file (nested Linear/Embedding weight, tied alias, or raw).

Which tensors are Linear or Embedding weights is decided from a skeleton of the model built on
the ``meta`` device from the config: it has every module and shape but no storage, so it costs no
memory whatever the model's size.
"""

from __future__ import annotations

import fnmatch
import json
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nqformat.errors import NQError
from nqformat.hf.checkpoint import Checkpoint, CheckpointError

__all__ = [
    "Entry",
    "Plan",
    "Role",
    "build_module",
    "load_config",
    "make_plan",
    "model_class",
    "skeleton",
]


class Role(StrEnum):
    """What a state-dict entry becomes in the file."""

    LINEAR = "linear"  # an nn.Linear weight: NESTED, per output channel (rows)
    EMBEDDING = "embedding"  # a vocabulary table: NESTED, per row (one channel per token)
    RAW = "raw"  # norms, biases, position/type tables, kept-float weights: stored as they are


@dataclass(frozen=True)
class Entry:
    key: str  # the model's state-dict name, also the tensor's name in the file
    source: str  # the checkpoint's name for it
    role: Role
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]
    tied: dict[str, str]  # alias -> stored key: tied weights, stored once
    kept_float: tuple[str, ...]  # Linear modules left raw by keep_float patterns
    ignored: tuple[str, ...]  # checkpoint tensors the model has no place for
    fp32_bytes: int  # the model at 4 bytes per floating-point element (tied counted once)


def load_config(directory: pathlib.Path) -> tuple[dict[str, Any], Any]:
    """config.json as written (what META stores) and the transformers config object."""
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: a config must be a JSON object")
    return raw, config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> Any:
    """The transformers config for a config.json's contents (no file, no network)."""
    import transformers

    model_type = raw.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise CheckpointError(
            f"config model_type {model_type!r} is unknown to transformers "
            f"{transformers.__version__}"
        )
    return transformers.CONFIG_MAPPING[model_type].from_dict(dict(raw))


def model_class(config: Any) -> str:
    """The class named by the config's ``architectures`` (if transformers has it), else
    ``AutoModel``."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        if isinstance(name, str) and hasattr(transformers, name):
            return name
    return "AutoModel"


def _instantiate(class_name: str, config: Any) -> Any:
    import transformers

    if class_name == "AutoModel":
        return transformers.AutoModel.from_config(config)
    return getattr(transformers, class_name)(config)


def skeleton(class_name: str, config: Any) -> Any:
    """The model on the meta device: every module and shape, no storage."""
    import torch

    with torch.device("meta"):
        return _instantiate(class_name, config)


def _vocab_size(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def _tied_aliases(model: Any) -> dict[str, str]:
    """alias -> first name, for parameters reachable under several names (tied weights; the
    skeleton is tied exactly as ``tie_word_embeddings`` and ``_tied_weights_keys`` say)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def _checkpoint_name(key: str, group: Iterable[str], ckpt: Checkpoint, prefix: str) -> str | None:
    """The checkpoint's name for a model key: as is, or with the base model prefix added or
    removed (a ``BertModel`` from a ``BertForMaskedLM`` checkpoint), or under a tied alias."""
    for name in (key, *group):
        candidates = [name, f"{prefix}.{name}"] if prefix else [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
        for c in candidates:
            if c in ckpt:
                return c
    return None


def make_plan(
    model: Any,
    config: Any,
    ckpt: Checkpoint,
    *,
    keep_float: Iterable[str] = (),
    keep_embeddings_float: bool = False,
) -> Plan:
    """Every state-dict entry of ``model`` (a skeleton), in state-dict order, with its role and
    its tensor in the checkpoint. Raises CheckpointError if the checkpoint lacks one."""
    from torch import nn

    patterns = tuple(keep_float)
    vocab = _vocab_size(config)
    linear: set[str] = set()
    embedding: set[str] = set()
    kept: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                kept.append(name)
            else:
                linear.add(f"{name}.weight")
        elif (
            isinstance(mod, nn.Embedding)
            and mod.num_embeddings == vocab  # vocabulary tables only: position/type tables raw
            and not keep_embeddings_float
        ):
            embedding.add(f"{name}.weight")
    tied = _tied_aliases(model)
    groups: dict[str, list[str]] = {}
    for alias, key in tied.items():
        groups.setdefault(key, []).append(alias)
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    entries: list[Entry] = []
    missing: list[str] = []
    used: set[str] = set()
    fp32 = 0
    for key, tensor in model.state_dict().items():
        if key in tied:
            continue
        group = groups.get(key, [])
        names = {key, *group}
        if names & embedding:
            role = Role.EMBEDDING
        elif keep_embeddings_float and any(_is_vocab_table(model, n, vocab) for n in names):
            role = Role.RAW  # a tied LM head shares the table's fate: stored once, float
        elif names & linear:
            role = Role.LINEAR
        else:
            role = Role.RAW
        source = _checkpoint_name(key, group, ckpt, prefix)
        if source is None:
            missing.append(key)
            continue
        used.add(source)
        shape = tuple(int(d) for d in tensor.shape)
        if tensor.is_floating_point():
            fp32 += 4 * tensor.numel()
        entries.append(Entry(key, source, role, shape))
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{ckpt.directory}: {len(missing)} tensor(s) of {type(model).__name__} are not in "
            f"the checkpoint: {', '.join(missing[:5])}{more}"
        )
    ignored = tuple(n for n in ckpt.names() if n not in used)
    return Plan(tuple(entries), tied, tuple(kept), ignored, fp32)


def _is_vocab_table(model: Any, key: str, vocab: int | None) -> bool:
    from torch import nn

    module_name = key.rsplit(".", 1)[0]
    try:
        mod = model.get_submodule(module_name)
    except AttributeError:
        return False
    return isinstance(mod, nn.Embedding) and mod.num_embeddings == vocab


def _drop_aliases(aliases: frozenset[str]) -> Any:
    def hook(module: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for alias in aliases:
            state_dict.pop(prefix + alias, None)

    return hook


def build_module(meta: Mapping[str, Any], path: Any = None) -> Any:
    """The transformers model described by a file's META ``model`` object, in eval mode, with
    placeholder weights (skipped initialisation) for the runtime to fill.

    Tied weights come back tied (the config says so); their aliases are dropped from the
    module's ``state_dict()``, so the file's single copy fills both names.
    """
    from transformers.initialization import no_init_weights

    model_meta = meta.get("model") if "model" in meta else meta
    if not isinstance(model_meta, Mapping) or not isinstance(model_meta.get("config"), Mapping):
        raise NQError(f"{path}: META 'model' has no transformers 'config' to rebuild from")
    config = config_from_dict(model_meta["config"])
    class_name = str(model_meta.get("class") or model_class(config))
    with no_init_weights():
        model = _instantiate(class_name, config)
    model.tie_weights()  # skipped initialisation also skips tying; the config decides it
    tied = dict(model_meta.get("tied") or {})
    actual = _tied_aliases(model)
    if tied != {k: actual.get(k) for k in tied}:
        raise NQError(
            f"{path}: the rebuilt {class_name} does not tie {sorted(tied)} as the file records; "
            "the transformers version may differ from the one that wrote it"
        )
    if tied:
        model.register_state_dict_post_hook(_drop_aliases(frozenset(tied)))
    return model.eval()
