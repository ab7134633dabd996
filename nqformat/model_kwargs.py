"""The trust boundary for META ``model.kwargs`` (spec/metadata.md): a file's constructor
keywords are checked against a per-zoo allowlist with value ranges before any model constructor
sees them, so a hostile file cannot make the loader read another file, reach the network or
allocate without bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nqformat.errors import MetadataError

__all__ = ["MODEL_KWARGS", "check_model_kwargs"]

#: the constructor keywords a file's META may pass, per zoo, each with its allowed values: an
#: (int, lo, hi) range, a (float, lo, hi) range or a frozenset of strings. Anything else is
#: refused, in particular every keyword that names a file or a download (timm's
#: ``checkpoint_path``, ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``...):
#: a file must never make the loader read another file or reach the network.
MODEL_KWARGS: dict[str, dict[str, tuple[Any, ...]]] = {
    "pytorchcv": {
        "num_classes": (int, 1, 100_000),
        "in_channels": (int, 1, 64),
    },
    "timm": {
        "num_classes": (int, 1, 100_000),
        "in_chans": (int, 1, 64),
        "drop_rate": (float, 0.0, 1.0),
        "drop_path_rate": (float, 0.0, 1.0),
        "global_pool": (frozenset({"", "avg", "max", "avgmax", "catavgmax", "token", "map"}),),
    },
}


def check_model_kwargs(zoo: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The META ``model.kwargs`` of a file, checked against :data:`MODEL_KWARGS` before any
    constructor sees them (MetadataError otherwise). ``pretrained: false`` is dropped (the
    loader never downloads: the weights come from the file); ``pretrained: true`` is refused."""
    if not isinstance(kwargs, Mapping):
        raise MetadataError(f"META model.kwargs must be an object, got {type(kwargs).__name__}")
    allowed = MODEL_KWARGS[zoo]
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "pretrained":
            if value is not False:
                raise MetadataError(
                    f"META model.kwargs.pretrained is {value!r}: a file cannot ask for a "
                    "download; its weights are in the file"
                )
            continue
        rule = allowed.get(key)
        if rule is None:
            raise MetadataError(
                f"META model.kwargs has {key!r}, which {zoo} models are not built with here "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        if isinstance(rule[0], frozenset):
            if not isinstance(value, str) or value not in rule[0]:
                raise MetadataError(
                    f"META model.kwargs.{key} is {value!r}; allowed: {sorted(rule[0])}"
                )
        else:
            kind, lo, hi = rule
            # bool is an int in Python; a float kwarg also takes an integer literal such as 0
            ok_type = (
                isinstance(value, int) and not isinstance(value, bool)
                if kind is int
                else isinstance(value, int | float) and not isinstance(value, bool)
            )
            if not ok_type or not lo <= value <= hi:
                raise MetadataError(
                    f"META model.kwargs.{key} is {value!r}; must be {kind.__name__} in [{lo}, {hi}]"
                )
        checked[key] = value
    return checked
