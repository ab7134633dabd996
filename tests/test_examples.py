"""The scripts in examples/ run end to end (as subprocesses, on the real EfficientNet-Lite0 file:
about 7 s each on an idle 2-core CPU, mostly importing torch and timm). The range server the
progressive-download example uses is tested in tests/test_remote.py."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import nqformat
from nqformat.container import spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPT_TIMEOUT_S = 300


def run_example(script: str, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env=env,
        cwd=cwd,
        check=False,
    )


def _int(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """tf_efficientnet_lite0 with its real packaged ImageNet weights, as INT(8|6)."""
    import nqformat.torch as nqt
    from nqformat import zoo

    module, meta = zoo.build(zoo.resolve("tf_efficientnet_lite0"))
    path = tmp_path_factory.mktemp("lite0") / "lite0-n8h6.nq"
    nqt.convert_model(module, path, n=8, h=6, metadata={"model": meta})
    return path


def _low_length(path: pathlib.Path) -> int:
    with nqformat.open(path) as f:
        return next(s.length for s in f.sections() if s.name == "LOW")


def test_switching_example_pages_low_in_and_out_and_sees_the_cat(
    lite0: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    done = run_example("switching.py", str(lite0), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    paged_in = _int(re.search(r"paged in\s+([\d,]+) B", out).group(1))
    released = _int(re.search(r"released\s+([\d,]+) B", out).group(1))
    assert paged_in == released == _low_length(lite0)
    predictions = re.findall(r"(part|full)-bit: (.+)", out)
    assert [mode for mode, _ in predictions] == ["part", "full", "part"]
    assert predictions[0][1] == predictions[2][1]  # back to the same part-bit model
    for _, line in predictions:  # the default photo is skimage's cat; real weights see a cat
        assert "cat" in line.split(",")[0]


def test_progressive_http_example_fetches_prefix_then_low_and_upgrades(
    lite0: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    photo = _package_file("foolbox", "data/imagenet_04_949.jpg")  # label 949: strawberry
    done = run_example("progressive_http.py", str(lite0), "--image", str(photo), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    with nqformat.open(lite0) as f:
        header_end, part_end, full_end = f.header_end, f.part_end, f.full_end
    steps = [_int(b) for b in re.findall(r"step \d: \w+\s+([\d,]+) bytes", out)]
    assert steps == [
        spec.PREAMBLE_SIZE,
        header_end - spec.PREAMBLE_SIZE,
        part_end - header_end,
        full_end - part_end,
    ]
    assert "nothing at or past part_end: True" in out
    assert out.count("-> 206") == 4
    assert f"fetched {full_end:,} bytes in 4 requests" in out
    assert out.rstrip().endswith("server stopped")
    assert re.search(r"part-bit: strawberry", out) and re.search(r"full-bit: strawberry", out)
    held = [
        float(mb) for mb in re.findall(r"weights hold ([\d.]+) MB \((?:part|full)-bit codes", out)
    ]
    assert len(held) == 2 and held[0] < held[1]  # the codes runtime: LOW adds to the codes
    assert not list(tmp_path.iterdir())  # the download cache lived in a temporary directory


def _package_file(package: str, rel: str) -> pathlib.Path:
    found = importlib.util.find_spec(package)
    assert found is not None and found.submodule_search_locations
    return pathlib.Path(next(iter(found.submodule_search_locations))) / rel
