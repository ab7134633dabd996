"""The HTTP range source against a real server on loopback (nqformat.remote.server): what it
requests, what the server sends, the cache, and the errors for servers that break the rules."""

from __future__ import annotations

import os
import pathlib
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nqformat.container import spec
from nqformat.container.reader import parse_header
from nqformat.container.spec import Section
from nqformat.remote import is_url
from nqformat.remote.errors import (
    ContentEncodingError,
    RangeNotSupportedError,
    RemoteChangedError,
    RemoteError,
)
from nqformat.remote.server import Logged, RangeServer
from nqformat.remote.source import RemoteSource
from tests._container_util import write_small


@pytest.fixture
def cache_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), b""


def test_server_answers_ranges_with_206_and_the_rest_as_http_says(site: RangeServer) -> None:
    data = (site.root / "m.nq").read_bytes()
    url = site.url_of("m.nq")
    status, headers, body = _get(url, {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (
        206,
        data[10:20],
        f"bytes 10-19/{len(data)}",
    )
    status, headers, body = _get(url, {"Range": f"bytes={len(data) - 5}-"})
    assert (status, body) == (206, data[-5:])
    assert _get(url)[::2] == (200, data)
    status, headers, _ = _get(url, {"Range": f"bytes={len(data)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    assert _get(url, {"Range": "bytes=0-1,5-6"})[0] == 416
    assert _get(site.url_of("../m.nq"))[0] == 404
    assert [e.sent for e in site.requests()] == [10, 5, len(data), 0, 0, 0]


def _open_part(src: RemoteSource) -> tuple[int, int, int]:
    """What the reader does on open (§11 steps 1-12, then the part map); returns header_end,
    part_end, LOW offset."""
    head = parse_header(src.pread(0, spec.PREAMBLE_SIZE), src.pread, src.size)
    pre = head.preamble
    src.map("part", pre.sections[Section.DATA].offset, pre.part_end)
    return head.header_end, pre.part_end, pre.sections[Section.LOW].offset


def test_is_url_accepts_only_http_and_https() -> None:
    assert is_url("http://h/m.nq") and is_url("HTTPS://h/m.nq")
    assert not is_url("ftp://h/m.nq") and not is_url(pathlib.Path("http:/x")) and not is_url("m.nq")


def test_part_bit_prefix_takes_three_requests_and_nothing_past_part_end(
    site: RangeServer,
) -> None:
    data = (site.root / "m.nq").read_bytes()
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        header_end, part_end, _ = _open_part(src)
        assert src.size == len(data)
        assert bytes(src.view("part", part_end - 10, 10)) == data[part_end - 10 : part_end]
    sent = [(e.range, e.status, e.sent) for e in site.requests()]
    assert sent == [
        ("bytes=0-255", 206, 256),
        (f"bytes=256-{header_end - 1}", 206, header_end - 256),
        (f"bytes={header_end}-{part_end - 1}", 206, part_end - header_end),
    ]
    assert site.bytes_sent() == part_end < len(data)
    assert site.connections == 1  # keep-alive: one connection for all of it


def test_paging_low_in_fetches_only_the_rest(site: RangeServer) -> None:
    data = (site.root / "m.nq").read_bytes()
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        _, part_end, low_off = _open_part(src)
        site.clear()
        src.map("low", low_off, src.size)
        assert bytes(src.view("low", low_off, src.size - low_off)) == data[low_off:]
    assert [(e.range, e.sent) for e in site.requests()] == [
        (f"bytes={part_end}-{len(data) - 1}", len(data) - part_end)
    ]


def test_advised_sequential_read_is_one_request_consumed_as_it_arrives(
    site: RangeServer,
) -> None:
    data = (site.root / "m.nq").read_bytes()
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        _, part_end, low_off = _open_part(src)
        site.clear()
        src.advise(part_end, src.size)
        first = src.pread(low_off, 8)  # only what is needed so far has to have arrived
        assert first == data[low_off : low_off + 8]
        assert src.pread(src.size - 8, 8) == data[-8:]
    assert [e.range for e in site.requests()] == [f"bytes={part_end}-{len(data) - 1}"]


def test_cache_hit_makes_no_request(site: RangeServer, cache_dir: pathlib.Path) -> None:
    url = site.url_of("m.nq")
    with RemoteSource(url, cache_dir=cache_dir) as src:
        _open_part(src)
        assert not src.from_cache
    site.clear()
    with RemoteSource(url, cache_dir=cache_dir) as src:
        _, part_end, _ = _open_part(src)
        assert src.from_cache and src.requests == 0 and src.prefix_length == part_end
    assert site.requests() == []


def test_cache_extends_its_prefix_with_the_missing_bytes_only(
    site: RangeServer, cache_dir: pathlib.Path
) -> None:
    url = site.url_of("m.nq")
    size = (site.root / "m.nq").stat().st_size
    with RemoteSource(url, cache_dir=cache_dir) as src:
        _, part_end, _ = _open_part(src)
    site.clear()
    with RemoteSource(url, cache_dir=cache_dir) as src:
        src.map("low", part_end, size)
    assert [e.range for e in site.requests()] == [f"bytes={part_end}-{size - 1}"]


def test_disabled_cache_leaves_nothing_behind(
    site: RangeServer, cache_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NQFORMAT_CACHE", str(cache_dir))
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        _open_part(src)
        folder = src._entry.folder
        assert folder.exists()
    assert not folder.exists() and not cache_dir.exists()


def test_default_cache_is_under_xdg_cache_home(
    site: RangeServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NQFORMAT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with RemoteSource(site.url_of("m.nq")) as src:
        assert src._entry.folder.parent == tmp_path / "xdg" / "nqformat"


def test_server_ignoring_range_is_a_clear_error(site: RangeServer) -> None:
    site.honour_range = False
    with pytest.raises(RangeNotSupportedError, match="ignored the Range header"):
        RemoteSource(site.url_of("m.nq"), cache=False)
    assert [e.status for e in site.requests()] == [200]


def test_content_encoding_is_a_clear_error(site: RangeServer) -> None:
    site.content_encoding = "gzip"
    with pytest.raises(ContentEncodingError, match="gzip"):
        RemoteSource(site.url_of("m.nq"), cache=False)


def test_response_longer_than_its_range_is_a_clear_error(site: RangeServer) -> None:
    site.overrun = 100
    with pytest.raises(RangeNotSupportedError, match="not the range it claims"):
        RemoteSource(site.url_of("m.nq"), cache=False)


def test_file_replaced_between_requests_is_a_clear_error(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    path = site.root / "m.nq"
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        src.pread(0, spec.PREAMBLE_SIZE)
        write_small(tmp_path / "other.nq", seed=1)
        other = (tmp_path / "other.nq").read_bytes()
        os.replace(tmp_path / "other.nq", path)
        os.utime(path, ns=(1, 1))  # a new mtime even on coarse clocks: a new ETag
        assert len(other) == src.size  # same size: only the validators tell them apart
        with pytest.raises(RemoteChangedError, match="ETag changed"):
            src.pread(0, 1024)


def test_stale_cache_is_detected_when_it_is_extended(
    site: RangeServer, cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    url = site.url_of("m.nq")
    with RemoteSource(url, cache_dir=cache_dir) as src:
        _, part_end, _ = _open_part(src)
    write_small(tmp_path / "other.nq", seed=2)
    os.replace(tmp_path / "other.nq", site.root / "m.nq")
    os.utime(site.root / "m.nq", ns=(2, 2))
    with RemoteSource(url, cache_dir=cache_dir) as src, pytest.raises(RemoteChangedError):
        src.map("low", part_end, src.size)


def test_transient_server_errors_are_retried(site: RangeServer) -> None:
    site.fail_next = 2
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        assert src.pread(0, 8) == spec.MAGIC
    assert [e.status for e in site.requests()] == [503, 503, 206]


def test_persistent_server_errors_give_up_with_the_status(site: RangeServer) -> None:
    site.fail_next = 100
    with pytest.raises(RemoteError, match="503"):
        RemoteSource(site.url_of("m.nq"), cache=False, retries=1)


def test_response_cut_short_is_resumed_from_the_last_byte(site: RangeServer) -> None:
    data = (site.root / "m.nq").read_bytes()
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        _, part_end, _ = _open_part(src)
        site.clear()
        site.cut_next = 1000
        src.map("low", part_end, src.size)
        assert bytes(src.view("low", part_end, src.size - part_end)) == data[part_end:]
    assert [e.range for e in site.requests()] == [
        f"bytes={part_end}-{len(data) - 1}",
        f"bytes={part_end + 1000}-{len(data) - 1}",
    ]


def test_missing_file_is_a_remote_error(site: RangeServer) -> None:
    with pytest.raises(RemoteError, match="404"):
        RemoteSource(site.url_of("nope.nq"), cache=False)


def test_file_shorter_than_a_preamble_is_served_as_it_is(site: RangeServer) -> None:
    (site.root / "short.nq").write_bytes(b"NQ")
    with RemoteSource(site.url_of("short.nq"), cache=False) as src:
        assert src.size == 2 and src.pread(0, spec.PREAMBLE_SIZE) == b"NQ"


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(reads=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 4_000)), max_size=8))
def test_any_sequence_of_reads_returns_the_file_bytes(
    site: RangeServer, reads: list[tuple[int, int]]
) -> None:
    data = (site.root / "m.nq").read_bytes()
    with RemoteSource(site.url_of("m.nq"), cache=False) as src:
        for offset, length in reads:
            assert src.pread(offset, length) == data[offset : offset + length]
        # one prefix, fetched once: the preamble at open, then up to the furthest byte read
        furthest = max((o + n for o, n in reads), default=0)
        assert src.bytes_fetched == min(max(furthest, spec.PREAMBLE_SIZE), len(data))


def test_two_openers_of_one_url_share_the_cached_prefix_without_fetching_twice(
    site: RangeServer, cache_dir: pathlib.Path
) -> None:
    data = (site.root / "m.nq").read_bytes()
    url = site.url_of("m.nq")
    with (
        RemoteSource(url, cache_dir=cache_dir) as a,
        RemoteSource(url, cache_dir=cache_dir) as b,
    ):
        assert a.pread(0, 5000) == data[:5000]
        assert b.pread(0, 8000) == data[:8000]  # b fetches only what a has not
        assert a.pread(7000, 2000) == data[7000:9000]  # and a only what b has not
        assert b.pread(0, len(data)) == data
        assert a.pread(0, len(data)) == data
    assert [e.range for e in site.requests()] == [
        "bytes=0-255",
        "bytes=256-4999",
        "bytes=5000-7999",
        "bytes=8000-8999",
        f"bytes=9000-{len(data) - 1}",
    ]


def test_the_server_log_is_in_request_order_when_handler_threads_finish_out_of_order(
    tmp_path: pathlib.Path,
) -> None:
    # two connections: the thread of the first response can record after the second's
    state = RangeServer(tmp_path)
    first, second = state._begin(), state._begin()
    state._record(second, Logged("m.nq", "bytes=10-19", 206, 10))
    assert state.log == []  # the first request is still in flight: nothing after it is logged
    state._record(first, Logged("m.nq", "bytes=0-9", 206, 10))
    assert [e.range for e in state.requests()] == ["bytes=0-9", "bytes=10-19"]
