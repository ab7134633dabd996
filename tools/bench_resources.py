"""``nqtool bench`` without the CLI, and a re-render of a saved run (the harness is the
``nqformat.bench`` package; this script only parses arguments).

    python tools/bench_resources.py --quick --json /tmp/bench.json
    python tools/bench_resources.py --render docs/bench-results.json docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nqformat import bench
from nqformat.bench.__main__ import main as render_main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--render",
        nargs=2,
        metavar=("JSON", "MD"),
        type=Path,
        help="rewrite MD (and JSON's derived figures) from a saved run; measures nothing",
    )
    args = parser.parse_args(argv)
    if args.render:
        return render_main(["render", *map(str, args.render)])
    result = bench.run_bench(
        bench.BenchOptions(
            quick=args.quick, command="python tools/bench_resources.py " + " ".join(argv)
        ),
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    bench.write_outputs(result, args.json, args.markdown)
    print(bench.render_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
