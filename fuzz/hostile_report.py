"""Time and peak memory of the Python reader on every hostile file of issue 11.

    python fuzz/hostile_report.py [--only NAME_SUBSTRING]

Each file is built by ``tests/_hostile.py`` and read in a fresh interpreter (open, every tensor
in every mode, codes, verify; or open only for the META files); the table gives the outcome,
the seconds the action took and its peak memory above the interpreter's baseline (VmHWM reset
before the action). tests/test_hostile.py asserts the outcomes and the 300 MB bound.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _hostile import SCENARIOS, run_bounded  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    args = parser.parse_args()
    print(f"{'file':42s} {'size':>10s}  {'outcome':22s} {'seconds':>8s} {'extra MiB':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for s in SCENARIOS:
            if args.only not in s.name:
                continue
            path = pathlib.Path(tmp) / f"{s.name}.nq"
            path.write_bytes(s.build())
            got = run_bounded(s.action, path, timeout=120, **s.kwargs)
            flag = "" if got.outcome == s.expect else f"  (expected {s.expect})"
            print(
                f"{s.name:42s} {path.stat().st_size:>10,d}  {got.outcome:22s} "
                f"{got.seconds:8.3f} {got.extra_bytes / 2**20:9.1f}{flag}"
            )
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
