"""Mixed precision under a byte budget: upgrade the layers that matter most first.

A codes-resident module (``nqformat.torch.load(..., resident="codes")``) can hold any subset of
its layers in full-bit mode: upgrading one pages in only its LOW blob (checked by its own CRC,
spec §7.1 / §11 step 13). :func:`upgrade_within` spends a budget of LOW bytes on the layers with
the largest predicted gain per byte (META ``sensitivity``, written by the converter), each layer
that still fits, and reports what it chose. A file without ``sensitivity`` (older converters)
is upgraded in file order instead, and the report says so (``order="file"``).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from torch import nn

from nqformat.errors import NQError
from nqformat.quant.sensitivity import choose_within, gain_order, layer_gains

__all__ = ["BudgetReport", "last_report", "load_within", "upgrade_within"]

#: report.order when META has gains; and the documented fallback when it has none
ORDER_SENSITIVITY = "sensitivity"
ORDER_FILE = "file"

_REPORTS: weakref.WeakKeyDictionary[nn.Module, BudgetReport] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class BudgetReport:
    """What :func:`upgrade_within` did."""

    budget: int  # extra LOW bytes allowed
    chosen: tuple[str, ...]  # layers upgraded now (module paths), in the order taken
    bytes: int  # LOW bytes those layers page in; never more than budget
    order: str  # "sensitivity" (META gains) or "file" (no gains in META)
    gain: float  # sum of the chosen layers' predicted gains (0 with order "file")
    candidates: int  # layers that were part-bit before the call
    full_layers: int  # layers in full-bit mode after the call, of layers_total
    layers_total: int
    low_bytes_total: int  # LOW bytes of every nested layer (the whole file's LOW)
    seconds: float

    def summary(self) -> str:
        share = self.bytes / self.low_bytes_total if self.low_bytes_total else 0.0
        return (
            f"budget {self.budget:,} B: upgraded {len(self.chosen)} of {self.candidates} "
            f"part-bit layers ({self.bytes:,} B of LOW, {100 * share:.1f}% of "
            f"{self.low_bytes_total:,}) by {self.order} order; now {self.full_layers}/"
            f"{self.layers_total} layers full-bit"
        )


def upgrade_within(module: nn.Module, extra_bytes: int) -> BudgetReport:
    """Upgrade the part-bit layers of a codes-resident ``module`` with the largest predicted
    gain per LOW byte, each that still fits, so that the LOW bytes paged in stay within
    ``extra_bytes``; returns (and remembers, see :func:`last_report`) what was chosen.

    Layers already full-bit cost nothing and are left alone. The gains come from META
    ``sensitivity``; without them layers are taken in file order (``report.order == "file"``).
    """
    from nqformat.torch import runtime as _runtime
    from nqformat.torch import switch

    start = time.perf_counter()
    handle = _runtime(module)
    if getattr(handle, "resident", None) != "codes":
        raise NQError(
            "upgrade_within needs a module loaded with resident='codes' (per-layer switching)"
        )
    if handle.file.part_only:
        raise NQError("a part-bit-only file has no LOW section: nothing can be upgraded (§9)")
    layers = handle.layers  # module path -> record (nqformat.torch.resident)
    part = [path for path, rec in layers.items() if rec.mode == "part"]
    sizes = {layers[p].tensor: int(layers[p].info.low.length) for p in part}
    gains = layer_gains(handle.file.metadata)
    if gains is None:
        order, how = list(sizes), ORDER_FILE
    else:
        order, how = gain_order(gains, sizes), ORDER_SENSITIVITY
    choice = choose_within(order, sizes, extra_bytes, gains)
    by_tensor = {layers[p].tensor: p for p in part}
    chosen = tuple(by_tensor[t] for t in choice.chosen)
    mapped = handle.file.low_resident  # all of LOW already in: upgrading pages in nothing
    paged = 0
    if chosen:
        paged = switch(module, "full", layers=list(chosen)).bytes_paged_in
    if not mapped and paged != choice.bytes:  # the switch pages exactly the chosen blobs
        raise NQError(f"upgrade_within: chose {choice.bytes:,} B of LOW, paged {paged:,} B")
    report = BudgetReport(
        budget=int(extra_bytes),
        chosen=chosen,
        bytes=choice.bytes,
        order=how,
        gain=choice.gain,
        candidates=len(part),
        full_layers=sum(1 for rec in layers.values() if rec.mode == "full"),
        layers_total=len(layers),
        low_bytes_total=sum(int(rec.info.low.length) for rec in layers.values()),
        seconds=time.perf_counter() - start,
    )
    _REPORTS[module] = report
    return report


def last_report(module: nn.Module) -> BudgetReport | None:
    """The report of the last :func:`upgrade_within` on ``module`` (also after
    ``load(..., budget=)``); None if there was none."""
    return _REPORTS.get(module)


def load_within(
    path: Any, mode: str, budget: int, *, module: nn.Module | None, **kwargs: Any
) -> nn.Module:
    """``nqformat.torch.load(..., budget=)``: a codes-resident part-bit load (the only runtime
    whose layers can differ in mode), then :func:`upgrade_within`; on failure the file is
    closed again."""
    from nqformat.torch import close, load

    if mode != "part":
        raise NQError("budget= starts from the part-bit model: give mode='part'")
    model = load(path, mode, module=module, resident="codes", **kwargs)
    try:
        upgrade_within(model, budget)
    except BaseException:
        close(model)
        raise
    return model
