"""The codes-resident runtime: a module whose nested weights stay packed codes in the file's
mapping and become float32 only while their layer runs.

``nqformat.torch.load(path, mode, resident="codes")`` builds the architecture on the meta
device (no float32 weights are allocated), restores the RAW tensors (biases, norms) as the
float runtime does, and gives each layer with a NESTED weight a ``weight`` that is computed
from its HIGH blob (and LOW blob in full mode) by the fused kernel (nqformat.fused, spec §7.2),
with the same arithmetic as ``NQFile.read``: outputs are bit-identical to the float runtime.

How a layer gets its weight: the layer's class is swapped for a cached subclass whose
``weight`` is a property and whose ``forward`` first dequantizes into a per-thread scratch
buffer (under ``no_grad``/``inference_mode``; a fresh tensor when autograd may keep it), pins
it for the duration of the base class's forward and unpins it after (class attributes, not
hooks: nothing to register per layer, so a load costs less). Reading ``layer.weight`` outside
a forward gives a fresh dequantized tensor (or the cached one), and ``state_dict()`` returns
the dequantized weights. ``cache_bytes`` keeps the float32 weights of
the most recently used layers up to that many bytes (least recently used are dropped first;
``None``: keep all after first use).

Switching (:func:`switch_codes`) only maps or unmaps LOW and flips each layer's mode; no
float32 weight is rewritten (cached ones are dropped). Layers can be switched one by one.

Limits: CPU and float32 only (``module.to(...)``/``.half()``/``.cuda()`` raise NQError:
they would leave the codes behind); ``load_state_dict`` raises NQError rather than skip a
codes-resident weight. ``nqformat.torch.close(module)`` turns the weights into float32
parameters, after which the module is a plain one.
"""

from __future__ import annotations

import bisect
import collections
import copy
import itertools
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import nqformat
from nqformat import fused
from nqformat.container import spec
from nqformat.container.dequant import check_params_finite
from nqformat.container.reader import NQFile, TensorInfo
from nqformat.container.spec import Kind, Section
from nqformat.errors import NQError
from nqformat.torch._codes_data import RawWriter, owner_of, read_data
from nqformat.torch.runtime import (
    HANDLE_ATTR,
    Mode,
    NQRuntime,
    SwitchReport,
    _build,
    _check_mode,
    _reopen_if_completed,
    _targets,
    _walk,
    close,
)

__all__ = ["CodesRuntime", "load_codes", "switch_codes"]

# Tensors at least this large are dequantized by all cores (the kernel splits them); smaller
# ones on the calling thread, where a thread hand-off would cost more than it saves.
_THREADED_MIN_ELEMENTS = 1 << 20


@dataclass(eq=False)
class _Layer:
    """One NESTED weight: where its codes are, its parameters, its current mode."""

    tensor: str  # the file's tensor name, e.g. "features.0.weight"
    layer: str  # the module path, e.g. "features.0"
    attr: str  # "weight"
    info: TensorInfo
    part: tuple[np.ndarray, np.ndarray]  # (scale, offset) of the part-bit model
    full: tuple[np.ndarray, np.ndarray]
    mode: Mode
    high: Any = None  # the HIGH blob's stored bytes (a view of the file's read of HIGH)
    low: Any = None  # view of the LOW blob; only while this layer is in full mode
    bits: int | None = None  # a level above the lowest of a multi-level file (spec §14)

    @property
    def numel(self) -> int:
        return self.info.numel

    @property
    def nbytes(self) -> int:
        return 4 * self.info.numel


