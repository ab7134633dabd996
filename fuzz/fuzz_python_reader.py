"""Coverage-guided fuzzing of the Python reader with atheris (issue 11).

Every input is opened with a small read budget, every tensor read in both modes, its codes
unpacked and the file verified; then the same with every CRC the input's header describes
recomputed (so mutations get past the checksums). A spec §11 error (``NQFormatError``) is the
expected outcome of most inputs; any other exception, a crash, a hang (``-timeout``) or memory
over ``-rss_limit_mb`` is a finding, and atheris writes the input to ``crash-*``/``timeout-*``.

    python fuzz/fuzz_python_reader.py CORPUS_DIR -max_total_time=60 -timeout=10 -rss_limit_mb=2048

CORPUS_DIR should start as a copy of the vectors (``fuzz/run_fuzzers.py`` makes one); atheris
adds the inputs that reach new code to it.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import atheris

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

with atheris.instrument_imports(include=["nqformat"]):
    import nqformat  # noqa: F401 - imported here so that it is instrumented

from _hostile import exercise_reader, fix_all_crcs  # noqa: E402 - after the path is set

#: read budget while fuzzing: a mutant may legitimately declare huge tensors; the reader must
#: refuse them with `limit`, never try
FUZZ_MAX_BYTES = 64 << 20

_PATH = pathlib.Path(tempfile.gettempdir()) / f"nq-atheris-{os.getpid()}.nq"


def test_one_input(data: bytes) -> None:
    fixed = fix_all_crcs(data)
    for variant in (data, fixed) if fixed != data else (data,):
        _PATH.write_bytes(variant)
        exercise_reader(_PATH, FUZZ_MAX_BYTES)


def main() -> None:
    try:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    finally:
        _PATH.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
