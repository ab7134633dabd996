"""Data-free input statistics of every Conv2d/Linear: what feeds it, and its predicted moments.

The BN-informed parameter fit (``nqformat.quant.refit_part_params(weights=, input_mean=)``)
needs, per quantized layer, the mean and variance of each input channel. Nothing is computed
from data: the module is traced symbolically (``torch.fx``) and moments are propagated along
the graph from the normalisation layers' affine parameters.

- A BatchNorm output is modelled per channel as ``N(beta, gamma²)`` (in eval mode BatchNorm
  maps its training distribution to exactly that mean and variance), a LayerNorm output (over
  the last axis) as ``N(bias, weight²)``.
- Elementwise activations map ``N(m, s²)`` to the exact moments of ``f(z)``: closed forms for
  identity, ReLU and ReLU6/hard-tanh style clips (rectified / clipped Gaussian), numerical
  quadrature on a fixed grid for SiLU, GELU, hard-swish, sigmoid, tanh. A second nonlinearity
  sees a Gaussian with the propagated moments (an approximation, recorded in the source).
- Residual sums add means and variances (independent terms); a scalar added or multiplied
  shifts/scales them; average pooling, padding, flatten, dropout and identities keep them
  (pooling: the spatial values are treated as fully correlated, so the variance is kept);
  channel concatenation concatenates them.
- Anything else (max pooling, attention, gating products, convolutions, the image) gives no
  prediction: the consumer falls back to plain least squares.

When the whole module cannot be traced, each child module is traced on its own (recursively):
statistics then start at the child's own normalisation layers and the layers whose input
comes from outside the child get none. :func:`trace_report` says which way each model went.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

__all__ = [
    "InputStats",
    "LayerStats",
    "gaussian_moments",
    "input_statistics",
    "trace_report",
]

F64 = np.float64
#: quadrature grid for activations without a closed form: ±8 standard deviations (the
#: Gaussian tail beyond is < 1e-15), 801 points (error ~1e-7 relative on SiLU/GELU moments)
_QUAD_HALF_WIDTH = 8.0
_QUAD_POINTS = 801


@dataclass(frozen=True)
class InputStats:
    """Predicted per-input-channel mean and variance (float64) of one layer's input."""

    mean: np.ndarray
    var: np.ndarray
    source: str  # how it was derived, e.g. "BatchNorm2d blocks.0.0.bn1 > ReLU6"


@dataclass(frozen=True)
class LayerStats:
    """Statistics for every Conv2d/Linear module reached, keyed by module identity."""

    traced: str  # "fx" (whole module), "fx-per-child" (fallback) or "none"
    error: str | None  # why whole-module tracing failed, if it did
    by_module: dict[int, InputStats] = field(default_factory=dict)
    reason: dict[int, str] = field(default_factory=dict)  # why a layer got none

    def for_module(self, module: nn.Module) -> InputStats | None:
        return self.by_module.get(id(module))


# -- activation moments ------------------------------------------------------------------------


def _phi(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isfinite(x), np.exp(-0.5 * np.minimum(x * x, 1e300)), 0.0) / math.sqrt(
            2 * math.pi
        )


def _cdf(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(np.asarray(x, dtype=F64))).numpy()


def _clip_moments(
    m: np.ndarray, s: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of clip(z, lo, hi), z ~ N(m, s²) (lo/hi may be ±inf)."""
    safe = np.where(s > 0, s, 1.0)
    with np.errstate(over="ignore"):  # a denormal s: the bound is infinitely far, as wanted
        a = np.where(s > 0, (lo - m) / safe, np.where(m >= lo, -np.inf, np.inf))
        b = np.where(s > 0, (hi - m) / safe, np.where(m <= hi, np.inf, -np.inf))
    pa, pb = _phi(a), _phi(b)
    ca, cb = _cdf(a), _cdf(b)
    inside = cb - ca
    lo_term = lo * ca if math.isfinite(lo) else 0.0
    hi_term = hi * (1.0 - cb) if math.isfinite(hi) else 0.0
    lo_sq = lo * lo * ca if math.isfinite(lo) else 0.0
    hi_sq = hi * hi * (1.0 - cb) if math.isfinite(hi) else 0.0
    with np.errstate(invalid="ignore"):
        apa = np.where(np.isfinite(a), a * pa, 0.0)
        bpb = np.where(np.isfinite(b), b * pb, 0.0)
    m1 = lo_term + hi_term + m * inside + s * (pa - pb)
    m2 = lo_sq + hi_sq + (m * m + s * s) * inside + 2 * m * s * (pa - pb) + s * s * (apa - bpb)
    det = np.clip(m, lo, hi)  # s == 0: a point mass
    m1 = np.where(s > 0, m1, det)
    var = np.where(s > 0, np.maximum(m2 - m1 * m1, 0.0), 0.0)
    return m1, var


def gaussian_moments(
    mean: np.ndarray, var: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``fn(z)``, ``z ~ N(mean, var)`` per channel, by quadrature."""
    t = np.linspace(-_QUAD_HALF_WIDTH, _QUAD_HALF_WIDTH, _QUAD_POINTS)
    p = np.exp(-0.5 * t * t)
    p /= p.sum()
    m = np.asarray(mean, dtype=F64).reshape(-1, 1)
    s = np.sqrt(np.maximum(np.asarray(var, dtype=F64), 0.0)).reshape(-1, 1)
    y = fn(m + s * t)
    m1 = y @ p
    return m1, np.maximum((y * y) @ p - m1 * m1, 0.0)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-np.clip(x, -700, 700)))


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * _cdf(x)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))


