"""Optional activation fake-quantization with the reference's data-free calibration.

NestQuant (like SQuant) quantizes the *inputs* of Conv2d/Linear layers per tensor, with ranges
calibrated on one random uniform [0, 1) batch (no data needed), run sequentially through the
already weight-quantized network (the part-bit one in the reference's ``--nest`` setting). See
docs/quantizer.md, "Activation ranges". This module:

- ``calibrate(module, bits)`` computes the ranges and returns an :class:`ActCalibration`;
- ``ActCalibration.to_metadata()`` / ``from_metadata()`` are the META key ``"activation"``;
- ``calibrate_file(path, bits)`` does it on the part-bit model of a ``.nq`` file;
- ``apply(module, calibration)`` fake-quantizes activations until ``handle.remove()``;
- ``fake_quantize`` is the runtime formula, exposed for tests and other runtimes.

Nothing here runs unless asked: loading a file never quantizes activations by itself.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nqformat.errors import MetadataError, NQError

__all__ = [
    "DEFAULT_SIGMA",
    "LAST_LAYER_BITS",
    "META_KEY",
    "ActCalibration",
    "ActQuantHandle",
    "ActRange",
    "apply",
    "apply_from_metadata",
    "calibrate",
    "calibrate_file",
    "calibration_batch",
    "compute_range",
    "fake_quantize",
    "quant_layers",
]

#: META key under which the calibration is stored (spec/metadata.md).
META_KEY = "activation"
#: the reference forces the input of the last Conv2d/Linear to 8 bits (docs/quantizer.md,
#: "Activation ranges").
LAST_LAYER_BITS = 8
#: sigma the reference's scripts use per activation bit width (SQuant run.sh: 12/14/25 for
#: 4/6/8 bits; NestQuant README: 25 at W8A8). Other widths need an explicit sigma.
DEFAULT_SIGMA: dict[int, float] = {4: 12.0, 6: 14.0, 8: 25.0}
#: below this width the sigma range is capped at max(A) (docs/quantizer.md, "Activation ranges").
SIGMA_CAP_BELOW_BITS = 6
#: signed tensors use sigma*std/1.25 (docs/quantizer.md, "Activation ranges").
SIGNED_SIGMA_DIVISOR = 1.25
#: the reference's calibration batch: torch.rand after manual_seed(0), not normalised.
CALIBRATION_SEED = 0
DEFAULT_BATCH_SIZE = 128
DEFAULT_INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)
#: same floor the weight quantizer puts under (max - min), so a zero-width range gives a finite
#: scale instead of inf/NaN (docs/quantizer.md step 1).
MIN_RANGE_WIDTH = 1e-8
MIN_BITS, MAX_BITS = 2, 16


@dataclass(frozen=True)
class ActRange:
    """Per-tensor range of one layer's input: quantize to ``bits`` over [lo, hi]."""

    lo: float
    hi: float
    bits: int
    signed: bool

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi < self.lo:
            raise NQError(
                f"activation range must be finite with lo <= hi, got [{self.lo}, {self.hi}]"
            )

    def to_list(self) -> list[Any]:
        return [self.lo, self.hi, self.bits, self.signed]


