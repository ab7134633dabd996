"""The torch side of the per-layer sensitivity score (nqformat.quant.sensitivity): input
moments and propagation weights read from the module's graph, data-free.

- Input moments: the same per-input-channel predictions as the BN/LN-informed parameter fit
  (nqformat.torch.graphstats, spread over the weight rows as the converter does). A layer
  without a prediction (the stem conv reads the normalised image) counts its inputs as
  independent with unit variance, which is what ImageNet normalisation aims at.
- Propagation weight of output channel ``c``: when the layer's output feeds a BatchNorm and
  nothing else, ``γ_c² / (σ_c² + ε)`` (eval-mode BatchNorm multiplies a change of its input by
  ``γ_c / sqrt(σ_c² + ε)``); else 1.

:class:`Scorer` turns one layer's full-bit and part-bit weights into its gain; the converter
calls it for each layer as it quantizes it (nqformat.torch.convert) and the measurement tool for the
candidate scores (nqformat.bench.budget_curve).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch
from torch import fx, nn

from nqformat.quant.sensitivity import Score, layer_gain

__all__ = [
    "PROBE_IMAGES",
    "PROBE_INPUTS",
    "PROBE_SCORE",
    "PROBE_SEED",
    "ProbeInputs",
    "Scorer",
    "following_norm_weights",
    "part_full_weights",
    "probe_batch",
    "probe_gains",
    "probe_input_shape",
    "scorer",
]

F64 = np.float64


def following_norm_weights(module: nn.Module) -> tuple[dict[str, np.ndarray], str]:
    """Layer name -> ``γ²/(σ² + ε)`` per output channel, for each Conv2d/Linear whose only
    consumer is a BatchNorm; and how the graph was read (``"fx"``, or ``"none: <why>"`` when
    the module does not trace: then every layer gets weight 1)."""
    from nqformat.torch.graphstats import _trace  # the same leaf rules as the input statistics

    was_training = module.training
    module.eval()
    try:
        gm = _trace(module)
    except Exception as exc:  # torch.fx raises many types on dynamic code
        return {}, f"none: {type(exc).__name__}"[:100]
    finally:
        module.train(was_training)
    mods = dict(gm.named_modules())
    out: dict[str, np.ndarray] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], (nn.Conv2d, nn.Linear)):
            continue
        users = list(node.users)
        if len(users) != 1 or not _feeds_norm(users[0], node, mods):
            continue
        bn = mods[users[0].target]
        var = bn.running_var.detach().double().numpy()
        gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(var)
        weight = gamma * gamma / (var + bn.eps)
        if weight.shape == (mods[node.target].weight.shape[0],):
            out[str(node.target)] = weight
    return out, "fx"


def _feeds_norm(user: fx.Node, node: fx.Node, mods: Mapping[str, nn.Module]) -> bool:
    return (
        user.op == "call_module"
        and isinstance(mods[user.target], nn.modules.batchnorm._BatchNorm)
        and getattr(mods[user.target], "running_var", None) is not None
        and user.args[:1] == (node,)
    )


def part_full_weights(
    codes: np.ndarray,
    high: np.ndarray,
    scale_full: np.ndarray,
    offset_full: np.ndarray,
    scale_part: np.ndarray,
    offset_part: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(w_full, w_part)`` [C, L] in float64 from the n-bit codes, the high codes and the two
    (scale, offset) pairs (§7.2: ``w = code * scale[c] + offset[c]``)."""
    rows = codes.shape[0]
    q = codes.reshape(rows, -1).astype(F64)
    h = high.reshape(rows, -1).astype(F64)

    def col(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, F64).reshape(rows, 1)

    return q * col(scale_full) + col(offset_full), h * col(scale_part) + col(offset_part)


@dataclass(frozen=True)
class Scorer:
    """Everything one score needs besides the layer's weights."""

    score: Score
    inputs: Mapping[str, tuple[np.ndarray, np.ndarray]]  # layer -> (var, mean) per element
    norms: Mapping[str, np.ndarray] = field(default_factory=dict)  # layer -> g_c
    propagation: str = "fx"

    def gain(self, layer: str, w_full: np.ndarray, w_part: np.ndarray) -> float:
        """The layer's gain from its full-bit and part-bit weights [C, L]."""
        var, mean = self.inputs.get(layer, (None, None))
        r = np.asarray(w_full, F64) - np.asarray(w_part, F64)
        return layer_gain(self.score, r, var, mean, self.norms.get(layer), w_full)

    def source(self, layer: str) -> dict[str, bool]:
        """Which data-free inputs the layer's gain used (for META)."""
        return {"inputs": layer in self.inputs, "norm": layer in self.norms}


