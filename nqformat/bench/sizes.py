"""Size figures of one case: ``nqformat.report`` (what ``nqtool inspect`` prints) plus the
measured sizes of the two baseline files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nqformat.bench.measurement import Measurement

__all__ = ["MEASUREMENT", "size_figures"]


def size_figures(nq_path: Path, full_baseline: Path, part_baseline: Path) -> dict[str, Any]:
    """``nqformat.report`` figures plus the measured sizes of the two baseline files."""
    import nqformat
    from nqformat.report import size_report

    with nqformat.open(nq_path) as f:
        rep = size_report(f)
    file_size = nq_path.stat().st_size
    files = full_baseline.stat().st_size + part_baseline.stat().st_size
    return {
        "file_bytes": file_size,
        "report": rep.to_dict(),
        "switching": rep.switching_dict(),
        "size_vs_ideal": file_size / rep.ideal_full,
        "part_vs_ideal_part": rep.part_bytes / rep.ideal_part,
        "size_vs_diverse": file_size / rep.diverse_total,
        "size_vs_fp32": file_size / rep.fp32,
        "baseline_files_bytes": {
            "intn": full_baseline.stat().st_size,
            "inth": part_baseline.stat().st_size,
        },
        "size_vs_diverse_files": file_size / files,
    }


def _measure(ctx: Any) -> dict[str, Any]:
    with ctx.run.phase("baselines and sizes"):
        return size_figures(ctx.nq, ctx.intn, ctx.inth)


#: case measurement ``sizes``
MEASUREMENT = Measurement("sizes", _measure)
