"""The measurements of a bench run, in the order they run (see ``nqformat.bench.measurement``).

To add one: write a module that defines ``MEASUREMENT = Measurement(key, measure, headline)``
and add it to the right tuple below; add its top-level keys to ``cases.REQUIRED_KEYS`` only if
every run must have them.
"""

from __future__ import annotations

from nqformat.bench import codes, convert_time, rss, sizes, switching, unpack
from nqformat.bench.measurement import Measurement

__all__ = ["CASE_MEASUREMENTS", "RUN_MEASUREMENTS"]

#: once per case (model at INT(n|h)), after it is converted and its baselines are written
CASE_MEASUREMENTS: tuple[Measurement, ...] = (
    sizes.MEASUREMENT,
    switching.MEASUREMENT,
    rss.MEASUREMENT,
    codes.MEASUREMENT,
)
#: once per run, after every case
RUN_MEASUREMENTS: tuple[Measurement, ...] = (
    unpack.MEASUREMENT,
    convert_time.MEASUREMENT,
    codes.FUSED_MEASUREMENT,
)
