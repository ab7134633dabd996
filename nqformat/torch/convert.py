"""nn.Module -> .nq file: NestQuant every Conv2d/Linear weight, store everything else raw.

The converter streams: it quantizes one layer, hands the codes to :class:`~nqformat.NQWriter`
(which spools them to disk) and drops them before the next layer, so the model is never held
twice. Tensors are written in ``state_dict()`` order, so the same model and options give the
same bytes.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

import nqformat
from nqformat.container import spec
from nqformat.errors import NQError, QuantizationError
from nqformat.quant import (
    DEFAULT_PARAMS,
    NestQuantResult,
    Params,
    PartParams,
    Rounding,
    inherited_part_params,
    nest_levels,
    nest_quantize,
    per_element_inputs,
    refit_part_params,
)
from nqformat.quant.sensitivity import gain_order as gain_order_of
from nqformat.report import fp32_bytes
from nqformat.torch._tensors import FLOAT_DTYPES, nq_dtype, to_numpy

__all__ = [
    "AUTO_H",
    "DEFAULT_PARAMS",
    "H_RULE_LARGE_BYTES",
    "H_RULE_SMALL_BYTES",
    "ConvertReport",
    "Params",
    "ProgressCallback",
    "auto_h",
    "convert_model",
    "predicted_inputs",
    "quantized_layers",
    "resolve_params",
]

#: ``h`` value that asks for the paper's rule of thumb (:func:`auto_h`).
AUTO_H = "auto"
_MIB = 1 << 20
#: Eq. 12 of the NestQuant paper: cut-offs on the FP32 model size D_fp32 at 30 MB and 300 MB.
#: The paper's MB is 2^20 bytes (its ResNet-18, 11.69 M parameters, is "44.7 MB").
H_RULE_SMALL_BYTES = 30 * _MIB
H_RULE_LARGE_BYTES = 300 * _MIB
QUANTIZED_TYPES = (nn.Conv2d, nn.Linear)


#: weight of the mean variance added to every input variance of the BN fit, so that a dead
#: channel (variance 0) cannot make the 2x2 normal equations singular
_VAR_FLOOR = 1e-6
#: META quant.params_fit.method: bump when the statistics or the fit change
PARAMS_FIT_METHOD = "graphstats-1"

#: ``sensitivity`` choice that measures the gains by running the model (the default, True, is
#: the analytic score)
SENSITIVITY_PROBE = "probe"

#: ``low_order`` choices: nested tensors in state_dict order, or most valuable first
LOW_ORDER_STATE_DICT = "state_dict"
LOW_ORDER_SENSITIVITY = "sensitivity"

#: called after each tensor is written: (tensor name, tensors done, tensors in total)
ProgressCallback = Callable[[str, int, int], None]


def auto_h(n: int, fp32_bytes: int) -> int:
    """The paper's rule of thumb for the nested bit width (Eq. 12, §4.2.2).

    ``h = n/2 + 1`` below 30 MB of FP32 weights (lightweight CNNs), ``n/2`` from 30 MB to
    300 MB (standard CNNs, small ViTs), ``n/2 - 1`` from 300 MB (large ViTs); ``n/2`` is rounded
    down for odd ``n`` and the result is clamped to the valid ``1 <= h <= n - 1``.
    """
    half = n // 2
    if fp32_bytes < H_RULE_SMALL_BYTES:
        h = half + 1
    elif fp32_bytes < H_RULE_LARGE_BYTES:
        h = half
    else:
        h = half - 1
    return max(spec.MIN_H, min(n - 1, h))


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion wrote, and how long it took."""

    path: pathlib.Path
    n: int
    h: int
    seconds: float
    file_size: int
    part_end: int  # bytes of the part-bit prefix
    full_end: int  # bytes of the full file
    nested_tensors: int
    raw_tensors: int
    nested_elements: int
    raw_elements: int
    kept_float: tuple[str, ...]  # Conv2d/Linear modules left raw by keep_float
    fp32_bytes: int  # the model at 4 bytes per element (paper's D_fp32)
    params: str = DEFAULT_PARAMS.value  # Params choice used
    stats_seconds: float = 0.0  # time spent predicting input statistics (params="bn")
    levels: tuple[int, ...] = ()  # widths of a file of several levels (spec §14), else ()

    @property
    def elements(self) -> int:
        return self.nested_elements + self.raw_elements

    @property
    def bits_per_weight(self) -> float:
        """Full file bits per stored element (all tensors, header and padding included)."""
        return 8 * self.full_end / self.elements if self.elements else 0.0

    @property
    def part_bits_per_weight(self) -> float:
        """Part-bit prefix bits per stored element."""
        return 8 * self.part_end / self.elements if self.elements else 0.0


