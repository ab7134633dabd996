"""nn.Module <-> .nq: the convert pipeline and the switchable part-bit/full-bit runtime.

- :func:`convert_model` writes a module as a NestQuant file (streaming, one layer at a time);
- :func:`load` rebuilds (or fills) a module from a file in ``"part"`` or ``"full"`` mode;
- :func:`switch` pages the LOW section in or out and rewrites the weights in place (or, for a
  module loaded with ``resident="codes"``, only flips which codes its layers dequantize);
- :func:`upgrade_within` spends a budget of LOW bytes on the layers that gain most per byte;
- :func:`modes` reports the model each layer holds;
- :func:`close` releases the file behind a loaded module.
"""

from nqformat.torch.budget import BudgetReport, upgrade_within
from nqformat.torch.convert import (
    AUTO_H,
    ConvertReport,
    Params,
    auto_h,
    convert_model,
    quantized_layers,
)
from nqformat.torch.runtime import (
    NQRuntime,
    SwitchReport,
    close,
    load,
    modes,
    runtime,
    switch,
)

__all__ = [
    "AUTO_H",
    "BudgetReport",
    "ConvertReport",
    "NQRuntime",
    "Params",
    "SwitchReport",
    "auto_h",
    "close",
    "convert_model",
    "load",
    "modes",
    "quantized_layers",
    "runtime",
    "switch",
    "upgrade_within",
]
