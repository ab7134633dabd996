"""``nqformat.open(url)``, ``nqformat.torch.load(url)`` and streamed LOW (spec §11 step 13),
against a loopback range server that counts what it sends."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nqformat
from nqformat.errors import ChecksumError, NQFormatError
from nqformat.remote.server import RangeServer, serve
from tests._container_util import write_small

ROOT = pathlib.Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
STREAMED = [v for v in MANIFEST["invalid"] if "streamed_low" in v]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("NQFORMAT_CACHE", str(cache))
    return cache


def _nested_names(path: pathlib.Path) -> list[str]:
    with nqformat.open(path) as f:
        return [t.name for t in f.tensors() if t.kind.name == "NESTED"]


def test_open_url_reads_the_part_bit_model_from_the_prefix_only(site: RangeServer) -> None:
    local = site.root / "m.nq"
    with nqformat.open(site.url_of("m.nq")) as f, nqformat.open(local) as g:
        assert f.names() == g.names() and f.metadata == g.metadata
        for name in f.names():
            assert np.array_equal(f.read(name, "part"), g.read(name, "part"))
        assert f.max_offset_read <= f.part_end
        part_end = f.part_end
    assert site.bytes_sent() == part_end
    assert len(site.requests()) == 3


def test_full_bit_read_over_http_fetches_low_once(site: RangeServer) -> None:
    local = site.root / "m.nq"
    with nqformat.open(site.url_of("m.nq")) as f, nqformat.open(local) as g:
        for name in _nested_names(local):
            assert np.array_equal(f.read(name, "full"), g.read(name, "full"))
        assert not f.part_only and f.file_size == local.stat().st_size
    assert site.bytes_sent() == local.stat().st_size
    assert len(site.requests()) == 4


def test_second_open_is_served_by_the_cache_without_a_request(site: RangeServer) -> None:
    url = site.url_of("m.nq")
    with nqformat.open(url) as f:
        first = {n: f.read(n, "part") for n in f.names()}
    site.clear()
    with nqformat.open(url) as f:
        for name, value in first.items():
            assert np.array_equal(f.read(name, "part"), value)
    assert site.requests() == []


def test_open_without_cache_leaves_no_cache(site: RangeServer, private_cache: pathlib.Path) -> None:
    with nqformat.open(site.url_of("m.nq"), cache=False) as f:
        f.read(f.names()[0], "part")
    assert not private_cache.exists()


def test_a_damaged_cache_is_caught_by_the_crcs_and_fetched_again(
    site: RangeServer, private_cache: pathlib.Path
) -> None:
    url = site.url_of("m.nq")
    with nqformat.open(url):
        pass
    (data,) = private_cache.glob("*/data")
    raw = bytearray(data.read_bytes())
    raw[300] ^= 0x01  # inside INDEX: the INDEX CRC no longer matches
    data.write_bytes(bytes(raw))
    site.clear()
    with nqformat.open(url) as f:
        part_end = f.part_end
    assert site.bytes_sent() == part_end  # refetched from the start, once


def test_stream_low_yields_each_tensor_once_its_blob_checks(site: RangeServer) -> None:
    local = site.root / "m.nq"
    with nqformat.open(site.url_of("m.nq")) as f, nqformat.open(local) as g:
        part_end = f.part_end
        site.clear()
        got = []
        for name, error in f.stream_low():
            assert error is None
            # usable now, before LOW is complete, and equal to the whole-LOW result
            assert np.array_equal(f.read(name, "full"), g.read(name, "full"))
            got.append(name)
        assert got == _nested_names(local)
        assert f.low_resident  # LOW.crc checked at the end; LOW stays paged in
    assert [e.range for e in site.requests()] == [f"bytes={part_end}-{local.stat().st_size - 1}"]


def test_stream_low_of_some_tensors_fetches_no_further_than_their_blobs(
    site: RangeServer,
) -> None:
    url = site.url_of("m.nq")
    with nqformat.open(url) as f:
        first = _nested_names(site.root / "m.nq")[0]
        assert [name for name, _ in f.stream_low([first])] == [first]
        assert f.max_offset_read <= f.info(first).low.end
        assert not f.low_resident


@pytest.mark.parametrize("vector", STREAMED, ids=lambda v: v["file"])
@pytest.mark.parametrize("where", ["local", "http"])
def test_streamed_low_vectors(vector: dict, where: str, tmp_path: pathlib.Path) -> None:
    expect = vector["streamed_low"]
    shutil.copy(VECTORS / vector["file"], tmp_path / "v.nq")
    with serve(tmp_path) as srv:
        target = str(tmp_path / "v.nq") if where == "local" else srv.url_of("v.nq")
        with nqformat.open(target) as f:
            seen: dict[str, ChecksumError | None] = {}
            stream = f.stream_low()
            complete = None
            try:
                for name, error in stream:
                    seen[name] = error
                    if error is None:
                        want = np.load(VECTORS / expect["usable"][name])
                        assert f.read(name, "full").tobytes() == want.tobytes()
            except NQFormatError as exc:
                complete = exc.code
            assert {n for n, e in seen.items() if e is None} == set(expect["usable"])
            assert {n for n, e in seen.items() if e is not None} == set(expect["rejected"])
            assert all(e.code == "checksum" for e in seen.values() if e is not None)
            assert complete == expect["complete"]
            if complete is not None:  # LOW.crc failed: no L code of this file is used any more
                with pytest.raises(ChecksumError):
                    f.read(next(iter(expect["usable"])), "full")


def test_reader_import_path_stays_free_of_the_http_client(tmp_path: pathlib.Path) -> None:
    write_small(tmp_path / "m.nq")
    code = (
        "import sys, nqformat; f = nqformat.open(sys.argv[1]); f.read('fc.weight', 'full'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('urllib3', 'requests', 'torch') or m.startswith('nqformat.remote.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.nq")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.stdout.strip() == "[]"


def test_torch_load_url_part_then_switch_fetches_prefix_then_low_only(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    torch = pytest.importorskip("torch")
    import nqformat.torch as nqt
    from tests._torch_models import tiny

    path = site.root / "tiny.nq"
    nqt.convert_model(tiny(), path, n=8, h=6, rounding="rtn")
    with nqformat.open(path) as f:
        part_end, size = f.part_end, f.full_end
    site.clear()
    model = nqt.load(site.url_of("tiny.nq"), mode="part", module=tiny(seed=1))
    reference = nqt.load(path, mode="part", module=tiny(seed=2))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), reference(x))
    assert site.bytes_sent() == part_end and len(site.requests()) == 3
    site.clear()
    nqt.switch(model, "full")
    nqt.switch(reference, "full")
    assert torch.equal(model(x), reference(x))
    assert [(e.range, e.sent) for e in site.requests()] == [
        (f"bytes={part_end}-{size - 1}", size - part_end)
    ]
    nqt.close(model)
    nqt.close(reference)


def test_switch_on_a_served_part_only_file_is_a_part_only_error(site: RangeServer) -> None:
    pytest.importorskip("torch")
    import nqformat.torch as nqt
    from nqformat.errors import PartOnlyError
    from tests._torch_models import tiny

    full = site.root / "tiny.nq"
    nqt.convert_model(tiny(), full, n=8, h=6, rounding="rtn")
    with nqformat.open(full) as f:
        part_end = f.part_end
    (site.root / "tiny.part.nq").write_bytes(full.read_bytes()[:part_end])
    model = nqt.load(site.url_of("tiny.part.nq"), mode="part", module=tiny(seed=1))
    with pytest.raises(PartOnlyError, match=r"http://127\.0\.0\.1:\d+/tiny\.part\.nq"):
        nqt.switch(model, "full")
    nqt.close(model)


def test_a_torch_model_can_upgrade_layer_by_layer_as_low_streams_in(site: RangeServer) -> None:
    torch = pytest.importorskip("torch")
    import nqformat.torch as nqt
    from tests._torch_models import tiny

    path = site.root / "tiny.nq"
    nqt.convert_model(tiny(), path, n=8, h=6, rounding="rtn")
    reference = nqt.load(path, mode="full", module=tiny(seed=2))
    # the recipe writes float32 weights: the float runtime (codes: switch(..., layers=[...]))
    model = nqt.load(site.url_of("tiny.nq"), mode="part", module=tiny(seed=1), resident="float")
    f = nqt.runtime(model).file
    site.clear()
    params = model.state_dict()
    upgraded = []
    for name, error in f.stream_low():  # the recipe of docs/remote.md
        assert error is None
        with torch.no_grad():
            params[name].copy_(torch.from_numpy(f.read(name, "full")))
        upgraded.append(name)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), reference(x))  # every layer upgraded from its streamed blob
    assert len(site.requests()) == 1 and upgraded
    nqt.switch(model, "full")  # LOW is resident now: no further request
    assert len(site.requests()) == 1 and torch.equal(model(x), reference(x))
    nqt.close(model)
    nqt.close(reference)


def test_a_codes_resident_model_upgrades_layer_by_layer_as_low_streams_in(
    site: RangeServer,
) -> None:
    """docs/remote.md's recipe for the default runtime: each layer switches to full-bit as
    soon as its LOW blob has arrived and matched its CRC; all of LOW is one request."""
    torch = pytest.importorskip("torch")
    import nqformat.torch as nqt
    from tests._torch_models import tiny

    path = site.root / "tiny.nq"
    nqt.convert_model(tiny(), path, n=8, h=6, rounding="rtn")
    reference = nqt.load(path, mode="full", module=tiny(seed=2), resident="float")
    model = nqt.load(site.url_of("tiny.nq"), mode="part", module=tiny(seed=1))
    f = nqt.runtime(model).file
    site.clear()
    seen = []
    for name, error in f.stream_low():
        assert error is None
        nqt.switch(model, "full", layers=[name.rpartition(".")[0]])
        seen.append(nqt.modes(model)[name.rpartition(".")[0]])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert seen == ["full"] * len(seen) and nqt.runtime(model).mode == "full"
    assert len(site.requests()) == 1
    nqt.close(model)
    nqt.close(reference)
