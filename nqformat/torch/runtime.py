"""The switchable runtime: load a ``.nq`` file as an nn.Module and switch it between the
part-bit and the full-bit model in place.

The module keeps its file open through a small :class:`NQRuntime` handle (attribute
``_nq_runtime``), so :func:`switch` can page the LOW section in (recomposing ``q = H*2^l + L``)
and out again. Part mode reads nothing at or past ``part_end`` (spec §9): a part-bit-only file
(the prefix) loads as well as the full file, and completes to full mode once its LOW bytes have
been appended. :func:`close` releases the file.
"""

from __future__ import annotations

import os
import pathlib
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.graph import increment_version

import nqformat
from nqformat.container.reader import NQFile, TensorInfo
from nqformat.container.spec import Kind, Section
from nqformat.errors import NQError
from nqformat.torch._tensors import to_torch, writable_view

__all__ = [
    "HANDLE_ATTR",
    "MODES",
    "RESIDENT",
    "NQRuntime",
    "SwitchReport",
    "close",
    "load",
    "modes",
    "runtime",
    "switch",
]

Mode = Literal["part", "full"]
MODES: tuple[Mode, ...] = ("part", "full")
#: attribute of a loaded module that holds its :class:`NQRuntime`
HANDLE_ATTR = "_nq_runtime"
#: what a loaded module keeps resident: float32 weights, or the file's codes (resident.py)
RESIDENT = ("float", "codes")


@dataclass(frozen=True)
class SwitchReport:
    """What one :func:`switch` did."""

    from_mode: str
    to_mode: str
    bytes_paged_in: int  # LOW bytes mapped in (upgrade)
    bytes_paged_out: int  # LOW bytes released (downgrade)
    tensors: int  # layers switched (float runtime: weights rewritten)
    seconds: float

    @property
    def bytes_paged(self) -> int:
        """Bytes moved either way."""
        return self.bytes_paged_in + self.bytes_paged_out


class NQRuntime:
    """The open file behind a loaded module, and which model it currently holds."""

    resident = "float"

    def __init__(
        self, file: NQFile, mode: Mode, *, verify: bool = True, bits: int | None = None
    ) -> None:
        self.file = file
        self.mode: Mode = mode
        self.verify = verify
        #: the width of the level held (spec §14): the lowest for "part", the highest for "full"
        self.bits = bits if bits is not None else _end_bits(file, mode)
        self.nested = tuple(t.name for t in file.tensors() if t.kind is Kind.NESTED)

    @property
    def path(self) -> pathlib.Path:
        return self.file.path

    def modes(self) -> dict[str, str]:
        """Each layer with a nested weight (module path) and the model it holds."""
        return {name.rpartition(".")[0]: _label(self.file, self.bits) for name in self.nested}

    def weight_bytes(self, module: nn.Module) -> int:
        """Bytes the module's state holds: every state tensor (float32 weights included)."""
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())

    def close(self) -> None:
        self.file.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        # A copied module is a plain module: two modules must not share one paging state.
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {str(self.path)!r} mode={self.mode}>"


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise NQError(f"mode must be 'part' or 'full', got {mode!r}")
    return mode  # type: ignore[return-value]


def _walk(module: nn.Module) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """Every submodule by path (as ``named_modules(remove_duplicate=False)``) and what
    ``module.state_dict(keep_vars=True)`` holds, in one walk where no module customises its
    state dict (hooks, ``_save_to_state_dict``, extra state); else ``state_dict`` itself.
    ``state_dict``'s recursion costs several microseconds a module: a large part of a small
    model's load. Depth first with a stack, each module's own state before its children's,
    the order of ``state_dict``."""
    modules: dict[str, nn.Module] = {}
    own: dict[str, torch.Tensor] = {}
    stack = [("", module)]
    while stack:
        path, m = stack.pop()
        cls = type(m)
        plain = _PLAIN.get(cls)
        if plain is None:
            plain = _PLAIN[cls] = (
                cls._save_to_state_dict is nn.Module._save_to_state_dict
                and cls.get_extra_state is nn.Module.get_extra_state
            )
        d = m.__dict__
        if not plain or d["_state_dict_hooks"] or d["_state_dict_pre_hooks"]:
            return (
                dict(module.named_modules(remove_duplicate=False)),
                module.state_dict(keep_vars=True),
            )
        modules[path] = m
        prefix = path + "." if path else ""
        for name, p in d["_parameters"].items():
            if p is not None:
                own[prefix + name] = p
        buffers = d["_buffers"]
        if buffers:
            skip = d["_non_persistent_buffers_set"]
            for name, b in buffers.items():
                if b is not None and name not in skip:
                    own[prefix + name] = b
        children = d["_modules"]
        if children:
            stack += [(prefix + n, c) for n, c in reversed(children.items()) if c is not None]
    return modules, own