class CodesRuntime(NQRuntime):
    """The open file behind a codes-resident module: layer records, the float cache, scratch."""

    resident = "codes"

    def __init__(self, file: NQFile, mode: Mode, *, verify: bool, cache_bytes: int | None) -> None:
        super().__init__(file, mode, verify=verify)
        if cache_bytes is not None and (
            isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0
        ):
            raise NQError(f"cache_bytes must be a non-negative int or None, got {cache_bytes!r}")
        self.cache_bytes = cache_bytes
        self.layers: dict[str, _Layer] = {}  # by module path
        # tied weights (META model.tied, e.g. an LM head tied to the input embeddings): the
        # alias layer reads its source's record, so both follow one mode; by alias module path
        self.aliases: dict[str, _Layer] = {}
        self._cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._cached_bytes = 0
        self.streamed: set[str] = set()  # layers whose LOW blob was paged in alone
        self._lock = threading.Lock()
        self._local = threading.local()

    # --- modes -------------------------------------------------------------------------------

    @property  # type: ignore[override]
    def mode(self) -> str:
        """ "part" or "full" when every layer is in it, else "mixed"."""
        modes = {rec.mode for rec in self.layers.values()} or {self._mode}
        return modes.pop() if len(modes) == 1 else "mixed"

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = value

    def modes(self) -> dict[str, str]:
        return {name: rec.mode for name, rec in self.layers.items()}

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def weight_bytes(self, module: nn.Module) -> int:
        """Bytes the module's state holds: the packed codes its layers use now (HIGH, plus LOW
        of full-bit layers), their channel parameters, the cached float32 weights and every
        other state tensor. The per-thread scratch (the largest layer's float32, only during
        forwards) is not counted."""
        codes = sum(
            len(rec.high) + (len(rec.low) if rec.low is not None else 0) + 16 * rec.info.shape[0]
            for rec in self.layers.values()
        )
        others = sum(t.numel() * t.element_size() for name, t in _plain_state(module))
        return codes + others + self._cached_bytes

    # --- codes -------------------------------------------------------------------------------

    def attach_views(self, rec: _Layer) -> None:
        """(Re)take the zero-copy blob views of one layer from the current file."""
        rec.high = _packed_blob(self.file, rec.info, Section.HIGH)
        rec.low = _packed_blob(self.file, rec.info, Section.LOW) if rec.mode == "full" else None

    def values(self, rec: _Layer, out: np.ndarray) -> np.ndarray:
        """Dequantize ``rec`` in its current mode into ``out`` (float32, C-contiguous)."""
        f = self.file
        if rec.bits is not None:  # a level of several (spec §14): the reader's level path
            f.read(rec.tensor, bits=rec.bits, out=out.reshape(rec.info.shape))
            return out
        full = rec.mode == "full"
        scale, offset = rec.full if full else rec.part
        low = rec.low if full else None
        if rec.numel < _THREADED_MIN_ELEMENTS:
            # this thread, the C kernel called at once: the records were checked at load
            fused.dequantize_into(
                rec.high, low, f.h, f.l, rec.numel, rec.info.shape[0], scale, offset, out
            )
            return out
        fused.dequantize_packed(
            rec.high,
            low,
            h=f.h,
            lbits=f.l,
            count=rec.numel,
            rows=rec.info.shape[0],
            scale=scale,
            offset=offset,
            out=out.reshape(-1),
            # as many threads as torch's own ops use, so the layer's cost scales with them
            threads=torch.get_num_threads(),
        )
        return out

    def fresh(self, rec: _Layer) -> torch.Tensor:
        """The layer's weight in a tensor of its own (cached when the cache takes it)."""
        with self._lock:
            hit = self._cache.get(rec.layer)
            if hit is not None:
                self._cache.move_to_end(rec.layer)
                return hit
        t = torch.empty(rec.info.shape, dtype=torch.float32)
        self.values(rec, t.numpy())
        self._remember(rec, t)
        return t

    def for_forward(self, rec: _Layer) -> torch.Tensor:
        """The weight for one forward: cached, else in this thread's scratch when nothing can
        keep a reference past the forward (no autograd), else a fresh tensor."""
        if self._cache:  # empty whenever cache_bytes=0: no lock to take
            with self._lock:
                hit = self._cache.get(rec.layer)
                if hit is not None:
                    self._cache.move_to_end(rec.layer)
                    return hit
        if torch.is_grad_enabled() or self._fits_cache(rec):
            return self.fresh(rec)
        local = self._local
        if getattr(local, "busy", False):  # a layer running inside another's forward
            return self.fresh(rec)
        # per layer, a numpy and a torch view of this thread's scratch (made once)
        views = getattr(local, "views", None)
        if views is None:
            views = local.views = {}
            local.scratch = np.empty(max(r.numel for r in self.layers.values()), "f4")
        pair = views.get(rec.layer)
        if pair is None:
            view = local.scratch[: rec.numel].reshape(rec.info.shape)
            pair = views[rec.layer] = (view, torch.from_numpy(view))
        self.values(rec, pair[0])
        local.busy = True
        return pair[1]

    def release_scratch(self) -> None:
        self._local.busy = False

    def _fits_cache(self, rec: _Layer) -> bool:
        return self.cache_bytes is None or rec.nbytes <= self.cache_bytes

    def _remember(self, rec: _Layer, t: torch.Tensor) -> None:
        if not self._fits_cache(rec):
            return
        with self._lock:
            if rec.layer in self._cache:
                return
            self._cache[rec.layer] = t
            self._cached_bytes += rec.nbytes
            while self.cache_bytes is not None and self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= 4 * old.numel()

    def invalidate(self, names: Iterable[str] | None = None) -> None:
        with self._lock:
            for name in list(self._cache) if names is None else names:
                old = self._cache.pop(name, None)
                if old is not None:
                    self._cached_bytes -= 4 * old.numel()

    def detach(self, module: nn.Module, *, materialize: bool = True) -> None:
        """Turn the codes-backed layers of ``module`` back into plain layers: with float32
        weights dequantized in their current mode (``materialize``), else meta placeholders of
        the right shape (for a reload)."""
        for rec in self.layers.values():
            layer = module.get_submodule(rec.layer)
            slot = layer.__dict__.get(_SLOT)
            if slot is None or slot[0] is not self:
                continue
            if materialize:
                weight = self.fresh(rec).detach()
            else:
                weight = torch.empty(rec.info.shape, device="meta")
            layer.__class__ = layer._nq_base_class
            del layer.__dict__[_SLOT]
            _put_weight(layer, rec.attr, nn.Parameter(weight))
        for path, rec in self.aliases.items():
            layer = module.get_submodule(path)
            layer.__class__ = layer._nq_base_class
            del layer.__dict__[_SLOT]
            # tied again: the very Parameter its source now holds
            layer._parameters[rec.attr] = module.get_submodule(rec.layer)._parameters[rec.attr]
        self.aliases.clear()

    def close(self) -> None:
        self.invalidate()
        for rec in self.layers.values():
            rec.high = rec.low = None  # the mapping cannot close while views exist
        self._local = threading.local()
        super().close()


