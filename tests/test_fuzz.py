"""The fuzzers of issue 11, time-bounded, as CI runs them (slow tests).

Each runs ``fuzz/run_fuzzers.py`` for ``NQ_FUZZ_SECONDS`` (default 60) from a corpus made of the
vectors and fails on any finding: an input that crashed a reader, hung it, used more than
2 GiB, made the C reader's sanitizers report, or raised anything but the format's own error
from the Python reader. A long run is the same command with more seconds (fuzz/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("NQ_FUZZ_SECONDS", "60"))


def _load_runner() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("run_fuzzers", ROOT / "fuzz" / "run_fuzzers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: a stand-in for a libFuzzer binary: logs its arguments, reports its -runs as executed units
#: and an RSS growing with each start, sleeps, and in the round named by argv[1] writes a
#: crash file as libFuzzer would
_FAKE_FUZZER = r"""
import pathlib, sys, time
log = pathlib.Path("starts.log")
starts = len(log.read_text().splitlines()) + 1 if log.exists() else 1
log.write_text((log.read_text() if log.exists() else "") + " ".join(sys.argv[2:]) + "\n")
runs = next(int(a.split("=")[1]) for a in sys.argv if a.startswith("-runs="))
time.sleep(0.5)
if starts == int(sys.argv[1]):
    pathlib.Path("crash-fake").write_bytes(b"x")
sys.stderr.write(f"stat::number_of_executed_units: {runs}\nstat::peak_rss_mb: {100 + starts}\n")
sys.exit(1 if starts == int(sys.argv[1]) else 0)
"""


def _fake(tmp_path: pathlib.Path, crash_at: int) -> list[str]:
    script = tmp_path / "fake_fuzzer.py"
    script.write_text(_FAKE_FUZZER)
    return [sys.executable, str(script), str(crash_at), "corpus"]


def test_python_fuzzer_is_restarted_and_its_stats_summed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # atheris' own growth is bounded by restarting it (fuzz/README.md); each start must get
    # the executions cap and the time left, and the totals must cover every start
    runner = _load_runner()
    monkeypatch.setattr(runner, "MIN_ROUND_SECONDS", 1)
    found = runner.run("python", _fake(tmp_path, crash_at=0), tmp_path, 3, runs_per_process=7)
    assert found == []
    starts = (tmp_path / "starts.log").read_text().splitlines()
    assert len(starts) >= 3
    assert all(line.startswith("corpus -max_total_time=") for line in starts)
    assert all(line.endswith(" -runs=7") for line in starts)
    out = capsys.readouterr().out
    assert f"python: stat::number_of_executed_units: {7 * len(starts)}\n" in out
    assert f"python: stat::peak_rss_mb: {100 + len(starts)}\n" in out
    assert f"python: stat::processes: {len(starts)}\n" in out


def test_a_finding_stops_the_restarts(tmp_path: pathlib.Path) -> None:
    runner = _load_runner()
    found = runner.run("python", _fake(tmp_path, crash_at=2), tmp_path, 60, runs_per_process=7)
    assert found == [tmp_path / "crash-fake"]
    assert len((tmp_path / "starts.log").read_text().splitlines()) == 2


def test_without_runs_per_process_a_fuzzer_runs_once(tmp_path: pathlib.Path) -> None:
    runner = _load_runner()
    cmd = _fake(tmp_path, crash_at=0)
    found = runner.run("c", [*cmd, "-runs=5"], tmp_path, 60)
    assert found == []
    assert len((tmp_path / "starts.log").read_text().splitlines()) == 1


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
