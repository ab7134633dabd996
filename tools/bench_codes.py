"""Issue 10's figures for the codes-resident runtime on chosen INT(8|6) cases: a bench run
(``nqformat.bench.run_bench``, the measurement of ``nqtool bench``) restricted to those models,
printing the codes keys with their medians and targets.

The measurement itself is ``nqformat.bench.codes`` (and ``nqformat.bench.fused_dequant``);
``nqtool bench --quick`` runs it on the quick cases. This tool runs the full method (cold and
warm timings, full repetitions) on the models the issue's table names:

    python tools/bench_codes.py [--quick] [--models resnet101,resnet50,tf_efficientnet_lite0]
        [--forward-models resnet101,...] [--json out.json]

``--forward-models`` times the forwards of more models than the keys' resnet50 and Lite0 (the
issue's memory and latency table includes resnet101); the forward keys printed then cover them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nqformat.bench import BenchOptions, codes, run_bench
from nqformat.bench.cases import TARGETS, Case
from nqformat.bench.codes import CODES_KEYS

DEFAULT_MODELS = "resnet101,resnet50,tf_efficientnet_lite0"
KEYS = (*CODES_KEYS, "fused_dequant_vs_memcpy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="quick repetitions")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated, at INT(8|6)")
    p.add_argument("--forward-models", default="", help="also time these models' forwards")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.forward_models:
        codes.FORWARD_MODELS = codes.FORWARD_MODELS | set(args.forward_models.split(","))
    cases = tuple(Case(m, 8, 6) for m in args.models.split(","))
    command = "python tools/bench_codes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    options = BenchOptions(quick=args.quick, cases=cases, command=command.strip())
    res = run_bench(options, progress=lambda s: print(s, file=sys.stderr, flush=True))
    limits = {t.key: t.limit for t in TARGETS}
    print(f"loadavg at the end {tuple(round(x, 2) for x in os.getloadavg())}")
    for key in KEYS:
        value, spread = res[key], res["across_cases"].get(key, {})
        met = res["targets"][key]["met"]
        shown = "n/a" if value is None else f"{value:.3f}"
        median = spread.get("median")
        mid = "" if median is None else f" (median {median:.3f})"
        where = res["headline_cases"].get(key) or ""
        flag = {True: "met", False: "NOT met", None: "n/a"}[met]
        print(f"{key:32} {shown}{mid}; target <= {limits[key]}: {flag}  {where}")
    print(f"bit-identical: {res['codes_bit_identical']}")
    for row in res["cases"]:
        rss = row["codes"]["rss"]
        mb = {k: round(v["weights_mb"], 1) for k, v in rss.items()}
        print(f"{row['label']}: weights MB {mb}; load s {row['codes']['load']['times_s']}")
        for k, f in row["codes"].get("forward", {}).items():
            print(
                f"  forward {k}: codes {f['codes_s'] * 1e3:.1f} ms, float {f['float_s'] * 1e3:.1f}"
                f" ms, x{f['ratio']:.3f}, equal {f['outputs_equal']}"
            )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
