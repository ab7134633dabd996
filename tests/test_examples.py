"""The scripts in examples/ run end to end (as subprocesses, on the real EfficientNet-Lite0 file:
about 7 s each on an idle 2-core CPU, mostly importing torch and timm) and the
progressive-download server speaks HTTP ranges correctly (in process)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import urllib.error
import urllib.request
from types import ModuleType

import pytest

import nqformat
from nqformat.container import spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPT_TIMEOUT_S = 300


def _load_example(name: str) -> ModuleType:
    spec_ = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec_ is not None and spec_.loader is not None
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


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
        part_end, full_end = f.part_end, f.full_end
    steps = [_int(b) for b in re.findall(r"step \d: \w+\s+([\d,]+) bytes", out)]
    assert steps == [spec.PREAMBLE_SIZE, part_end - spec.PREAMBLE_SIZE, full_end - part_end]
    assert "part-bit only: True" in out
    assert out.count("-> 206") == 3
    assert f"fetched {full_end:,} bytes in 3 requests" in out
    assert "identical to the served file: True" in out
    assert out.rstrip().endswith("server stopped")
    assert re.search(r"part-bit: strawberry", out) and re.search(r"full-bit: strawberry", out)
    assert not list(tmp_path.iterdir())  # the local copy lived in a temporary directory


def _package_file(package: str, rel: str) -> pathlib.Path:
    found = importlib.util.find_spec(package)
    assert found is not None and found.submodule_search_locations
    return pathlib.Path(next(iter(found.submodule_search_locations))) / rel


# --- the range server, in process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def http() -> ModuleType:
    return _load_example("progressive_http")


@pytest.fixture
def served(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def test_range_request_gets_206_with_content_range(http: ModuleType, served: pathlib.Path) -> None:
    data = served.read_bytes()
    with http.serve(served) as url:
        assert url.startswith("http://127.0.0.1:")
        body, content_range = http.fetch_range(url, 10, 20)
        tail, tail_range = http.fetch_range(url, 1000)
    assert body == data[10:20] and content_range == f"bytes 10-19/{len(data)}"
    assert tail == data[1000:] and tail_range == f"bytes 1000-1023/{len(data)}"


def test_request_without_range_gets_the_whole_file(http: ModuleType, served: pathlib.Path) -> None:
    with http.serve(served) as url, urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == served.read_bytes()


def test_unsatisfiable_range_gets_416(http: ModuleType, served: pathlib.Path) -> None:
    with http.serve(served) as url:
        with pytest.raises(urllib.error.HTTPError) as err:
            http.fetch_range(url, 5000)
        assert err.value.code == 416
        assert err.value.headers["Content-Range"] == "bytes */1024"
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(
                urllib.request.Request(url, headers={"Range": "bytes=0-1,5-6"}), timeout=10
            )
        assert bad.value.code == 416


def test_server_refuses_requests_past_its_budget(
    http: ModuleType, served: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_REQUESTS", 2)
    with http.serve(served) as url:
        http.fetch_range(url, 0, 1)
        http.fetch_range(url, 0, 1)
        with pytest.raises(urllib.error.HTTPError) as err:
            http.fetch_range(url, 0, 1)
    assert err.value.code == 503


def test_server_stops_when_the_block_ends(http: ModuleType, served: pathlib.Path) -> None:
    with http.serve(served) as url:
        pass
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_preamble_is_checked_before_its_offsets_are_trusted(
    http: ModuleType, tmp_path: pathlib.Path
) -> None:
    import torch

    import nqformat.torch as nqt

    path = tmp_path / "tiny.nq"
    nqt.convert_model(torch.nn.Linear(8, 4), path, n=8, h=4)
    head = path.read_bytes()[: spec.PREAMBLE_SIZE]
    with nqformat.open(path) as f:
        assert http.parse_preamble(head).part_end == f.part_end
    flipped = bytearray(head)
    flipped[40] ^= 1  # part_end
    with pytest.raises(RuntimeError, match="CRC"):
        http.parse_preamble(bytes(flipped))
    with pytest.raises(RuntimeError, match="magic"):
        http.parse_preamble(b"PK" + head[2:])