def quantized_layers(
    module: nn.Module, keep_float: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Names of the Conv2d/Linear modules to quantize, and of those ``keep_float`` keeps raw.

    Every ``isinstance(m, (nn.Conv2d, nn.Linear))`` in ``named_modules()`` counts, including
    layers inside ModuleList/ModuleDict (the reference implementation only walks plain child
    attributes and silently leaves those in float). A module reachable under two names is listed
    under both, since ``state_dict()`` holds its weight under both.
    """
    patterns = tuple(keep_float)
    chosen: list[str] = []
    kept: list[str] = []
    for name, mod in module.named_modules(remove_duplicate=False):
        if not isinstance(mod, QUANTIZED_TYPES) or not name:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            kept.append(name)
        else:
            chosen.append(name)
    return chosen, kept


def _check_options(n: int, h: int, rounding: str, part_params: str, params: str) -> None:
    """Fail before anything is written (the quantizer would only fail at the first layer)."""
    for enum, value, what in (
        (Rounding, rounding, "rounding"),
        (PartParams, part_params, "part_params"),
        (Params, params, "params"),
    ):
        if value not in {m.value for m in enum}:
            choices = ", ".join(m.value for m in enum)
            raise QuantizationError(f"{what} must be one of {choices}, got {value!r}")
    if isinstance(n, bool) or isinstance(h, bool) or not isinstance(n, int):
        raise QuantizationError(f"n and h must be integers, got n={n!r}, h={h!r}")


def resolve_params(params: str | None, part_params: str | None) -> tuple[str, str]:
    """(params, part_params) from what the caller gave: ``part_params`` alone keeps its old
    meaning (refit = lsq, inherited = reference); neither gives :data:`DEFAULT_PARAMS`."""
    implied = {
        PartParams.REFIT.value: Params.LSQ.value,
        PartParams.INHERITED.value: Params.REFERENCE.value,
    }
    if params is None:
        if part_params is None:
            params = DEFAULT_PARAMS.value
        elif part_params in implied:
            params = implied[part_params]
        else:
            raise QuantizationError(f"part_params must be refit or inherited, got {part_params!r}")
    own = PartParams.INHERITED.value if params == Params.REFERENCE.value else "refit"
    if part_params is None:
        part_params = own
    elif params in {m.value for m in Params} and part_params != own:
        raise QuantizationError(f"params={params!r} uses part_params={own!r}, not {part_params!r}")
    return params, part_params


def _quant_meta(
    n: int,
    h: int,
    rounding: str,
    part_params: str,
    params: str,
    h_rule: str,
    keep_float: tuple[str, ...],
) -> dict[str, Any]:
    from nqformat import quant

    meta: dict[str, Any] = {
        "method": "nestquant",
        "n": n,
        "h": h,
        "l": n - h,
        "rounding": rounding,
        "part_params": part_params,
        "params": params,
        "h_rule": h_rule,
        "keep_float": list(keep_float),
        "layers": "every nn.Conv2d and nn.Linear weight (named_modules), minus keep_float",
    }
    version = getattr(quant, "QUANTIZER_VERSION", None)
    if version is not None:
        meta["quantizer_version"] = version
    return meta


@dataclass(frozen=True)
class _LayerInputs:
    """Per-element input variance and mean [C, L] of one weight, and where they came from."""

    var: np.ndarray
    mean: np.ndarray
    source: str


def _bn_inputs(module: nn.Module, layers: list[str]) -> tuple[dict[str, _LayerInputs], Any]:
    """Predicted input moments (per element of the weight rows) of each layer that has them."""
    from nqformat.torch import graphstats

    stats = graphstats.input_statistics(module)
    mods = dict(module.named_modules(remove_duplicate=False))
    out: dict[str, _LayerInputs] = {}
    for name in layers:
        mod = mods[name]
        st = stats.for_module(mod)
        if st is None:
            continue
        var = st.var + _VAR_FLOOR * max(float(st.var.mean()), 1e-12)
        shape = tuple(mod.weight.shape)
        groups = getattr(mod, "groups", 1)
        if groups == 1:  # every row reads the same inputs: one row [1, L] broadcasts
            taps = int(np.prod(shape[2:], dtype=np.int64))
            pair = (np.repeat(var, taps)[None, :], np.repeat(st.mean, taps)[None, :])
        else:
            pair = tuple(per_element_inputs(shape, groups, v) for v in (var, st.mean))
        out[name] = _LayerInputs(pair[0], pair[1], st.source)
    return out, stats


def predicted_inputs(
    module: nn.Module, layers: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (variance, mean) per weight element of its predicted inputs ([1, L] or
    [C, L]), for the layers that have a prediction (the BN fit's inputs, for other users)."""
    return {name: (li.var, li.mean) for name, li in _bn_inputs(module, layers)[0].items()}


def _sensitivity_meta(
    scorer: Any,
    probe_shape: tuple[int, ...] | None,
    gains: dict[str, float],
    low_bytes: dict[str, int],
) -> dict[str, Any]:
    """META ``sensitivity`` (spec/metadata.md): per-tensor gains and the LOW delivery order."""
    from nqformat.quant.sensitivity import SCORE_METHOD
    from nqformat.torch import sensitivity as sens

    how: dict[str, Any]
    if probe_shape is not None:
        how = {
            "score": sens.PROBE_SCORE,
            "probe": {
                "images": sens.PROBE_IMAGES,
                "inputs": sens.PROBE_INPUTS.value,
                "seed": sens.PROBE_SEED,
                "input_shape": list(probe_shape),
            },
        }
    else:
        how = {"score": scorer.score.value, "propagation": scorer.propagation}
    return {
        "method": SCORE_METHOD,
        **how,
        # 6 significant digits: enough to order layers, and META stays small
        "gains": {k: float(f"{v:.6g}") for k, v in gains.items()},
        "low_order": gain_order_of(gains, low_bytes),
    }


def _probe(
    module: nn.Module,
    items: list[tuple[str, Any]],
    nested_keys: set[str],
    quantize: Callable[[str, Any], tuple[NestQuantResult, tuple[np.ndarray, ...]]],
    shape: tuple[int, ...],
) -> dict[str, float]:
    """The probe's gains (nqformat.torch.sensitivity.probe_gains): a first pass quantizes every
    layer to hold its full-bit and part-bit weights (float32, twice the nested weights in
    memory, only during this pass), then the model runs on the synthetic batch."""
    import torch

    from nqformat.torch.sensitivity import part_full_weights, probe_gains

    weights = {}
    for key, tensor in items:
        if key in nested_keys:
            result, pairs = quantize(key, tensor)
            both = part_full_weights(result.w_int, result.w_high, *pairs)
            weights[key] = tuple(
                torch.from_numpy(w.astype(np.float32)).reshape(tensor.shape) for w in both
            )
            del result, both
    return probe_gains(module, weights, shape)


def _nested_in_order(items: list[tuple[str, Any]], order: list[str]) -> list[tuple[str, Any]]:
    """``items`` with the nested entries (the names in ``order``) refilled in ``order``, each
    raw entry where it was."""
    tensors = dict(items)
    queue = iter(order)
    wanted = set(order)
    out = []
    for key, tensor in items:
        if key in wanted:
            key = next(queue)
            tensor = tensors[key]
        out.append((key, tensor))
    return out


def _bn_fit(
    result: NestQuantResult, weight: np.ndarray, inputs: _LayerInputs
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale_full, offset_full, scale_part, offset_part) minimising the expected output error
    for the predicted inputs, on the unchanged codes (falls back per channel as the fit does)."""
    rows = weight.shape[0]
    w2 = weight.reshape(rows, -1)
    high = result.w_high.reshape(rows, -1)
    codes = result.w_int.reshape(rows, -1)
    inherited = inherited_part_params(result.scale, result.zero_point, result.l)[0]
    scale_part, offset_part = refit_part_params(w2, high, inherited, inputs.var, inputs.mean)
    scale_full, offset_full = refit_part_params(
        w2, codes, result.scale_full, inputs.var, inputs.mean
    )
    return scale_full, offset_full, scale_part, offset_part


def _bn_fit_levels(
    result: Any, weight: np.ndarray, inputs: _LayerInputs
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every level's (scale, offset) by the BN fit of :func:`_bn_fit`: the finest from the
    reference full-bit pair, every other from its inherited pair (spec §14.3)."""
    rows = weight.shape[0]
    w2 = weight.reshape(rows, -1)
    top = result.top
    scales, offsets = [], []
    for j, width in enumerate(result.widths):
        if j == len(result.widths) - 1:
            fallback = top.scale_full
        else:
            fallback = inherited_part_params(top.scale, top.zero_point, top.n - width)[0]
        codes = result.codes[j].reshape(rows, -1)
        pair = refit_part_params(w2, codes, fallback, inputs.var, inputs.mean)
        scales.append(pair[0])
        offsets.append(pair[1])
    return scales, offsets


def _level_widths(n: int, h: Any) -> tuple[int, ...]:
    """The widths of ``n`` and a sequence ``h`` of high widths (``--h 6,4``), coarsest first;
    () when ``h`` is a single width (spec §14: two levels are a 1.0 file)."""
    if isinstance(h, str) or not isinstance(h, Sequence):
        return ()
    from nqformat.quant.nest import check_widths

    widths = check_widths((n, *h))
    if widths[-1] != n:
        raise QuantizationError(f"every h must be below n={n}, got {tuple(h)}")
    return widths


def convert_model(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    n: int,
    h: int | str | Sequence[int],
    rounding: str = "squant",
    params: str | None = None,
    part_params: str | None = None,
    keep_float: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
    compress: bool = False,
    progress: ProgressCallback | None = None,
    sensitivity: bool | str = True,
    low_order: str = LOW_ORDER_STATE_DICT,
) -> ConvertReport:
    """Write ``module`` as a NestQuant ``.nq`` file at ``path`` (atomically).

    The ``.weight`` of every Conv2d/Linear module (see :func:`quantized_layers`) not matched by
    a ``keep_float`` fnmatch pattern is quantized with :func:`nqformat.quant.nest_quantize` and
    stored NESTED; every other ``state_dict()`` entry (biases, norm weights, BatchNorm running
    statistics and ``num_batches_tracked``, position embeddings, class tokens, and the weights
    kept float) is stored RAW with its dtype. ``h="auto"`` applies :func:`auto_h`.
    ``metadata`` is merged into META (give ``{"model": ...}`` from :func:`nqformat.zoo.build`
    so the runtime can rebuild the architecture); the converter adds ``"quant"``.
    ``progress(name, done, total)`` is called after each tensor. ``h`` given as several widths
    (``(6, 4)``) writes one file of every level, INT(n|6|4) (spec §14): the codes are nested
    with :func:`nqformat.quant.nest_levels` and every level gets its own fitted pair.

    ``params`` (:class:`Params`, default :data:`DEFAULT_PARAMS`) chooses the (scale, offset)
    pairs; the integer codes are the same for every choice. ``part_params`` is the older,
    narrower switch (``refit`` = ``lsq``, ``inherited`` = ``reference``); giving both must agree.
    META ``quant.params`` records the choice, ``quant.params_fit`` the BN fit's inputs.

    ``sensitivity`` (default True: the analytic score, milliseconds) scores each layer's
    part -> full gain data-free (nqformat.quant.sensitivity) and records the gains and the
    recommended LOW order in META ``sensitivity``, which ``nqformat.torch.upgrade_within`` and
    streamed LOW follow. ``sensitivity="probe"`` measures each gain at the output of the model
    run on a synthetic batch instead (nqformat.torch.sensitivity.probe_gains: better orders,
    docs/mixed-precision.md, at one forward of 8 inputs per layer; needs META
    ``model.data_config.input_size``). False records none.
    ``low_order="sensitivity"`` writes the nested tensors in that order (raw ones keep their
    places; the layers are quantized twice), so that LOW's bytes lie most valuable first and a
    front-to-back download (HTTP) stopped early holds the best layers; the default keeps
    ``state_dict()`` order.
    """
    start = time.perf_counter()
    kept_patterns = tuple(keep_float)
    sd = module.state_dict()
    fp32 = fp32_bytes((t.numel(), t.is_floating_point()) for t in sd.values())
    h_rule = "explicit"
    widths = _level_widths(n, h)
    if widths:
        h = widths[0]
    if h == AUTO_H:
        h = auto_h(n, fp32)
        h_rule = f"auto: paper Eq. 12 on D_fp32 = {fp32 / _MIB:.1f} MiB"
    if not isinstance(h, int):
        raise QuantizationError(f"h must be an integer or {AUTO_H!r}, got {h!r}")
    params, part_params = resolve_params(params, part_params)
    _check_options(n, h, rounding, part_params, params)
    layers, kept = quantized_layers(module, kept_patterns)
    nested_keys = {f"{name}.weight" for name in layers}
    odd = sorted(nested_keys - sd.keys())
    if odd:
        raise NQError(
            f"{odd[0]}: a Conv2d/Linear weight that is not a plain state_dict entry (parametrized "
            "or lazy?); exclude its module with keep_float"
        )

    meta = dict(metadata or {})
    meta["quant"] = {
        **dict(meta.get("quant") or {}),
        **_quant_meta(n, h, rounding, part_params, params, h_rule, kept_patterns),
    }
    levels = widths if len(widths) > 2 else ()
    if levels:
        meta["quant"]["levels"] = list(levels)
    bn_inputs: dict[str, _LayerInputs] = {}
    if params == Params.BN.value:
        t_stats = time.perf_counter()
        bn_inputs, stats = _bn_inputs(module, layers)
        meta["quant"]["params_fit"] = {
            "method": PARAMS_FIT_METHOD,
            "traced": stats.traced,
            "bn_layers": len(bn_inputs),
            "lsq_layers": len(layers) - len(bn_inputs),
            "layers": {
                f"{name}.weight": (
                    {"fit": "bn", "inputs": bn_inputs[name].source}
                    if name in bn_inputs
                    else {"fit": "lsq"}
                )
                for name in layers
            },
        }
        stats_seconds = time.perf_counter() - t_stats
    else:
        stats_seconds = 0.0
    scorer = None
    probe_shape = None
    if levels:
        if sensitivity == SENSITIVITY_PROBE or low_order == LOW_ORDER_SENSITIVITY:
            raise QuantizationError(
                "per-layer sensitivity and low_order='sensitivity' apply to two-level files: "
                "a file of several levels switches whole levels (spec §14)"
            )
        sensitivity = False  # the default score is not recorded for a file of several levels
    if sensitivity and layers:
        from nqformat.quant.sensitivity import DEFAULT_SCORE
        from nqformat.torch.sensitivity import probe_input_shape
        from nqformat.torch.sensitivity import scorer as make_scorer

        t_stats = time.perf_counter()
        if sensitivity == SENSITIVITY_PROBE:
            probe_shape = probe_input_shape(meta)
            if probe_shape is None:
                raise QuantizationError(
                    "sensitivity='probe' runs the model: it needs the input shape in META "
                    "model.data_config.input_size"
                )
        elif sensitivity is True:
            bn_sens = bn_inputs if params == Params.BN.value else _bn_inputs(module, layers)[0]
            inputs = {name: (li.var, li.mean) for name, li in bn_sens.items()}
            scorer = make_scorer(module, layers, DEFAULT_SCORE, inputs)
        else:
            raise QuantizationError(
                f"sensitivity must be True, False or 'probe', got {sensitivity!r}"
            )
        stats_seconds += time.perf_counter() - t_stats
    gains: dict[str, float] = {}
    low_bytes: dict[str, int] = {}
    by_key = {f"{name}.weight": name for name in layers}

    def quantize(key: str, tensor: Any) -> tuple[NestQuantResult, tuple[np.ndarray, ...]]:
        """The codes and (scale, offset) pairs of one nested weight; its gain when scored."""
        if tensor.dtype not in FLOAT_DTYPES:
            raise NQError(f"{key}: cannot quantize a {tensor.dtype} weight")
        weight = to_numpy(tensor.float())
        inputs = bn_inputs.get(by_key[key])
        # the BN fit starts from the inherited pair; LSQ's part refit would be wasted
        pp = PartParams.INHERITED.value if inputs is not None else part_params
        result = nest_quantize(weight, n, h, rounding=rounding, part_params=pp)
        pairs = (result.scale_full, result.offset_full, result.scale_part, result.offset_part)
        if inputs is not None:
            pairs = _bn_fit(result, weight, inputs)
        if scorer is not None and key not in gains:
            from nqformat.torch.sensitivity import part_full_weights

            gains[key] = scorer.gain(
                by_key[key], *part_full_weights(result.w_int, result.w_high, *pairs)
            )
        return result, pairs

    items = list(sd.items())
    if sensitivity and layers:
        from nqformat import bitpack

        low_bytes = {k: bitpack.packed_size(sd[k].numel(), n - h + 1) for k in nested_keys}
    if probe_shape is not None:
        t_stats = time.perf_counter()
        gains = _probe(module, items, nested_keys, quantize, probe_shape)
        stats_seconds += time.perf_counter() - t_stats
    if low_order == LOW_ORDER_SENSITIVITY:
        if not (sensitivity and layers):
            raise QuantizationError("low_order='sensitivity' needs sensitivity=True")
        for key, tensor in items:  # a first pass for the gains; the codes are made again below
            if key in nested_keys and key not in gains:
                quantize(key, tensor)
        items = _nested_in_order(items, gain_order_of(gains, low_bytes))
    elif low_order != LOW_ORDER_STATE_DICT:
        raise QuantizationError(
            f"low_order must be 'state_dict' or 'sensitivity', got {low_order!r}"
        )
    total = len(sd)
    nested_elements = raw_elements = nested_count = 0
    with nqformat.NQWriter(
        path, n=n, h=h, metadata=meta, compress=compress, widths=levels
    ) as writer:
        for done, (key, tensor) in enumerate(items, start=1):
            if key in nested_keys:
                if levels:
                    if tensor.dtype not in FLOAT_DTYPES:
                        raise NQError(f"{key}: cannot quantize a {tensor.dtype} weight")
                    weight = to_numpy(tensor.float())
                    inputs = bn_inputs.get(by_key[key])
                    # the BN fit starts from the inherited pair; LSQ's part refit would be wasted
                    pp = PartParams.INHERITED.value if inputs is not None else part_params
                    _add_levels(writer, key, weight, levels, rounding, pp, inputs, tensor)
                    del weight
                    nested_elements += tensor.numel()
                    nested_count += 1
                    if progress is not None:
                        progress(key, done, total)
                    continue
                result, pairs = quantize(key, tensor)
                writer.add_nested(
                    key,
                    w_high=result.w_high,
                    w_low=result.w_low,
                    scale_full=pairs[0],
                    offset_full=pairs[1],
                    scale_part=pairs[2],
                    offset_part=pairs[3],
                    dtype=nq_dtype(tensor, key),
                    w_int=result.w_int,
                )
                del result, pairs  # stream: one layer's codes in memory at a time
                nested_elements += tensor.numel()
                nested_count += 1
            else:
                dtype = nq_dtype(tensor, key)
                writer.add_raw(key, to_numpy(tensor), dtype=dtype if dtype == "BF16" else None)
                raw_elements += tensor.numel()
            if progress is not None:
                progress(key, done, total)
        if sensitivity and layers:
            sens = _sensitivity_meta(scorer, probe_shape, gains, low_bytes)
            writer.update_metadata({"sensitivity": sens})
        out = writer.close()
    with nqformat.open(out, verify=False) as f:
        part_end, full_end, size = f.part_end, f.full_end, f.file_size
    return ConvertReport(
        path=pathlib.Path(out),
        n=n,
        h=h,
        seconds=time.perf_counter() - start,
        file_size=size,
        part_end=part_end,
        full_end=full_end,
        nested_tensors=nested_count,
        raw_tensors=total - nested_count,
        nested_elements=nested_elements,
        raw_elements=raw_elements,
        kept_float=tuple(kept),
        fp32_bytes=fp32,
        params=params,
        stats_seconds=stats_seconds,
        levels=levels,
    )


def _add_levels(
    writer: Any,
    key: str,
    weight: np.ndarray,
    levels: tuple[int, ...],
    rounding: str,
    part_params: str,
    inputs: _LayerInputs | None,
    tensor: Any,
) -> None:
    """Quantize one weight at every level and add it (spec §14)."""
    result = nest_levels(weight, levels, rounding=rounding, part_params=part_params)
    scales, offsets = list(result.scales), list(result.offsets)
    if inputs is not None:
        scales, offsets = _bn_fit_levels(result, weight, inputs)
    writer.add_levels(
        key,
        w_high=result.codes[0],
        residuals=result.residuals,
        scales=scales,
        offsets=offsets,
        dtype=nq_dtype(tensor, key),
        w_int=result.codes[-1],
    )
