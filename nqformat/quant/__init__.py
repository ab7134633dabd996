"""NestQuant numerics: SQuant codes, the exact high/low split and per-channel parameters.

Pure functions on arrays (numpy in and out; torch tensors are accepted as input); no file I/O.
The entry point is :func:`nest_quantize` (docs/ARCHITECTURE.md, "nqformat.quant"); the method
and its bit-exactness rules are described in docs/quantizer.md.
"""

from nqformat.quant.affine import (
    affine_params,
    dequantize_codes,
    full_params,
    inherited_part_params,
    to_integer_domain,
)
from nqformat.quant.nest import (
    QUANTIZER_VERSION,
    NestLevelsResult,
    NestQuantResult,
    PartParams,
    Rounding,
    nest_levels,
    nest_quantize,
)
from nqformat.quant.refit import (
    DEFAULT_PARAMS,
    Params,
    activation_moments,
    per_element_inputs,
    refit_part_params,
)
from nqformat.quant.squant import round_half_even, squant_round

__all__ = [
    "DEFAULT_PARAMS",
    "QUANTIZER_VERSION",
    "NestLevelsResult",
    "NestQuantResult",
    "Params",
    "PartParams",
    "Rounding",
    "activation_moments",
    "affine_params",
    "dequantize_codes",
    "full_params",
    "inherited_part_params",
    "nest_levels",
    "nest_quantize",
    "per_element_inputs",
    "refit_part_params",
    "round_half_even",
    "squant_round",
    "to_integer_domain",
]
