"""Fresh processes for the measurements that need one (peak RSS, convert end to end).

A child imports the same ``nqformat`` as this process, so an installed package and a source
checkout both work: the directory holding the imported package goes first on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nqformat

__all__ = ["bench_child", "child_env", "run_bench_child"]

#: the directory that holds the ``nqformat`` package this process imported
_PACKAGE_PARENT = Path(nqformat.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """This environment with the imported ``nqformat`` first on the path."""
    env = dict(os.environ)
    parts = (str(_PACKAGE_PARENT), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return env


def bench_child(*args: str) -> list[str]:
    """The command line of ``python -m nqformat.bench ARGS`` (a child entry point)."""
    return [sys.executable, "-m", "nqformat.bench", *args]


def run_bench_child(cmd: list[str], what: str) -> dict[str, Any]:
    """Run a child command and return the JSON object on its last stdout line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
