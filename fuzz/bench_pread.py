"""What reading through pread (issue 11: no mmap, so a file truncated while open cannot SIGBUS
the reader) costs against the mmap file layer it replaced, on a synthetic model-sized file.

    python fuzz/bench_pread.py [--weights 44000000] [--repeat 5]

Prints the median time to read every tensor (part, then full) through each file layer, opened
on the same file in the same run, and their ratio. The mmap layer is ``FileSource`` as it was
before issue 11 (git 2aa7205), kept here only as the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _container_util import random_nested  # noqa: E402

import nqformat  # noqa: E402
from nqformat.container.source import FileSource  # noqa: E402
from nqformat.errors import LayoutError  # noqa: E402


class MmapSource(FileSource):
    """The pre-issue-11 layer: windows are read-only mmaps, views are zero-copy slices."""

    def map(self, key: str, start: int, end: int) -> None:
        if end <= start:
            self._maps[key] = (start, end, memoryview(b""))
            return
        base = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._fd, end - base, access=mmap.ACCESS_READ, offset=base)
        self._maps[key] = (base, end, mapped)

    def unmap(self, key: str) -> None:
        entry = self._maps.pop(key, None)
        if entry is not None and isinstance(entry[2], mmap.mmap):
            with contextlib.suppress(BufferError):
                entry[2].close()

    def view(self, key: str, offset: int, length: int) -> memoryview:
        base, end, mapped = self._maps[key]
        if offset < base or offset + length > end:
            raise LayoutError("outside map")
        self._count(offset, length)
        return memoryview(mapped)[offset - base : offset - base + length]


def make_file(path: pathlib.Path, weights: int) -> None:
    rng = np.random.default_rng(0)
    per = 2_359_296  # a ResNet 3x3x512x512 conv
    with nqformat.NQWriter(path, n=8, h=6, metadata={}) as w:
        for i in range(max(1, weights // per)):
            t = random_nested(rng, (512, 512, 3, 3), 8, 6)
            w.add_nested(f"layer{i}.weight", **t.kwargs())
            w.add_raw(f"layer{i}.bias", rng.standard_normal(512).astype(np.float32))


def read_all(path: pathlib.Path, source_cls: type) -> float:
    start = time.perf_counter()
    f = nqformat.NQFile(path, source=source_cls(path))
    with f:
        for mode in ("part", "full"):
            for name in f.names():
                f.read(name, mode)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=int, default=44_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bench.nq"
        make_file(path, args.weights)
        size = os.path.getsize(path)
        times: dict[str, list[float]] = {"mmap": [], "pread": []}
        for _ in range(args.repeat):  # interleaved, so load changes hit both alike
            times["mmap"].append(read_all(path, MmapSource))
            times["pread"].append(read_all(path, FileSource))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"file {size / 2**20:.1f} MiB, every tensor read part then full, {args.repeat} runs")
    for k, v in med.items():
        runs = ", ".join(f"{x:.3f}" for x in times[k])
        print(f"  {k:5s}  median {v * 1000:7.1f} ms   (runs, s: {runs})")
    print(f"  pread / mmap = {med['pread'] / med['mmap']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