@dataclass(frozen=True)
class ActCalibration:
    """Result of :func:`calibrate`; what META ``"activation"`` stores."""

    bits: int
    sigma: float
    percent: float
    batch_size: int
    input_shape: tuple[int, ...]
    seed: int
    ranges: Mapping[str, ActRange]  # module name -> range, in forward order
    unquantized: tuple[str, ...] = ()  # layers whose input stays float (the first layer)
    fallback: tuple[str, ...] = ()  # layers where the sigma rule was undefined (see compute_range)
    calibrated_on: str = "part"  # which weights the network had during calibration
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready dict for META ``"activation"``."""
        return {
            "bits": self.bits,
            "sigma": self.sigma,
            "percent": self.percent,
            "batch_size": self.batch_size,
            "input_shape": list(self.input_shape),
            "seed": self.seed,
            "calibrated_on": self.calibrated_on,
            "layers": {name: r.to_list() for name, r in self.ranges.items()},
            "unquantized": list(self.unquantized),
            "fallback": list(self.fallback),
            **dict(self.extra),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ActCalibration:
        """Parse META ``"activation"``; malformed content raises :class:`MetadataError`."""
        if not isinstance(meta, Mapping):
            raise MetadataError(f"META {META_KEY!r} must be an object, got {type(meta).__name__}")
        try:
            layers = meta["layers"]
            if not isinstance(layers, Mapping):
                raise TypeError("'layers' must be an object")
            ranges: dict[str, ActRange] = {}
            for name, entry in layers.items():
                if not (isinstance(entry, list) and len(entry) == 4):
                    raise TypeError(
                        f"layer {name!r}: expected [lo, hi, bits, signed], got {entry!r}"
                    )
                lo, hi, bits, signed = entry
                if not (_is_number(lo) and _is_number(hi) and _is_int(bits)):
                    raise TypeError(f"layer {name!r}: lo/hi must be numbers and bits an integer")
                if not isinstance(signed, bool):
                    raise TypeError(f"layer {name!r}: signed must be true or false")
                ranges[name] = ActRange(float(lo), float(hi), int(bits), signed)
            known = {"bits", "sigma", "percent", "batch_size", "input_shape", "seed",
                     "calibrated_on", "layers", "unquantized", "fallback"}  # fmt: skip
            return cls(
                bits=int(meta["bits"]),
                sigma=float(meta.get("sigma", 0.0)),
                percent=float(meta.get("percent", 100.0)),
                batch_size=int(meta.get("batch_size", 0)),
                input_shape=tuple(int(d) for d in meta.get("input_shape", ())),
                seed=int(meta.get("seed", CALIBRATION_SEED)),
                ranges=ranges,
                unquantized=tuple(str(s) for s in meta.get("unquantized", ())),
                fallback=tuple(str(s) for s in meta.get("fallback", ())),
                calibrated_on=str(meta.get("calibrated_on", "part")),
                extra={k: v for k, v in meta.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, MetadataError):
                raise
            raise MetadataError(f"META {META_KEY!r} is malformed: {exc}") from exc


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_bits(bits: int) -> None:
    if not _is_int(bits) or not MIN_BITS <= bits <= MAX_BITS:
        raise NQError(f"activation bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def fake_quantize(x: torch.Tensor, r: ActRange) -> torch.Tensor:
    """Quantize-dequantize ``x`` with the reference's runtime formula (docs/quantizer.md,
    "Activation ranges").

    S = (2^b-1)/(hi-lo), Z = round(S*lo) + (2^(b-1) if signed else 0),
    q = clamp(round(S*x - Z), qmin, qmax), x_hat = (q + Z)/S; float32, rounding half to even.
    """
    levels = 2**r.bits - 1
    width = torch.tensor(max(r.hi - r.lo, MIN_RANGE_WIDTH), dtype=torch.float32)
    # true fp32 division (a Python-scalar numerator would become reciprocal()*levels, 1 ulp off)
    scale = torch.tensor(levels, dtype=torch.float32) / width
    zero = torch.round(scale * torch.tensor(r.lo, dtype=torch.float32))
    if r.signed:
        zero = zero + 2 ** (r.bits - 1)
        qmin, qmax = -(2 ** (r.bits - 1)), 2 ** (r.bits - 1) - 1
    else:
        qmin, qmax = 0, levels
    # same fp32 operations in the same order, in place to spare four full-size temporaries
    q = x.to(torch.float32) * scale
    q.sub_(zero).round_().clamp_(qmin, qmax)
    return q.add_(zero).div_(scale).to(x.dtype)


def compute_range(
    a: torch.Tensor, bits: int, *, sigma: float, percent: float = 100.0
) -> tuple[ActRange, bool]:
    """Range of one activation tensor by the reference's rule; returns (range, used_fallback).

    sigma > 0: alpha = sigma*std(A[A>0]) if A >= 0 (unsigned), sigma*std(A)/1.25 if signed, capped
    at max(A) below 6 bits; sigma == 0: alpha = percent/100 * max|A|. The reference gets NaN when
    the std is undefined (fewer than two positive values); here alpha falls back
    to max|A| instead, and the second value says so. An all-zero tensor gives the range [0, 0],
    which :func:`fake_quantize` treats as width 1e-8 (finite scale, zero maps to zero).
    """
    _check_bits(bits)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise NQError(f"sigma must be a finite number >= 0, got {sigma!r}")
    a = a.detach().to(torch.float32)
    if a.numel() == 0:
        raise NQError("cannot calibrate a range on an empty activation")
    lo_t, hi_t = torch.aminmax(a)  # NaN propagates into both, inf shows at one end
    a_min, a_max = float(lo_t), float(hi_t)
    if not (math.isfinite(a_min) and math.isfinite(a_max)):
        raise NQError("activation contains NaN or inf; cannot calibrate a range")
    signed = a_min < 0
    max_abs = max(abs(a_min), abs(a_max))
    fallback = False
    if sigma > 0:
        sample = a.flatten() if signed else a[a > 0]
        if sample.numel() < 2:
            alpha, fallback = max_abs, True
        else:
            std = float(torch.std(sample))  # unbiased, as the reference
            alpha = sigma * std / SIGNED_SIGMA_DIVISOR if signed else sigma * std
            if bits < SIGMA_CAP_BELOW_BITS:
                alpha = min(alpha, a_max)
            if not alpha > 0:  # constant positive values: std 0
                alpha, fallback = max_abs, True
    else:
        if not (math.isfinite(percent) and 0 < percent <= 100):
            raise NQError(f"percent must be in (0, 100] when sigma is 0, got {percent!r}")
        alpha = percent / 100.0 * max_abs
    # store float32 values: the runtime computes in float32 and JSON round-trips them exactly
    alpha = float(torch.tensor(alpha, dtype=torch.float32))
    lo = -alpha if signed else 0.0
    return ActRange(lo, alpha, bits, signed), fallback


def quant_layers(module: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """The Conv2d/Linear modules whose inputs get quantized, in ``named_modules()`` order."""
    patterns = tuple(exclude)
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
        and not any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


def calibration_batch(batch_size: int, input_shape: Sequence[int], seed: int) -> torch.Tensor:
    """The reference's data-free batch: uniform [0, 1) after manual_seed(seed), not normalised.

    A private generator gives the same numbers as ``torch.manual_seed`` on CPU without touching
    the global RNG.
    """
    if batch_size < 1:
        raise NQError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, *input_shape, generator=gen)


class ActQuantHandle:
    """Forward pre-hooks that fake-quantize layer inputs; ``remove()`` (or ``with``) undoes them."""

    def __init__(self, module: nn.Module, hooks: list[Any], layers: list[str]) -> None:
        self._module = module
        self._hooks = hooks
        self.layers = layers

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if getattr(self._module, _ATTR, None) is self:
            delattr(self._module, _ATTR)

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> ActQuantHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# the module attribute that marks hooks as installed, so they are never stacked twice
_ATTR = "_nq_actquant"


def _prehook(r: ActRange) -> Any:
    def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fake_quantize(args[0], r), *args[1:])

    return hook


def apply(module: nn.Module, calibration: ActCalibration) -> ActQuantHandle:
    """Fake-quantize the inputs of the calibrated layers of ``module`` (same names as calibrated).

    Layers listed neither in ranges nor in ``unquantized`` are an error: the file was calibrated
    for another network.
    """
    if getattr(module, _ATTR, None) is not None:
        raise NQError(
            "activation quantization is already applied to this module; remove() it first"
        )
    layers = dict(module.named_modules())
    missing = [n for n in calibration.ranges if n not in layers]
    if missing:
        raise NQError(f"activation ranges name layers the module does not have: {missing[:5]}")
    hooks = [
        layers[name].register_forward_pre_hook(_prehook(r))
        for name, r in calibration.ranges.items()
    ]
    handle = ActQuantHandle(module, hooks, list(calibration.ranges))
    setattr(module, _ATTR, handle)
    return handle


def apply_from_metadata(module: nn.Module, metadata: Mapping[str, Any]) -> ActQuantHandle:
    """:func:`apply` with the calibration stored in a file's META (``NQFile.metadata``)."""
    if META_KEY not in metadata:
        raise NQError(f"the file has no activation ranges (META key {META_KEY!r}); calibrate first")
    return apply(module, ActCalibration.from_metadata(metadata[META_KEY]))


