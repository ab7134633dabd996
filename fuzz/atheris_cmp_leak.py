"""Show where the Python fuzzer's memory goes: atheris' comparison hook leaks on numpy arrays.

atheris replaces every ``COMPARE_OP`` of an instrumented module by a call to its native
``_trace_cmp`` (for libFuzzer's value profile). When the comparison yields a numpy array (as
``(lengths > limit).any()`` in the reader's vectorised header checks), about 1 KiB stays
allocated per call; comparisons of ints or bytes leave nothing. This script instruments a
three-function module and prints the growth of each kind over the same number of calls:

    python fuzz/atheris_cmp_leak.py [CALLS]

That is why ``fuzz/run_fuzzers.py`` restarts the Python fuzzer every
``PYTHON_RUNS_PER_PROCESS`` executions (fuzz/README.md "Why the Python fuzzer restarts").
"""

from __future__ import annotations

import gc
import pathlib
import sys
import tempfile
import tracemalloc

import atheris

_MODULE = """
import numpy as np

ARRAY = np.arange(8, dtype=np.uint64)


def compare_ints(calls):
    x = 5
    for _ in range(calls):
        if x > 3:
            pass


def compare_bytes(calls):
    b = bytes(32)
    for _ in range(calls):
        if b == bytes(32):
            pass


def compare_arrays(calls):
    for _ in range(calls):
        if (ARRAY > 3).any():
            pass
"""


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "nq_cmp_demo.py").write_text(_MODULE)
        sys.path.insert(0, tmp)
        with atheris.instrument_imports(include=["nq_cmp_demo"]):
            import nq_cmp_demo
    for kind in ("ints", "bytes", "arrays"):
        fn = getattr(nq_cmp_demo, f"compare_{kind}")
        fn(1000)  # warm up
        gc.collect()
        tracemalloc.start()
        rss = _rss_mib()
        fn(calls)
        gc.collect()
        live = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(
            f"{calls:,} instrumented comparisons of {kind}: RSS +{_rss_mib() - rss:.1f} MiB, "
            f"still allocated (tracemalloc) {live / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
