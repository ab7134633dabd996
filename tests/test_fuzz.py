"""The fuzzers of issue 11, time-bounded, as CI runs them (slow tests).

Each runs ``fuzz/run_fuzzers.py`` for ``NQ_FUZZ_SECONDS`` (default 60) from a corpus made of the
vectors and fails on any finding: an input that crashed a reader, hung it, used more than
2 GiB, made the C reader's sanitizers report, or raised anything but the format's own error
from the Python reader. A long run is the same command with more seconds (fuzz/README.md).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("NQ_FUZZ_SECONDS", "60"))


def _run_fuzzer(which: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run_fuzzers.py"),
            "--seconds",
            str(SECONDS),
            "--only",
            which,
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _runs(out: str, which: str) -> int:
    m = re.search(rf"{which}: stat::number_of_executed_units: (\d+)", out)
    assert m, out[-4000:]
    return int(m.group(1))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 900)
def test_c_reader_libfuzzer_finds_nothing() -> None:
    if shutil.which("clang") is None:
        pytest.skip(
            "clang is not installed: the libFuzzer harness needs it (apt-get install clang)"
        )
    out = _run_fuzzer("c")
    assert "no findings" in out
    assert _runs(out, "c") > 0


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 900)
def test_python_reader_atheris_finds_nothing() -> None:
    pytest.importorskip("atheris")
    out = _run_fuzzer("python")
    assert "no findings" in out
    assert _runs(out, "python") > 0