#: module class -> True when its state dict is its parameters and persistent buffers only
_PLAIN: dict[type, bool] = {}


def _end_bits(f: NQFile, mode: str) -> int:
    """The width "part" (lowest level) or "full" (highest level) names in ``f``."""
    return f.levels[0] if mode == "part" else f.levels[-1]


def _label(f: NQFile, bits: int) -> str:
    """ "part", "full", or "<bits>-bit" for a level between them (spec §14)."""
    if bits == f.levels[0]:
        return "part"
    return "full" if bits == f.levels[-1] else f"{bits}-bit"


def _wanted_bits(f: NQFile, mode: str | None, bits: int | None) -> int:
    """The level asked for: ``bits`` (one of ``f.levels``) or the end ``mode`` names."""
    if bits is None:
        return _end_bits(f, _check_mode(mode if mode is not None else "part"))
    if isinstance(bits, bool) or bits not in f.levels:
        raise NQError(f"bits={bits!r} is not one of the file's levels {f.levels}")
    return bits


def _targets(
    module: nn.Module, f: NQFile, own: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The module's state tensors (the module's own, written in place), checked against the
    file; ``own`` as :func:`_walk` gives it."""
    own = dict(_walk(module)[1] if own is None else own)
    infos = f.tensors()
    # the usual case in one pass: each of the file's (distinct) names found with its shape,
    # and no other name in the module
    if len(own) == len(infos) and all(
        (t := own.get(i.name)) is not None and t.shape == i.shape for i in infos
    ):
        return own
    names = {i.name for i in infos}
    missing = [k for k in own if k not in names]
    unexpected = [i.name for i in infos if i.name not in own]
    wrong = [
        f"{i.name} {i.shape} vs {tuple(t.shape)}"
        for i in infos
        if (t := own.get(i.name)) is not None and t.shape != i.shape
    ]
    problems = []
    for label, items in (
        ("missing from the file", missing),
        ("not in the module", unexpected),
        ("shape (file vs module)", wrong),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise NQError(f"{f.path} does not fit the module: " + "; ".join(problems))
    return own


@torch.no_grad()
def _fill(
    own: Mapping[str, torch.Tensor],
    f: NQFile,
    infos: Iterable[TensorInfo],
    mode: Mode,
    bits: int | None = None,
) -> None:
    """Write each tensor's values from the file into the module's tensor of that name."""
    written = []
    for info in infos:
        target = own[info.name]
        stored = info.dtype.name if info.kind is Kind.RAW else "F32"
        view = writable_view(target, stored)
        if view is None:
            values = f.read(info.name, mode, bits=bits)
            target.copy_(to_torch(values, stored).reshape(target.shape))
        else:
            # straight into the module's memory: no float32 temporary, no second copy
            f.read(info.name, mode, out=view, bits=bits)
            written.append(target)
    increment_version(written)  # as copy_ would: autograd sees the writes
    f.release_buffers()  # the file stays open for switching; its code buffers need not


def _build(meta: Mapping[str, Any], path: pathlib.Path) -> nn.Module:
    model = meta.get("model")
    if not isinstance(model, Mapping):
        raise NQError(
            f"{path}: META has no 'model' object to rebuild the architecture from; build the "
            "module yourself and pass it with module="
        )
    if model.get("source") == "transformers":  # a Hugging Face directory (nqformat.hf)
        from nqformat.hf.model import build_module

        return build_module(meta, path)
    from nqformat import zoo

    return zoo.instantiate(model)


def load(
    path: str | os.PathLike[str],
    mode: str = "part",
    *,
    module: nn.Module | None = None,
    verify: bool = True,
    act_quant: bool = False,
    resident: str = "codes",
    cache_bytes: int | None = 0,
    bits: int | None = None,
    budget: int | None = None,
) -> nn.Module:
    """Load a ``.nq`` file as an nn.Module holding the part-bit or the full-bit model.

    ``path`` may be an http(s) URL (``nqformat.open`` fetches byte ranges, docs/remote.md):
    part mode then downloads ``[0, part_end)`` only, and :func:`switch` to full fetches LOW.

    Without ``module`` the architecture is rebuilt from META ``model`` (zoo, arch, kwargs;
    nothing is downloaded) and returned in eval mode; with ``module`` the weights are loaded
    into it in place. Every state-dict entry must match a tensor of the file by name and shape.
    Values are written straight into the module's tensors where their memory allows it (CPU,
    contiguous, the file's dtype; float32 for nested weights), else copied in. Part mode reads
    no byte of LOW. The file stays open until :func:`close`.

    ``verify`` (default True) checks each blob's CRC as it is first read and LOW's CRC when it
    is paged in (spec §11 step 13). Pass ``verify=False`` only for a file already checked
    (e.g. by ``nqtool verify``) that cannot have changed since: it saves one CRC pass over the
    bytes loaded (about 10 ms for ResNet-101's 35 MB part-bit prefix here). The header is
    always checked.

    ``act_quant`` (default False) also fake-quantizes the inputs of the Conv2d/Linear layers
    with the activation ranges stored in the file's META ``activation`` (``nqtool convert
    --act-bits``); a file without them is an error. The ranges stay applied across switches.

    ``resident`` (default ``"codes"``) chooses what the module keeps in memory: ``"codes"``
    keeps each nested weight as the file's packed codes and dequantizes it just before its
    layer runs (nqformat/torch/resident.py; CPU and float32; outputs bit-identical to
    ``"float"``), keeping at most ``cache_bytes`` of float32 weights between forwards (0:
    none; None: all after first use); ``"float"`` writes every weight as float32 at load (as
    above): for training, editing weights, other devices or dtypes (docs/runtime.md).

    ``bits`` loads the level of that width of a file of several levels (spec §14; one of
    ``nqformat.open(path).levels``) instead of ``mode``; "part" and "full" are its lowest and
    highest level.

    ``budget`` (bytes; part mode; always codes-resident, the runtime whose layers can differ in
    mode) then upgrades the layers with the largest
    predicted gain per LOW byte within that many LOW bytes (``nqformat.torch.upgrade_within``;
    its report: ``nqformat.torch.budget.last_report(module)``).
    """
    wanted = _check_mode(mode)
    if resident not in RESIDENT:
        raise NQError(f"resident must be 'float' or 'codes', got {resident!r}")
    if budget is not None:
        if bits is not None:
            raise NQError(
                "budget upgrades layers of a two-level file; it cannot be given with bits"
            )
        from nqformat.torch.budget import load_within

        return load_within(path, wanted, budget, module=module, verify=verify,
                           act_quant=act_quant, cache_bytes=cache_bytes)  # fmt: skip
    if resident == "codes":
        from nqformat.torch.resident import load_codes

        # opened once and handed over: a second open (header validation) was a quarter of a
        # small model's codes load
        f = nqformat.open(path, verify=verify)
        try:
            level = _wanted_bits(f, mode, bits)
        except BaseException:
            f.close()
            raise
        lowest, several = f.levels[0], len(f.levels) > 2
        if not several:
            wanted = "part" if level == lowest else "full"
        loaded = load_codes(
            f,
            "part" if several else wanted,
            module=module,
            verify=verify,
            act_quant=act_quant,
            cache_bytes=cache_bytes,
        )
        if several and level != lowest:
            _codes_level(runtime(loaded), level)
        return loaded
    f = nqformat.open(path, verify=verify)
    try:
        target = module if module is not None else _build(f.metadata, f.path)
        close(target)  # a module loaded before lets go of its old file
        own = _targets(target, f)
        level = _wanted_bits(f, mode, bits)
        if level != f.levels[0]:
            f.page_in_level(level)  # all of LOW for the full-bit model of a 1.0 file
        wanted = "part" if level == f.levels[0] else "full"
        _fill(own, f, f.tensors(), wanted, level)
        if act_quant:
            from nqformat.torch import actquant

            actquant.apply_from_metadata(target, f.metadata)
    except BaseException:
        f.close()
        raise
    handle = NQRuntime(f, wanted, verify=verify, bits=level)
    setattr(target, HANDLE_ATTR, handle)
    weakref.finalize(target, handle.close)  # the file goes when the module does
    return target


def runtime(module: nn.Module) -> NQRuntime:
    """The :class:`NQRuntime` of a module returned by :func:`load`."""
    handle = module.__dict__.get(HANDLE_ATTR)
    if not isinstance(handle, NQRuntime):
        raise NQError("this module was not loaded by nqformat.torch.load (or was closed)")
    return handle


def _reopen_if_completed(handle: NQRuntime, bits: int | None = None) -> None:
    """A part-bit-only file may have been completed since it was opened (LOW appended,
    spec §9): reopen it, provided it is still the same file (same preamble). ``bits``: the
    level needed (default the highest); a file that already reaches it is kept."""
    old = handle.file
    need = old.levels[-1] if bits is None else bits
    if need in old.available_levels:
        return
    new = nqformat.open(old.url or old.path, verify=handle.verify)  # a URL stays a URL
    if need not in new.available_levels:
        new.close()
        old.page_in_level(need)  # raises PartOnlyError with the reader's message
        return
    if new.sections() != old.sections() or new.names() != old.names():
        new.close()
        raise NQError(f"{old.path} changed on disk since it was loaded; load it again")
    old.close()
    handle.file = new


def _codes_level(handle: Any, level: int) -> tuple[int, int]:
    """Put every layer of a codes-resident module of a multi-level file (spec §14) on the
    level of width ``level``: levels above the lowest page their residuals in (whole-level
    CRCs) and dequantize through the reader; returning to the lowest releases LOW. Returns
    (bytes paged in, bytes paged out)."""
    f = handle.file
    lowest = level == f.levels[0]
    paged_in = 0 if lowest else f.page_in_level(level)
    for rec in handle.layers.values():
        rec.bits = None if lowest else level
        rec.mode = _label(f, level)
        rec.low = None
    handle.invalidate()
    paged_out = f.release_low() if lowest else 0
    handle.mode = _label(f, level)
    handle.bits = level
    return paged_in, paged_out


def switch(
    module: nn.Module,
    mode: str | None = None,
    *,
    layers: Iterable[str] | None = None,
    bits: int | None = None,
) -> SwitchReport:
    """Switch a loaded module between the part-bit and full-bit model, in place.

    Float runtime: upgrading pages LOW in (CRC-checked) and rewrites each nested weight from
    ``H*2^l + L``; downgrading rewrites them from ``H`` alone and releases LOW. Codes runtime:
    only LOW is mapped or unmapped and the layers' modes flip; no weight is rewritten, and
    ``layers`` (module paths, as :func:`modes` lists them) switches only those layers. Either
    way the weights afterwards equal, bit for bit, those of a fresh :func:`load` in that mode.

    ``bits`` switches to the level of that width of a file of several levels (spec §14) instead
    of ``mode`` (float runtime; the codes runtime holds the lowest or the highest level).
    Levels between are paged in as needed and all of them released on return to "part".
    """
    handle = runtime(module)
    start = time.perf_counter()
    level = _wanted_bits(handle.file, mode, bits)
    wanted: Mode = "part" if level == handle.file.levels[0] else "full"
    if handle.resident == "codes" and len(handle.file.levels) > 2:
        if layers is not None:
            raise NQError("per-layer switching of a file of several levels is not supported")
        previous = _label(handle.file, handle.bits)
        old = handle.file
        _reopen_if_completed(handle, level)
        if handle.file is not old:  # completed since: the layers' HIGH views follow the file
            for rec in handle.layers.values():
                rec.high = handle.file._blob(rec.info, Section.HIGH)
        paged_in, paged_out = _codes_level(handle, level)
        return SwitchReport(
            previous,
            _label(handle.file, level),
            paged_in,
            paged_out,
            len(handle.layers),
            time.perf_counter() - start,
        )
    if handle.resident == "codes":
        from nqformat.torch.resident import switch_codes

        return switch_codes(handle, wanted, layers, start)  # type: ignore[arg-type]
    if layers is not None:
        raise NQError("per-layer switching needs a module loaded with resident='codes'")
    previous = _label(handle.file, handle.bits)
    if level == handle.bits:
        return SwitchReport(previous, previous, 0, 0, 0, time.perf_counter() - start)
    paged_in = paged_out = 0
    if level != handle.file.levels[0]:
        _reopen_if_completed(handle, level)
        paged_in = handle.file.page_in_level(level)
    own = module.state_dict()
    nested = [t for t in handle.file.tensors() if t.kind is Kind.NESTED]
    try:
        _fill(own, handle.file, nested, wanted, level)
    except BaseException:
        # leave a consistent model: every nested weight back in the level we came from
        _fill(own, handle.file, nested, handle.mode, handle.bits)
        if handle.mode == "part":
            handle.file.release_low()
        raise
    if wanted == "part":
        paged_out = handle.file.release_low()
    handle.mode, handle.bits = wanted, level
    return SwitchReport(
        previous,
        _label(handle.file, level),
        paged_in,
        paged_out,
        len(handle.nested),
        time.perf_counter() - start,
    )


def modes(module: nn.Module) -> dict[str, str]:
    """The model ("part" or "full") each layer with a nested weight holds, by module path."""
    return runtime(module).modes()


def close(module: nn.Module) -> None:
    """Close the file behind a loaded module; its weights stay, switching is no longer possible.
    A codes-resident module gets float32 weights of its layers' current modes first."""
    handle = module.__dict__.pop(HANDLE_ATTR, None)
    if handle is not None:
        if handle.resident == "codes":
            handle.detach(module)
        handle.close()
