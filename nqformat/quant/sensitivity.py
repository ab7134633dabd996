"""Per-layer sensitivity: how much the model gains when one layer goes from part-bit to full-bit.

A nested file holds a family of models: any subset of layers can be upgraded by paging in only
their LOW blobs. To pick the subset that fits a byte budget without data, each layer gets a
*gain*, the predicted error that upgrading it removes, and layers are taken by gain per LOW
byte. Everything here is numpy arithmetic on one layer's arrays; the torch side
(nqformat.torch.sensitivity) supplies the input moments and the propagation weights from the
graph, and the converter stores the result in META ``sensitivity`` (spec/metadata.md).

The gain of a layer with weight rows ``w`` [C, L] is computed on the difference the upgrade
makes, ``r = w_full - w_part`` (both dequantized, §7.2). With inputs of per-element variance
``d`` and mean ``μ`` (as in the BN/LN-informed parameter fit, nqformat.quant.refit), the
expected squared change of output row ``c`` is ``e_c = Σ d r_c² + (Σ μ r_c)²``. The scores
(:class:`Score`) differ in what they weight ``e_c`` by; docs/mixed-precision.md measures them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from nqformat.errors import NQError

__all__ = [
    "DEFAULT_SCORE",
    "SCORE_METHOD",
    "Choice",
    "Score",
    "choose_within",
    "gain_order",
    "layer_gain",
    "layer_gains",
    "row_output_error",
]

F64 = np.float64


class Score(StrEnum):
    """How a layer's gain is scored (all data-free)."""

    #: Σ r²: the weight change alone, no input statistics
    WEIGHT = "weight"
    #: Σ_c e_c: expected squared change of the layer's outputs for the predicted inputs
    OUTPUT = "output"
    #: Σ_c g_c e_c with g_c = γ_c² / (σ_c² + ε) of the BatchNorm the output feeds: the change
    #: as the next layer sees it, after that norm (g_c = 1 where no norm follows)
    PROPAGATED = "propagated"
    #: Σ_c e_c / Σ_c s_c with s_c the predicted output energy of the full-bit row (the same
    #: formula on w instead of r): the noise-to-signal ratio the upgrade removes at the
    #: layer's output, which later layers pass on roughly unchanged
    RELATIVE = "relative"
    #: mean over rows of e_c / s_c: the same, each output channel weighted alike
    RELATIVE_ROWS = "relative-rows"


#: the analytic score the converter stores when it cannot run the probe (a model without an
#: input shape in META), chosen by measurement (docs/mixed-precision.md): never worse than file
#: order in KL on Lite0, where ``weight`` was better at 10-50 % of LOW but far worse at 75 %
DEFAULT_SCORE = Score.PROPAGATED
#: META sensitivity.method: bump when a score's arithmetic changes
SCORE_METHOD = "sensitivity-1"


def row_output_error(
    r: np.ndarray, var: np.ndarray | None = None, mean: np.ndarray | None = None
) -> np.ndarray:
    """``e_c = Σ d r_c² + (Σ μ r_c)²`` per row of ``r`` [C, L] (float64 [C]).

    ``var``/``mean`` are per-element input moments, [C, L] or broadcastable ([1, L]);
    without them the inputs count as independent with unit variance and zero mean."""
    r = np.asarray(r, dtype=F64)
    if r.ndim != 2:
        raise NQError(f"row_output_error needs a [C, L] array, got shape {r.shape}")
    sq = r * r
    e = (sq if var is None else np.broadcast_to(np.asarray(var, F64), r.shape) * sq).sum(axis=1)
    if mean is not None:
        m = np.einsum("ij,ij->i", np.broadcast_to(np.asarray(mean, F64), r.shape), r)
        e = e + m * m
    return e


def layer_gain(
    score: Score | str,
    r: np.ndarray,
    var: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    row_weight: np.ndarray | None = None,
    w: np.ndarray | None = None,
) -> float:
    """The gain of upgrading one layer under ``score`` (see :class:`Score`), a float >= 0.

    ``r`` [C, L] is ``w_full - w_part``; ``var``/``mean`` the input moments (all but
    ``weight``); ``row_weight`` [C] the propagation weight ``g_c`` (``propagated`` only;
    None: 1); ``w`` [C, L] the full-bit weights (``relative``, ``relative-rows``)."""
    score = Score(score)
    r = np.asarray(r, dtype=F64)
    if score is Score.WEIGHT:
        return float(np.sum(r * r))
    e = row_output_error(r, var, mean)
    if score in (Score.RELATIVE, Score.RELATIVE_ROWS):
        if w is None:
            raise NQError(f"score {score.value!r} needs the full-bit weights w")
        signal = row_output_error(np.asarray(w, F64).reshape(r.shape), var, mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            if score is Score.RELATIVE:
                ratio = float(e.sum() / signal.sum())
            else:
                ratio = float(np.mean(np.where(signal > 0, e / signal, 0.0)))
        return ratio if np.isfinite(ratio) else 0.0
    if score is Score.PROPAGATED and row_weight is not None:
        g = np.asarray(row_weight, F64).reshape(-1)
        if g.shape != e.shape:
            raise NQError(f"row_weight has {g.size} values for {e.size} rows")
        e = e * g
    total = float(np.sum(e))
    return total if np.isfinite(total) else 0.0


def gain_order(gains: Mapping[str, float], sizes: Mapping[str, int]) -> list[str]:
    """Names of ``sizes`` by gain per byte, largest first (ties: the given order of ``sizes``).

    A name without a gain counts as gain 0; a zero-byte blob with a positive gain comes first."""
    names = list(sizes)
    position = {n: i for i, n in enumerate(names)}

    def key(name: str) -> tuple[float, int]:
        gain, size = float(gains.get(name, 0.0)), sizes[name]
        density = gain / size if size > 0 else (np.inf if gain > 0 else 0.0)
        return (-density, position[name])

    return sorted(names, key=key)


@dataclass(frozen=True)
class Choice:
    """Which layers a budget buys: taken in ``order``, each that still fits."""

    chosen: tuple[str, ...]
    bytes: int  # LOW bytes of the chosen layers
    budget: int
    gain: float  # sum of the chosen layers' gains (0 where no gains are known)


def choose_within(
    order: Sequence[str],
    sizes: Mapping[str, int],
    budget: int,
    gains: Mapping[str, float] | None = None,
) -> Choice:
    """Walk ``order`` and take every layer whose LOW bytes still fit in what is left of
    ``budget`` (greedy by the order's priority; a layer too big is skipped, smaller ones after
    it may still fit). The bytes taken never exceed ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise NQError(f"the byte budget must be a non-negative integer, got {budget!r}")
    left = int(budget)
    chosen: list[str] = []
    for name in order:
        size = int(sizes[name])
        if size <= left:
            chosen.append(name)
            left -= size
    gain = sum(float((gains or {}).get(n, 0.0)) for n in chosen)
    return Choice(tuple(chosen), int(budget) - left, int(budget), gain)


def layer_gains(metadata: object) -> dict[str, float] | None:
    """Tensor name -> predicted gain from META ``sensitivity.gains``; None when absent or not
    well-formed (numbers >= 0 keyed by name)."""
    sens = metadata.get("sensitivity") if isinstance(metadata, dict) else None
    gains = sens.get("gains") if isinstance(sens, dict) else None
    if not isinstance(gains, dict):
        return None
    ok = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in gains.values()
    )
    return {str(k): float(v) for k, v in gains.items()} if ok else None
