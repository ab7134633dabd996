"""Build the optional C kernel ``nqformat._fused`` (fused unpack + dequantize, spec §7.2).

Everything else lives in pyproject.toml. The extension is optional: where no C compiler is
available the install still succeeds and the reader uses its pure-numpy path (bit-identical,
slower); ``nqformat.fused.BACKEND`` says which one is in use.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nqformat._fused",
            ["nqformat/_fused.c"],
            # -ffp-contract=off: the product and the sum of §7.2 must be rounded separately
            # (no FMA); -O3 lets the float pass vectorise.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        )
    ],
)
