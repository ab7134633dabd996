"""``python -m nqformat.bench``: the child entry points of a run, and a re-render of a saved run.

    python -m nqformat.bench render docs/bench-results.json docs/benchmarks.md

rewrites the report from a saved JSON object (no new measurement), e.g. after editing its notes.
``_rss``, ``_codes_rss`` and ``_convert_stages`` are run by the harness itself in fresh
processes; each prints one JSON object. A measuring run is ``nqtool bench``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nqformat.bench.codes import codes_rss_child
from nqformat.bench.convert_time import convert_stages_child
from nqformat.bench.markdown import write_outputs
from nqformat.bench.rss import rss_child
from nqformat.bench.summary import refresh_summary

__all__ = ["main"]

USAGE = "usage: python -m nqformat.bench render RESULT.json REPORT.md  (measure: nqtool bench)"


def main(argv: list[str]) -> int:
    """Dispatch on the first word; 2 with a usage line for anything else."""
    if len(argv) == 3 and argv[0] == "_convert_stages":
        print(json.dumps(convert_stages_child(argv[1], argv[2])))
        return 0
    if len(argv) == 5 and argv[0] == "_rss":
        mode, meta, path, width = argv[1], json.loads(argv[2]), argv[3], int(argv[4])
        print(json.dumps(rss_child(mode, meta, path, width)))
        return 0
    if len(argv) == 5 and argv[0] == "_codes_rss":
        print(json.dumps(codes_rss_child(argv[1], json.loads(argv[2]), argv[3], argv[4])))
        return 0
    if len(argv) == 3 and argv[0] == "render":
        result = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        refresh_summary(result)
        write_outputs(result, Path(argv[1]), Path(argv[2]))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
