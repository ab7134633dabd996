"""The resource benchmark behind ``nqtool bench``: bytes and seconds, each a ratio to a baseline.

The NestQuant paper argues with file sizes and with switching overheads computed from file sizes
(its Tables 8 to 11); it never times a switch. This package measures, on this machine and in one
run, what a user gets from a ``.nq`` file against the baseline they would otherwise pick:

- sizes (``sizes``): the file against its ideal size and against a separate packed INT-n plus
  INT-h pair (figures from ``nqformat.report``, so ``nqtool inspect`` and the benchmark agree);
- load and switch times (``switching``): a part-bit module from the ``.nq`` file, and an in-place
  switch, against loading a separate quantized model (``baselines``) into the same kind of module;
- the unpack kernel against ``memcpy`` (``unpack``);
- ``nqtool convert`` end to end (``convert_time``), and peak RSS of a ready module (``rss``),
  each in a fresh process (``process``).

``run`` sequences the measurements ``registry`` lists (the extension point is described in
``measurement``), ``summary`` derives the headline and target verdicts, ``text`` and
``markdown`` render them. Needs the torch extra and safetensors; runs from an installed package.
"""

from __future__ import annotations

from nqformat.bench.cases import (
    FULL_CASES,
    QUICK_CASES,
    REQUIRED_KEYS,
    TARGETS,
    BenchOptions,
    Case,
    Target,
)
from nqformat.bench.markdown import read_notes, render_markdown, write_outputs
from nqformat.bench.run import run_bench
from nqformat.bench.summary import evaluate_targets, refresh_summary
from nqformat.bench.text import render_text

__all__ = [
    "FULL_CASES",
    "QUICK_CASES",
    "REQUIRED_KEYS",
    "TARGETS",
    "BenchOptions",
    "Case",
    "Target",
    "evaluate_targets",
    "read_notes",
    "refresh_summary",
    "render_markdown",
    "render_text",
    "run_bench",
    "write_outputs",
]