@dataclass(frozen=True)
class _Act:
    name: str
    clip: tuple[float, float] | None = None  # closed form
    fn: Callable[[np.ndarray], np.ndarray] | None = None  # quadrature


_IDENTITY = _Act("identity", clip=(-math.inf, math.inf))
_RELU = _Act("ReLU", clip=(0.0, math.inf))
_RELU6 = _Act("ReLU6", clip=(0.0, 6.0))
_SILU = _Act("SiLU", fn=_silu)
_GELU = _Act("GELU", fn=_gelu)
_GELU_TANH = _Act("GELU(tanh)", fn=_gelu_tanh)
_HSWISH = _Act("hard-swish", fn=_hardswish)
_SIGMOID = _Act("sigmoid", fn=_sigmoid)
_TANH = _Act("tanh", fn=np.tanh)


def _module_act(mod: nn.Module) -> _Act | None:
    """The elementwise function a module computes, or None if it is not one we model."""
    if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout2d)):
        return _IDENTITY
    if isinstance(mod, nn.ReLU6):
        return _RELU6
    if isinstance(mod, nn.Hardtanh):
        return _Act("Hardtanh", clip=(float(mod.min_val), float(mod.max_val)))
    if isinstance(mod, nn.ReLU):
        return _RELU
    if isinstance(mod, nn.SiLU):
        return _SILU
    if isinstance(mod, nn.GELU):
        return _GELU_TANH if mod.approximate == "tanh" else _GELU
    if isinstance(mod, nn.Hardswish):
        return _HSWISH
    if isinstance(mod, nn.Sigmoid):
        return _SIGMOID
    if isinstance(mod, nn.Tanh):
        return _TANH
    # Model zoos define their own activation modules (pytorchcv Swish/HSwish, timm DropPath):
    # recognised by class name, so tracing does not need to see through them.
    cls = type(mod).__name__.lower()
    if cls in {"droppath", "dropblock2d"}:
        return _IDENTITY
    if cls in {"hswish", "hardswish", "h_swish"}:
        return _HSWISH
    if cls in {"swish", "silu"}:
        return _SILU
    if cls in {"relu6"}:
        return _RELU6
    return None


_FUNCTION_ACTS: dict[Any, _Act] = {
    F.relu: _RELU,
    torch.relu: _RELU,
    F.relu6: _RELU6,
    F.silu: _SILU,
    F.gelu: _GELU,
    F.hardswish: _HSWISH,
    torch.sigmoid: _SIGMOID,
    torch.tanh: _TANH,
    F.dropout: _IDENTITY,
}
_METHOD_ACTS = {"relu": _RELU, "sigmoid": _SIGMOID, "tanh": _TANH}
_PASS_METHODS = {"contiguous", "clone", "float", "detach"}
_PASS_FUNCTIONS = {F.pad, torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d}
_POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.ZeroPad2d, nn.ConstantPad2d)


def _apply(act: _Act, st: _Stat) -> _Stat:
    if act is _IDENTITY:
        return st
    s = np.sqrt(np.maximum(st.var, 0.0))
    if act.clip is not None:
        mean, var = _clip_moments(st.mean, s, *act.clip)
    else:
        assert act.fn is not None
        mean, var = gaussian_moments(st.mean, st.var, act.fn)
    gauss = "" if st.gaussian else " (Gaussian approx.)"
    return _Stat(
        mean, var, st.dim, f"{st.source} > {act.name}{gauss}", gaussian=False, terms=st.terms
    )