def _plain_state(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers that are not codes-backed."""
    return [
        (n, t)
        for n, t in [*module.named_parameters(), *module.named_buffers()]
        if t.device.type != "meta"
    ]


def _packed_blob(f: NQFile, info: TensorInfo, which: Section) -> Any:
    """The stored bytes of a HIGH or LOW blob: a view of the file's mapping (CRC-checked on
    first use when the file verifies), or the decompressed bytes of a zstd blob."""
    return f._blob(info, which)


# --- the weight property ------------------------------------------------------------------------

_PIN = "_nq_pins"  # thread-local {id(layer): tensor} on the runtime, while a forward runs
_SLOT = "_nq_codes"  # layer.__dict__: (runtime, record)
_CLASSES: dict[type, type] = {}


def _get_weight(layer: nn.Module) -> torch.Tensor:
    handle, rec = layer.__dict__[_SLOT]
    pins = getattr(handle._local, _PIN, None)
    if pins:
        pinned = pins.get(id(layer))
        if pinned is not None:
            return pinned
    return handle.fresh(rec)


def _set_weight(layer: nn.Module, value: Any) -> None:
    raise NQError(
        f"the weight of a codes-resident layer ({layer.__dict__[_SLOT][1].layer}) is its file's "
        "codes and cannot be assigned; load with resident='float' to edit weights"
    )


def _codes_forward(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The base class's forward with the layer's weight dequantized and pinned around it (also
    when the forward raises, so the scratch is free again)."""
    handle, rec = layer.__dict__[_SLOT]
    local = handle._local
    pins = getattr(local, _PIN, None)
    if pins is None:
        pins = {}
        setattr(local, _PIN, pins)
    pins[id(layer)] = handle.for_forward(rec)
    try:
        return layer._nq_base_class.forward(layer, *args, **kwargs)
    finally:
        if pins.pop(id(layer), None) is not None and not pins:
            handle.release_scratch()


def _codes_save_to_state_dict(
    layer: nn.Module, destination: dict[str, Any], prefix: str, keep_vars: bool
) -> None:
    """state_dict() gives the dequantized weight where a plain layer has its weight."""
    handle, rec = layer.__dict__[_SLOT]
    destination[prefix + rec.attr] = handle.fresh(rec).detach()
    layer._nq_base_class._save_to_state_dict(layer, destination, prefix, keep_vars)


def _refuse_conversion(where: str, fn: Any) -> None:
    """``module.to(...)``, ``.half()``, ``.cuda()`` ... reach ``_apply``: a conversion that
    leaves a CPU float32 tensor as it is (``.float()``, ``.cpu()``, ``share_memory()``) goes
    through; any other would leave the codes behind, so it is refused, plainly."""
    probe = fn(torch.zeros(1))
    if probe.device.type != "cpu" or probe.dtype is not torch.float32:
        raise NQError(
            f"{where}: a codes-resident module runs on the CPU in float32 (asked for "
            f"{probe.dtype} on {probe.device}); load it with resident='float', or call "
            "nqformat.torch.close(module) first (its weights become float32 parameters), then "
            "move or convert it"
        )


