"""nn.Module <-> .nq: the convert pipeline and the switchable part-bit/full-bit runtime.

- :func:`convert_model` writes a module as a NestQuant file (streaming, one layer at a time);
- :func:`load` rebuilds (or fills) a module from a file in ``"part"`` or ``"full"`` mode;
- :func:`switch` pages the LOW section in or out and rewrites the weights in place;
- :func:`close` releases the file behind a loaded module.
"""

from nqformat.torch.convert import (
    AUTO_H,
    ConvertReport,
    Params,
    auto_h,
    convert_model,
    quantized_layers,
)
from nqformat.torch.runtime import NQRuntime, SwitchReport, close, load, runtime, switch

__all__ = [
    "AUTO_H",
    "ConvertReport",
    "NQRuntime",
    "Params",
    "SwitchReport",
    "auto_h",
    "close",
    "convert_model",
    "load",
    "quantized_layers",
    "runtime",
    "switch",
]
