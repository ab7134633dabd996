"""Run the two fuzzers of issue 11 for a fixed time each, from a corpus made of the vectors.

    python fuzz/run_fuzzers.py --seconds 60            # what CI runs (tests/test_fuzz.py)
    python fuzz/run_fuzzers.py --seconds 3600 --keep fuzz-out   # a long run, corpus kept

``c``: the libFuzzer harness of the C reader (``examples/c-reader/fuzz_nqread.c``, clang with
ASan and UBSan); ``python``: the atheris harness of the Python reader
(``fuzz/fuzz_python_reader.py``). Exit status 0 when neither found anything; otherwise the
inputs that crashed, hung or ran out of memory are listed (and kept under ``--keep``): turn each
into an invalid vector (``tools/make_vectors.py``) and a regression test.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
C_READER = ROOT / "examples" / "c-reader"

#: libFuzzer/atheris options shared by both: a per-input time limit far above any valid
#: input's cost, and a memory limit (an input needing more is a finding)
COMMON = ["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]

#: executions per atheris process before a restart. atheris' comparison hook (its data-flow
#: instrumentation of ``COMPARE_OP``) leaks about 1 KiB each time a comparison yields a numpy
#: array instead of a bool, and the reader's vectorised header checks make tens of those per
#: input: one process grows ~2-3 KiB per execution and reached the 2 GiB ``-rss_limit_mb``
#: after ~600k executions (fuzz/README.md "Why the Python fuzzer restarts"). The reader itself
#: stays flat (tests/test_hostile.py), so restarting bounds the fuzzer's own growth to a few
#: hundred MiB while the 2 GiB limit still catches an input that allocates too much.
PYTHON_RUNS_PER_PROCESS = 200_000

#: a restart costs a pass over the corpus (a few seconds): not worth it for less time than this
MIN_ROUND_SECONDS = 15


def seed_corpus(directory: pathlib.Path) -> int:
    """Copy every vector into ``directory``; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(VECTORS.rglob("*.nq")):
        shutil.copy(path, directory / f"{path.parent.name}-{path.name}")
        count += 1
    return count


def build_c_fuzzer(out: pathlib.Path) -> pathlib.Path | None:
    """The libFuzzer binary, or None when clang cannot build one (reason printed)."""
    if shutil.which("clang") is None:
        print("c: skipped: clang is not installed (apt-get install clang)")
        return None
    proc = subprocess.run(
        ["make", "-s", "-C", str(C_READER), f"OUT={out}", "fuzz"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(f"c: skipped: cannot build the libFuzzer harness:\n{proc.stderr[-2000:]}")
        return None
    return out / "nqread-fuzz"


def _stat(lines: list[str], key: str) -> int | None:
    for line in lines:
        if line.startswith(f"stat::{key}:"):
            return int(line.split(":")[-1])
    return None


def run(
    name: str,
    cmd: list[str],
    work: pathlib.Path,
    seconds: int,
    runs_per_process: int | None = None,
) -> list[pathlib.Path]:
    """Run one fuzzer in ``work`` for ``seconds``; returns the inputs it reported.

    With ``runs_per_process`` the fuzzer is restarted (same corpus directory, so what it
    learnt is kept) every that many executions until the time is spent: see
    ``PYTHON_RUNS_PER_PROCESS`` for why the Python fuzzer needs it. The totals are printed
    as one fuzzer's ``stat::`` lines, each round's as ``NAME[round K]:``.
    """
    print(f"{name}: {' '.join(cmd)}", flush=True)
    deadline = time.monotonic() + seconds
    rounds = 0
    executed = 0
    peak_rss = 0
    found: list[pathlib.Path] = []
    while not found:
        left = int(deadline - time.monotonic())
        if rounds and left < MIN_ROUND_SECONDS:
            break
        rounds += 1
        limits = [f"-max_total_time={max(left, 1)}"]
        if runs_per_process:
            limits.append(f"-runs={runs_per_process}")
        proc = subprocess.run(
            [*cmd, *limits],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=max(left, 1) + 300,
            check=False,
        )
        stats = [line for line in proc.stderr.splitlines() if line.startswith(("stat::", "Done "))]
        print("\n".join(f"{name}[round {rounds}]: {line}" for line in stats), flush=True)
        executed += _stat(stats, "number_of_executed_units") or 0
        peak_rss = max(peak_rss, _stat(stats, "peak_rss_mb") or 0)
        found = sorted(
            p for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))
        )
        if proc.returncode != 0 and not found:
            tail = proc.stderr[-3000:]
            print(f"{name}: exited {proc.returncode} without a finding file:\n{tail}")
            found = [work / f"{name}-exit-{proc.returncode}"]
        if not runs_per_process:
            break
    print(f"{name}: stat::number_of_executed_units: {executed}")
    print(f"{name}: stat::peak_rss_mb: {peak_rss}")
    print(f"{name}: stat::processes: {rounds}", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per fuzzer (default 60)")
    parser.add_argument("--only", choices=("c", "python"), help="run one fuzzer only")
    parser.add_argument("--keep", type=pathlib.Path, help="keep corpora and findings here")
    parser.add_argument(
        "--runs-per-process",
        type=int,
        default=PYTHON_RUNS_PER_PROCESS,
        help="restart the Python fuzzer after this many executions, 0: never "
        f"(default {PYTHON_RUNS_PER_PROCESS:,})",
    )
    args = parser.parse_args(argv)
    base = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="nq-fuzz-"))
    findings: list[pathlib.Path] = []
    try:
        if args.only in (None, "c"):
            work = base / "c"
            seeds = seed_corpus(work / "corpus")
            binary = build_c_fuzzer(work)
            if binary is not None:
                print(f"c: {seeds} vectors as seeds")
                cmd = [str(binary), "corpus", *COMMON]
                findings += run("c", cmd, work, args.seconds)
        if args.only in (None, "python"):
            work = base / "python"
            seeds = seed_corpus(work / "corpus")
            print(f"python: {seeds} vectors as seeds")
            cmd = [
                sys.executable,
                str(ROOT / "fuzz" / "fuzz_python_reader.py"),
                "corpus",
                *COMMON,
            ]
            findings += run("python", cmd, work, args.seconds, args.runs_per_process)
    finally:
        if args.keep is None:
            kept = [f for f in findings if f.exists()]
            if kept:
                out = pathlib.Path(tempfile.mkdtemp(prefix="nq-fuzz-findings-"))
                for f in kept:
                    shutil.copy(f, out / f"{f.parent.name}-{f.name}")
                print(f"findings copied to {out}")
            shutil.rmtree(base, ignore_errors=True)
    for f in findings:
        print(f"FINDING {f}")
    print("no findings" if not findings else f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