def scorer(
    module: nn.Module,
    layers: Iterable[str],
    score: Score | str,
    inputs: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Scorer:
    """A :class:`Scorer` for ``layers`` of ``module``. ``inputs`` (layer -> per-element input
    variance and mean, as the converter's BN fit spreads them) are predicted here if not given."""
    score = Score(score)
    names = list(layers)
    if inputs is None:
        from nqformat.torch.convert import predicted_inputs

        inputs = predicted_inputs(module, names)
    norms: dict[str, np.ndarray] = {}
    how = "not used"
    if score is Score.PROPAGATED:
        found, how = following_norm_weights(module)
        norms = {n: found[n] for n in names if n in found}
    return Scorer(score, dict(inputs), norms, how)


class ProbeInputs(StrEnum):
    """What the probe's synthetic images are (no data either way)."""

    #: independent N(0, 1) values in the model's normalised input space
    WHITE = "white"
    #: per image and channel, noise whose amplitude spectrum falls as 1/f over the two last
    #: axes (zero mean, unit variance): natural images have roughly that spectrum (smooth
    #: areas and edges at every scale), white noise puts most of its energy at the highest
    #: frequencies, which photos hardly have. Ranked better on real photos
    #: (docs/mixed-precision.md). Inputs with fewer than two axes get white noise.
    PINK = "pink"


#: the probe's synthetic batch: its size, kind and seed, so the same model gives the same gains
PROBE_IMAGES = 16
PROBE_INPUTS = ProbeInputs.PINK
PROBE_SEED = 0
#: META sensitivity.score of a probed file
PROBE_SCORE = "probe-kl"


def probe_batch(
    input_shape: tuple[int, ...],
    images: int = PROBE_IMAGES,
    seed: int = PROBE_SEED,
    inputs: ProbeInputs | str = PROBE_INPUTS,
) -> torch.Tensor:
    """The probe's seeded synthetic batch, float32 ``(images, *input_shape)``."""
    inputs = ProbeInputs(inputs)
    gen = torch.Generator().manual_seed(seed)
    shape = (images, *input_shape)
    if inputs is ProbeInputs.WHITE or len(input_shape) < 2:
        return torch.randn(shape, generator=gen)
    h, w = input_shape[-2:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    f = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    f[0, 0] = 1.0  # the mean is removed below: its amplitude does not matter
    spec = torch.complex(
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )
    img = torch.fft.ifft2(spec / f).real
    img = img - img.mean(dim=(-2, -1), keepdim=True)
    std = img.std(dim=(-2, -1), keepdim=True)
    return (img / torch.where(std > 0, std, 1.0)).float()


def probe_input_shape(metadata: Mapping[str, object]) -> tuple[int, ...] | None:
    """(channels, height, width) from META ``model.data_config.input_size``; None without it
    (the probe cannot run: the converter falls back to an analytic score)."""
    model = metadata.get("model")
    config = model.get("data_config") if isinstance(model, Mapping) else None
    size = config.get("input_size") if isinstance(config, Mapping) else None
    if isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) for v in size):
        return tuple(int(v) for v in size)
    return None


@torch.no_grad()
def probe_gains(
    module: nn.Module,
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    input_shape: tuple[int, ...],
    *,
    images: int = PROBE_IMAGES,
    seed: int = PROBE_SEED,
    inputs: ProbeInputs | str = PROBE_INPUTS,
) -> dict[str, float]:
    """Weight name -> the gain of upgrading that one layer, measured at the model's output on
    a synthetic batch (:func:`probe_batch`): ``KL(full || full with that one layer
    part-bit)``, the KL of the softmax over the last axis, mean over the batch: what the
    layer's part-bit error costs at the output, through every layer after it. (Measuring from
    the part-bit model instead, the KL that one upgrade removes, and greedy selections that
    re-measure after each pick, ranked worse on real photos: docs/mixed-precision.md.)
    ``weights`` maps each nested weight's state-dict name to its (full-bit, part-bit) values;
    ``module`` is not changed (the weights are passed with torch.func.functional_call)."""
    from torch.func import functional_call

    x = probe_batch(tuple(input_shape), images, seed, inputs)
    full = {k: wf for k, (wf, _) in weights.items()}
    part = {k: wp for k, (_, wp) in weights.items()}
    was_training = module.training
    module.eval()
    try:
        ref = torch.log_softmax(_logits(functional_call(module, full, (x,))), -1)

        def kl(params: Mapping[str, torch.Tensor]) -> float:
            out = torch.log_softmax(_logits(functional_call(module, dict(params), (x,))), -1)
            return float((ref.exp() * (ref - out)).sum(-1).mean())

        return {k: kl({**full, k: part[k]}) for k in weights}
    finally:
        module.train(was_training)


def _logits(out: object) -> torch.Tensor:
    """The model output as float64 rows over its last axis (a tuple/list: its first item)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the probe needs a tensor output, got {type(out).__name__}")
    return out.double().reshape(-1, out.shape[-1])