@torch.no_grad()
def calibrate(
    module: nn.Module,
    bits: int,
    *,
    sigma: float | None = None,
    percent: float = 100.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = CALIBRATION_SEED,
    exclude: Iterable[str] = (),
    calibrated_on: str = "part",
) -> ActCalibration:
    """Data-free activation ranges for ``module`` as it is now (pass the part-bit model).

    One forward pass of :func:`calibration_batch`: each layer's input range is fixed the first
    time it is seen and the input is then quantized with it, so later ranges see the quantized
    activations of earlier layers (sequential, as the reference). The first layer's input stays
    float; the last layer's input uses 8 bits. ``module`` is put in eval mode and left unchanged.
    """
    _check_bits(bits)
    if sigma is None:
        if bits not in DEFAULT_SIGMA:
            raise NQError(
                f"no default sigma for {bits}-bit activations (known: {sorted(DEFAULT_SIGMA)}); "
                "pass sigma= (or sigma=0 with percent=)"
            )
        sigma = DEFAULT_SIGMA[bits]
    targets = quant_layers(module, exclude)
    if not targets:
        raise NQError("the module has no Conv2d/Linear layer whose input could be quantized")
    first, last = targets[0][0], targets[-1][0]
    ranges: dict[str, ActRange] = {}
    fallback: list[str] = []

    def make_hook(name: str, layer_bits: int) -> Any:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if name == first:
                return None
            r = ranges.get(name)
            if r is None:
                r, fell_back = compute_range(args[0], layer_bits, sigma=sigma, percent=percent)
                ranges[name] = r
                if fell_back:
                    fallback.append(name)
            return (fake_quantize(args[0], r), *args[1:])

        return hook

    hooks = [
        m.register_forward_pre_hook(make_hook(name, LAST_LAYER_BITS if name == last else bits))
        for name, m in targets
    ]
    try:
        module.eval()
        module(calibration_batch(batch_size, input_shape, seed))
    finally:
        for h in hooks:
            h.remove()
    # forward order is the order the ranges were fixed in; layers never reached get no range
    return ActCalibration(
        bits=bits,
        sigma=float(sigma),
        percent=float(percent),
        batch_size=batch_size,
        input_shape=tuple(int(d) for d in input_shape),
        seed=seed,
        ranges=ranges,
        unquantized=(first,),
        fallback=tuple(fallback),
        calibrated_on=calibrated_on,
    )


def calibrate_file(
    path: str | os.PathLike[str],
    bits: int,
    *,
    module: nn.Module | None = None,
    **options: Any,
) -> ActCalibration:
    """:func:`calibrate` on the part-bit model of a ``.nq`` file, as the reference does with
    ``--nest``. The batch's image size defaults to the file's META ``model.data_config``
    (224 otherwise). Store the result by converting again with
    ``convert_model(..., metadata={..., "activation": cal.to_metadata()})``."""
    from nqformat.torch.runtime import close, load, runtime

    model = load(path, mode="part", module=module)
    try:
        if "input_shape" not in options:
            options["input_shape"] = _input_shape(runtime(model).file.metadata)
        return calibrate(model, bits, calibrated_on="part", **options)
    finally:
        close(model)


def _input_shape(metadata: Mapping[str, Any]) -> tuple[int, ...]:
    """The model's input shape from META ``model.data_config.input_size``, if well formed."""
    model = metadata.get("model")
    config = model.get("data_config") if isinstance(model, Mapping) else None
    size = config.get("input_size") if isinstance(config, Mapping) else None
    if isinstance(size, list) and len(size) == 3 and all(_is_int(d) and d > 0 for d in size):
        return tuple(size)
    return DEFAULT_INPUT_SHAPE