# -- graph propagation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    mean: np.ndarray
    var: np.ndarray
    dim: int  # channel axis: 1 (NCHW / NC) or -1 (tokens, channels last)
    source: str
    gaussian: bool = True
    terms: int = 1  # norm outputs summed into this value (residual chains)


#: longer derivations are summarised ("residual sum of N terms") to keep META small
_MAX_SOURCE = 100


class _Tracer(fx.Tracer):
    """Stops at the layers whose semantics we model (incl. subclasses such as timm's
    Conv2dSame and BatchNormAct2d, which are not traceable inside)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            return True
        if _module_act(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def _norm_stat(mod: nn.Module, name: str) -> _Stat | None:
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        c = mod.num_features
        gamma = _np(mod.weight) if mod.weight is not None else np.ones(c)
        beta = _np(mod.bias) if mod.bias is not None else np.zeros(c)
        st = _Stat(beta, gamma * gamma, 1, f"{type(mod).__name__} {name}")
        # timm BatchNormAct2d: BatchNorm, then .drop, then .act inside the module
        for sub in ("drop", "act"):
            inner = getattr(mod, sub, None)
            if isinstance(inner, nn.Module):
                act = _module_act(inner)
                if act is None:
                    return None
                st = _apply(act, st)
        return st
    if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
        c = mod.normalized_shape[0]
        gamma = _np(mod.weight) if mod.weight is not None else np.ones(c)
        beta = _np(mod.bias) if getattr(mod, "bias", None) is not None else np.zeros(c)
        return _Stat(beta, gamma * gamma, -1, f"LayerNorm {name}")
    return None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy().reshape(-1)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _add(a: Any, b: Any, env: dict[fx.Node, _Stat | None]) -> _Stat | None:
    sa = env.get(a) if isinstance(a, fx.Node) else None
    sb = env.get(b) if isinstance(b, fx.Node) else None
    if sa is not None and sb is not None:
        if sa.mean.shape != sb.mean.shape or sa.dim != sb.dim:
            return None
        terms = sa.terms + sb.terms
        source = f"sum({sa.source}; {sb.source})"
        if len(source) > _MAX_SOURCE:
            source = f"residual sum of {terms} terms"
        return _Stat(
            sa.mean + sb.mean,
            sa.var + sb.var,
            sa.dim,
            source,
            gaussian=sa.gaussian and sb.gaussian,
            terms=terms,
        )
    if sa is not None and _is_scalar(b):
        return _Stat(sa.mean + b, sa.var, sa.dim, f"{sa.source} + {b:g}", sa.gaussian)
    if sb is not None and _is_scalar(a):
        return _Stat(sb.mean + a, sb.var, sb.dim, f"{sb.source} + {a:g}", sb.gaussian)
    return None


def _scale(st: _Stat | None, k: Any) -> _Stat | None:
    if st is None or not _is_scalar(k):
        return None
    return _Stat(st.mean * k, st.var * k * k, st.dim, f"{st.source} * {k:g}", st.gaussian)


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any], env: dict) -> _Stat | None:
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or dim != 1:
        return None
    parts = [env.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    if any(p is None or p.dim != 1 for p in parts):
        return None
    return _Stat(
        np.concatenate([p.mean for p in parts]),
        np.concatenate([p.var for p in parts]),
        1,
        "cat(" + "; ".join(p.source for p in parts) + ")",
        all(p.gaussian for p in parts),
    )


def _keeps_channels(node: fx.Node, st: _Stat) -> bool:
    """getitem/flatten/mean that does not touch the channel axis."""
    if node.op == "call_function" and node.target is operator.getitem:
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if st.dim == -1:
            return Ellipsis not in idx and len(idx) < 3  # e.g. x[:, 0] on [B, N, C]
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.op == "call_method" and node.target == "mean":
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if st.dim == 1:
            return all(isinstance(d, int) and d >= 2 for d in dims)
        return all(isinstance(d, int) and d == 1 for d in dims)  # token mean on [B, N, C]
    if (node.op == "call_method" and node.target == "flatten") or node.target is torch.flatten:
        return st.dim == 1 and dims == 1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        # x.view(x.size(0), -1): a flatten (channel-major). Other shapes (channel shuffles,
        # head splits) regroup channels: no prediction.
        return st.dim == 1 and len(node.args) == 3 and node.args[2] == -1
    return False


def _propagate(gm: fx.GraphModule, prefix: str, out: LayerStats) -> None:
    modules = dict(gm.named_modules())
    env: dict[fx.Node, _Stat | None] = {}
    for node in gm.graph.nodes:
        st: _Stat | None = None
        args = node.args
        first = env.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        if node.op == "call_module":
            mod = modules[node.target]
            name = f"{prefix}{node.target}"
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                _record(mod, first, out, name)
            elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                st = _norm_stat(mod, name)
            elif (act := _module_act(mod)) is not None:
                st = _apply(act, first) if first is not None else None
            elif isinstance(mod, _POOL_MODULES) and first is not None:
                st = first if first.dim == 1 else None
        elif node.op == "call_function":
            tgt = node.target
            if tgt in (operator.add, operator.iadd, torch.add) and len(args) == 2:
                st = _add(args[0], args[1], env)
            elif tgt in (operator.mul, operator.imul, torch.mul) and len(args) == 2:
                a0 = env.get(args[0]) if isinstance(args[0], fx.Node) else None
                a1 = env.get(args[1]) if isinstance(args[1], fx.Node) else None
                st = _scale(a0, args[1]) if a1 is None else _scale(a1, args[0])
            elif tgt in (operator.truediv,) and len(args) == 2 and _is_scalar(args[1]):
                st = _scale(first, 1.0 / args[1]) if args[1] else None
            elif tgt in _FUNCTION_ACTS and first is not None:
                st = _apply(_FUNCTION_ACTS[tgt], first)
            elif tgt is torch.cat:
                st = _cat(args, node.kwargs, env)
            elif first is not None and tgt in _PASS_FUNCTIONS and tgt is not torch.flatten:
                st = first if first.dim == 1 else None
            elif first is not None and _keeps_channels(node, first):
                st = first
        elif node.op == "call_method" and first is not None:
            if node.target in _METHOD_ACTS:
                st = _apply(_METHOD_ACTS[node.target], first)
            elif node.target in _PASS_METHODS or _keeps_channels(node, first):
                st = first
        env[node] = st


def _record(mod: nn.Module, st: _Stat | None, out: LayerStats, name: str) -> None:
    key = id(mod)
    if key in out.reason:  # a shared module fed twice: keep "none" once it had no prediction
        return
    if st is None:
        out.reason[key] = "input not predicted from a norm layer"
        out.by_module.pop(key, None)
        return
    c = len(st.mean)
    need = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
    mean, var = st.mean, st.var
    if isinstance(mod, nn.Linear) and st.dim == 1 and need != c and c and need % c == 0:
        # flatten of [B, C, H, W] is channel-major: each channel spans need/c features
        mean, var = np.repeat(mean, need // c), np.repeat(var, need // c)
    if len(mean) != need:
        out.reason[key] = f"predicted {len(mean)} channels, layer reads {need}"
        out.by_module.pop(key, None)
        return
    new = InputStats(mean.copy(), var.copy(), st.source)
    old = out.by_module.get(key)
    if old is not None and not (
        np.array_equal(old.mean, new.mean) and np.array_equal(old.var, new.var)
    ):
        out.reason[key] = "module reused with different inputs"
        del out.by_module[key]
        return
    out.by_module[key] = new


def _trace(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph)


def _per_child(module: nn.Module, prefix: str, out: LayerStats, depth: int) -> None:
    for name, child in module.named_children():
        qual = f"{prefix}{name}."
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            continue
        try:
            gm = _trace(child)
        except Exception:  # any tracing failure: go one level down
            if depth < 32:
                _per_child(child, qual, out, depth + 1)
            continue
        _propagate(gm, qual, out)


def input_statistics(module: nn.Module) -> LayerStats:
    """Predicted input moments of every Conv2d/Linear in ``module`` (see the module doc).

    Never runs the model; parameters are read, not changed. Layers without a prediction are
    absent from ``by_module`` (``reason`` says why, for those the graph reached).
    """
    was_training = module.training
    module.eval()  # dropout/drop-path branches trace as identities
    try:
        try:
            gm = _trace(module)
        except Exception as exc:  # torch.fx raises many types on dynamic code
            out = LayerStats(traced="fx-per-child", error=f"{type(exc).__name__}: {exc}"[:300])
            _per_child(module, "", out, 0)
            return out
        out = LayerStats(traced="fx", error=None)
        _propagate(gm, "", out)
        return out
    finally:
        module.train(was_training)


def trace_report(module: nn.Module) -> dict[str, Any]:
    """How many of the module's Conv2d/Linear layers got a prediction, and how it traced."""
    stats = input_statistics(module)
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with_stats = sum(1 for m in layers if stats.for_module(m) is not None)
    return {
        "traced": stats.traced,
        "error": stats.error,
        "layers": len(layers),
        "predicted": with_stats,
    }