def _codes_apply(layer: nn.Module, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
    _refuse_conversion(layer.__dict__[_SLOT][1].layer, fn)
    return layer._nq_base_class._apply(layer, fn, *args, **kwargs)


def _root_apply(module: nn.Module, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """The loaded module's own ``_apply``: refuses before any submodule is converted."""
    if isinstance(module.__dict__.get(HANDLE_ATTR), CodesRuntime):
        _refuse_conversion("the module", fn)
    return module._nq_root_class._apply(module, fn, *args, **kwargs)


_ROOTS: dict[type, type] = {}


def _guard_root(module: nn.Module) -> None:
    """Give the loaded module a class whose ``_apply`` checks first (cached per class)."""
    cls = type(module)
    if "_nq_root_class" in cls.__dict__ or "_nq_base_class" in cls.__dict__:
        return  # guarded already, or a codes layer (whose own _apply checks)
    module.__class__ = _subclass(_ROOTS, cls, {"_apply": _root_apply, "_nq_root_class": cls})


def _codes_load_from_state_dict(
    layer: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any
) -> None:
    """load_state_dict cannot write into the file's codes: an error, not a silent skip."""
    rec = layer.__dict__[_SLOT][1]
    if prefix + rec.attr in state_dict:
        raise NQError(
            f"{rec.layer}: load_state_dict cannot write a codes-resident weight (it is the "
            "file's codes); load with resident='float', or call nqformat.torch.close(module) "
            "first, to load other weights"
        )
    layer._nq_base_class._load_from_state_dict(layer, state_dict, prefix, *args)


def _codes_deepcopy(layer: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """A deep copy is a plain layer holding the weight dequantized in its current mode (as
    ``close`` leaves it): two modules must not share one paging state. Tied layers share the
    copy's Parameter, as the original's names share one record."""
    handle, rec = layer.__dict__[_SLOT]
    base = layer._nq_base_class
    clone = base.__new__(base)
    memo[id(layer)] = clone
    state = {k: v for k, v in layer.__dict__.items() if k != _SLOT}
    clone.__dict__.update(copy.deepcopy(state, memo))
    weight = memo.get(id(rec))
    if weight is None:
        weight = memo[id(rec)] = nn.Parameter(handle.fresh(rec).detach().clone())
    _put_weight(clone, rec.attr, weight)
    return clone


def _put_weight(layer: nn.Module, attr: str, weight: nn.Parameter) -> None:
    """Give a plain layer its weight Parameter back, first among its parameters (as it was
    built: state_dict keeps its order)."""
    layer._parameters = {attr: weight, **layer._parameters}


def _subclass(cache: dict[type, type], cls: type, attrs: dict[str, Any]) -> type:
    """``cls`` with ``attrs`` on top, under its own name (one subclass per class, cached)."""
    sub = cache.get(cls)
    if sub is None:
        names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        sub = cache[cls] = type(cls.__name__, (cls,), {**attrs, **names})
    return sub


_CODES_ATTRS = {
    "weight": property(_get_weight, _set_weight, doc="dequantized from the codes"),
    "forward": _codes_forward,
    "_save_to_state_dict": _codes_save_to_state_dict,
    "_load_from_state_dict": _codes_load_from_state_dict,
    "_apply": _codes_apply,
    "__deepcopy__": _codes_deepcopy,
}


def _codes_class(cls: type) -> type:
    """``cls`` with ``weight`` read from the codes."""
    return _subclass(_CLASSES, cls, {**_CODES_ATTRS, "_nq_base_class": cls})


def _attach(layer: nn.Module, handle: CodesRuntime, rec: _Layer) -> None:
    """Back ``layer``'s weight by ``rec``'s codes."""
    layer._parameters.pop(rec.attr, None)  # the float32 (or meta) weight goes away
    layer.__dict__[_SLOT] = (handle, rec)
    layer.__class__ = _codes_class(type(layer))


def _attach_tied(
    modules: Mapping[str, nn.Module], handle: CodesRuntime, meta: Mapping[str, Any]
) -> None:
    """Back each tied alias of META ``model.tied`` (alias -> stored tensor) by its source's
    codes: the file stores a tied weight once, and the alias must not keep a stale copy."""
    model = meta.get("model")
    tied = model.get("tied") if isinstance(model, Mapping) else None
    for alias, source in (tied or {}).items():
        rec = handle.layers.get(str(source).rpartition(".")[0])
        if rec is None:
            continue  # a RAW source: restored into the Parameter both names share
        owner, path, attr = owner_of(modules, str(alias))
        if attr != rec.attr:
            raise NQError(f"META model.tied: {alias} cannot share {source}")
        _attach(owner, handle, rec)
        handle.aliases[path] = rec


# --- building the module --------------------------------------------------------------------------


def _skeleton(meta: Mapping[str, Any], f: NQFile) -> nn.Module:
    """The architecture on the meta device (no weights allocated). A model that computes
    non-persistent buffers at construction (not in the file) is built on the CPU instead,
    since those buffers cannot be restored from the file."""
    with torch.device("meta"):
        module = _build(meta, f.path)
    persistent = set(module.state_dict())
    if any(name not in persistent for name, _ in module.named_buffers()):
        module = _build(meta, f.path)
    return module


def _records(
    modules: Mapping[str, nn.Module],
    infos: list[TensorInfo],
    values: np.ndarray,
    sizes: list[int],
    mode: Mode,
) -> list[tuple[nn.Module, _Layer]]:
    """A layer record (and the layer) for each NESTED tensor; ``values``: their checked DATA
    blobs (``sizes`` bytes each) one after another (§7.2: scale_full, offset_full,
    scale_part, offset_part, float32 each), one array the records keep views of, checked
    finite at once (as NQFile.params checks each blob)."""
    bounds = list(itertools.accumulate((n // 4 for n in sizes), initial=0))
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        k = bisect.bisect_right(bounds, bad) - 1
        check_params_finite(values[bounds[k] : bounds[k + 1]], repr(infos[k].name))
    out = []
    seen: set[str] = set()
    for info, at in zip(infos, bounds, strict=False):
        owner, path, attr = owner_of(modules, info.name)
        if attr != "weight" or path in seen:
            raise NQError(
                f"{info.name}: the codes runtime serves nested tensors named '<layer>.weight'"
                "; load this file with resident='float'"
            )
        seen.add(path)
        c = info.shape[0]
        rec = _Layer(
            tensor=info.name,
            layer=path,
            attr=attr,
            info=info,
            part=(values[at + 2 * c : at + 3 * c], values[at + 3 * c : at + 4 * c]),
            full=(values[at : at + c], values[at + c : at + 2 * c]),
            mode=mode,
        )
        out.append((owner, rec))
    return out


def _check_cpu_float32(nested: list[TensorInfo], own: Mapping[str, torch.Tensor]) -> None:
    """The codes runtime gives float32 weights on the CPU: a module passed in whose nested
    weights have another dtype or device is refused before anything is written."""
    for info in nested:
        t = own[info.name]
        if not t.is_meta and (t.dtype is not torch.float32 or t.device.type != "cpu"):
            raise NQError(
                f"{info.name} is {t.dtype} on {t.device}; the codes-resident runtime (the "
                "default) runs float32 on the CPU: load with resident='float' to fill the "
                "module in its own dtype and device"
            )


def load_codes(
    path: Any,
    mode: Mode,
    *,
    module: nn.Module | None,
    verify: bool,
    act_quant: bool,
    cache_bytes: int | None,
) -> nn.Module:
    """``nqformat.torch.load(..., resident="codes")``; see the module docstring. ``path`` may
    be an open :class:`NQFile`, which the module then owns (closed here on failure).

    A load reads DATA once and HIGH once (``NQFile.blobs``: every blob still checked against
    its own CRC) and walks the module once: per-tensor reads and ``state_dict`` were most of a
    small model's load time (Lite0: 246 RAW tensors, 250 nested)."""
    f = path if isinstance(path, NQFile) else nqformat.open(path, verify=verify)
    try:
        target = module if module is not None else _skeleton(f.metadata, f)
        old = target.__dict__.get(HANDLE_ATTR)
        if isinstance(old, CodesRuntime):
            old.detach(target, materialize=False)  # its weights are about to be replaced
        close(target)  # a module loaded before lets go of its old file
        modules, own = _walk(target)
        _targets(target, f, own)
        nested = [info for info in f.tensors() if info.kind is Kind.NESTED]
        _check_cpu_float32(nested, own)
        handle = CodesRuntime(f, mode, verify=verify, cache_bytes=cache_bytes)
        sizes = [spec.params_length(info.shape[0], len(f.levels)) for info in nested]
        # the channel parameters of every layer in one array the records keep views of,
        # allocated before the RAW tensors: one allocation of its exact size
        params = np.empty(sum(sizes) // 4, np.float32)
        starts = itertools.accumulate(sizes, initial=0)
        slots = {i.index: (at, n) for i, at, n in zip(nested, starts, sizes, strict=False)}
        read_data(f, RawWriter(modules, own), params, slots)
        records = _records(modules, nested, params, sizes, mode)
        # HIGH in one read: its bytes stay (the codes the module runs on), one buffer for all
        infos = [rec.info for _, rec in records]
        highs = f.blobs(infos, Section.HIGH, piece=None)
        # full mode: LOW after DATA and HIGH (the blob order of §11 step 13), in one read
        lows = f.low_blobs(infos)[0] if mode == "full" else [None] * len(records)
        for (owner, rec), high, low in zip(records, highs, lows, strict=True):
            rec.high, rec.low = high, low
            handle.layers[rec.layer] = rec
            _attach(owner, handle, rec)
        _attach_tied(modules, handle, f.metadata)
        f.release_buffers()
        if act_quant:
            from nqformat.torch import actquant

            actquant.apply_from_metadata(target, f.metadata)
    except BaseException:
        f.close()
        raise
    setattr(target, HANDLE_ATTR, handle)
    _guard_root(target)
    weakref.finalize(target, handle.close)  # the file goes when the module does
    return target


def _stream_layers(handle: CodesRuntime, names: list[str]) -> int:
    """Page in only the LOW blobs of ``names``, each checked by its own CRC (the streamed-LOW
    rule, spec §7.1 and §11 step 13), not all of LOW; returns the bytes read. A blob whose CRC
    is wrong raises before any layer changes mode."""
    tensors = [handle.layers[n].info.name for n in names]
    paged = 0
    for _name, error in handle.file.stream_low(tensors):
        if error is not None:
            raise error
    for n in names:
        paged += handle.layers[n].info.low.length
        handle.streamed.add(n)
    return paged


def _page_in_all(handle: CodesRuntime) -> int:
    """Page all of LOW in (``NQFile.low_blobs``) and give every layer its LOW view, the
    layers streamed alone before included (the section supersedes their blobs); returns
    the bytes paged in."""
    records = list(handle.layers.values())
    lows, paged = handle.file.low_blobs(rec.info for rec in records)
    handle.streamed.clear()  # low_blobs dropped the blobs streamed alone
    for rec, low in zip(records, lows, strict=True):
        rec.low = low
    return paged


def switch_codes(
    handle: CodesRuntime, mode: Mode, layers: Iterable[str] | None, start: float
) -> SwitchReport:
    """Page LOW in or out and flip layer modes; no float32 weight is rewritten."""
    wanted = _check_mode(mode)
    if layers is None:
        names = list(handle.layers)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n not in handle.layers]
        if unknown:
            raise NQError(
                f"not a layer with a nested weight: {', '.join(map(repr, unknown[:3]))} "
                f"(see nqformat.torch.modes(module))"
            )
    changing = [n for n in names if handle.layers[n].mode != wanted]
    previous = handle.mode
    paged_in = paged_out = 0
    if wanted == "full" and changing:
        if not handle.file.low_resident:
            old = handle.file
            _reopen_if_completed(handle)
            if handle.file is not old:
                for rec in handle.layers.values():
                    handle.attach_views(rec)
            # the whole model: all of LOW in one read (checked against LOW.crc and each
            # blob's CRC, §11 step 13), which layers upgraded alone before use too
            all_low = layers is None
            paged_in = _page_in_all(handle) if all_low else _stream_layers(handle, changing)
        for n in changing:
            rec = handle.layers[n]
            if rec.low is None:
                rec.low = _packed_blob(handle.file, rec.info, Section.LOW)
            rec.mode = "full"
    else:
        for n in changing:
            rec = handle.layers[n]
            rec.low, rec.mode = None, "part"
        if changing and all(r.mode == "part" for r in handle.layers.values()):
            streamed = sum(handle.layers[n].info.low.length for n in handle.streamed)
            paged_out = handle.file.release_low() or streamed
            handle.streamed.clear()
    handle.invalidate(changing)
    handle.mode = wanted
    return SwitchReport(
        previous, handle.mode, paged_in, paged_out, len(changing), time.perf_counter() - start
    )
