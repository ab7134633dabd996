"""Data-free LayerNorm-informed part-bit parameters: the transformer analogue of fitting to the
statistics a BatchNorm predicts.

A Linear fed by a LayerNorm sees ``x = gamma * z + beta`` with ``z`` normalised, so per input
channel ``E[x] ≈ beta`` and ``Var[x] ≈ gamma²`` (RMSNorm: ``beta = 0``). With those moments the
part-bit (scale, offset) of each output channel minimise the expected output error
``E[(r·x)²] = Σ Var·r² + (Σ E·r)²`` of the residual ``r = w - scale*H - offset`` instead of the
weight error (nqformat.quant.refit_part_params; docs/quantizer.md). Which norm feeds which Linear
is read from the module names of the architecture families below; other models keep plain least
squares.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from nqformat.quant import inherited_part_params, refit_part_params

__all__ = ["NormInput", "fit_part_params", "norm_inputs", "supported"]


@dataclass(frozen=True)
class NormInput:
    """The norm module (state-dict prefix) whose output is a Linear's input."""

    norm: str
    has_bias: bool  # LayerNorm (beta) or RMSNorm (no beta)


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _bert_attention_norm(m: re.Match[str]) -> str:
    # post-LN: a layer's attention reads the previous layer's output norm (the embeddings' norm
    # for layer 0)
    i = int(m["i"])
    if i == 0:
        return f"{m['p']}embeddings.LayerNorm"
    return f"{m['p']}encoder.layer.{i - 1}.output.LayerNorm"


_BERT: list[_Rule] = [
    (
        re.compile(r"^(?P<p>.*?)encoder\.layer\.(?P<i>\d+)\.attention\.self\.(query|key|value)$"),
        _bert_attention_norm,
    ),
    (
        re.compile(r"^(?P<p>.*?)encoder\.layer\.(?P<i>\d+)\.intermediate\.dense$"),
        lambda m: f"{m['p']}encoder.layer.{m['i']}.attention.output.LayerNorm",
    ),
]
_LLAMA: list[_Rule] = [
    (
        re.compile(r"^(?P<p>.*?)layers\.(?P<i>\d+)\.self_attn\.(q|k|v)_proj$"),
        lambda m: f"{m['p']}layers.{m['i']}.input_layernorm",
    ),
    (
        re.compile(r"^(?P<p>.*?)layers\.(?P<i>\d+)\.mlp\.(gate|up)_proj$"),
        lambda m: f"{m['p']}layers.{m['i']}.post_attention_layernorm",
    ),
]
#: model_type -> rules; families whose norm is ``gamma * z (+ beta)`` (Gemma's ``1 + gamma``
#: is not, and is left out)
_RULES: dict[str, list[_Rule]] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


def supported(model_type: str | None) -> bool:
    return model_type in _RULES


def norm_inputs(
    model_type: str | None, linear_modules: Iterable[str], state_keys: Iterable[str]
) -> dict[str, NormInput]:
    """Linear module name -> the norm feeding it, for the modules the rules recognise and whose
    norm weight exists in the state dict."""
    keys = set(state_keys)
    out: dict[str, NormInput] = {}
    for name in linear_modules:
        for pattern, norm_of in _RULES.get(model_type or "", []):
            m = pattern.match(name)
            if m is None:
                continue
            norm = norm_of(m)
            if f"{norm}.weight" in keys:
                out[name] = NormInput(norm, f"{norm}.bias" in keys)
            break
    return out


def fit_part_params(
    weight: np.ndarray,
    high: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    low_bits: int,
    gamma: np.ndarray,
    beta: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Part-bit (scale, offset) float32[C] for a Linear weight [C, I] whose input is the output
    of a norm with affine ``gamma`` (and ``beta``) [I]; ``scale``/``zero_point`` are the full-bit
    reference parameters (the fallback for a row with constant codes)."""
    w = np.asarray(weight, dtype=np.float32).reshape(weight.shape[0], -1)
    h = np.asarray(high).reshape(w.shape)
    g = np.asarray(gamma, dtype=np.float64).reshape(1, -1)
    var = np.maximum(g * g, 1e-12)  # a zero gamma would leave the fit no weight on that input
    mean = None if beta is None else np.asarray(beta, dtype=np.float64).reshape(1, -1)
    fallback, _ = inherited_part_params(scale, zero_point, low_bits)
    return refit_part_params(w, h, fallback, weights=var, input_mean=mean)
