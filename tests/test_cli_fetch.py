"""``nqtool fetch`` against a loopback range server: prefix only, resume to full, atomicity."""

from __future__ import annotations

import pathlib
import re

from click.testing import CliRunner

import nqformat
from nqformat.cli import main
from nqformat.cli._common import EXIT_FAILED, EXIT_INVALID_FILE
from nqformat.remote.server import RangeServer
from tests._container_util import write_small


def _fetch(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["fetch", "-q", *args])
    return result.exit_code, result.output


def _ends(srv: RangeServer) -> list[int]:
    """End (exclusive) of every byte range the server sent."""
    return [int(re.match(r"bytes=\d+-(\d+)", e.range).group(1)) + 1 for e in srv.requests()]


def test_part_fetches_the_prefix_and_nothing_past_part_end(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    served = (site.root / "m.nq").read_bytes()
    with nqformat.open(site.root / "m.nq") as f:
        part_end = f.part_end
    out = tmp_path / "local.nq"
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out), "--part")
    assert code == 0, text
    assert out.read_bytes() == served[:part_end]
    assert max(_ends(site)) == part_end and site.bytes_sent() == part_end
    saved = len(served) - part_end
    assert f"saved {saved:,} of the {len(served):,} bytes" in text
    with nqformat.open(out) as f:
        assert f.part_only


def test_second_run_completes_a_part_file_by_fetching_only_the_rest(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    served = (site.root / "m.nq").read_bytes()
    out = tmp_path / "local.nq"
    assert _fetch(site.url_of("m.nq"), "-o", str(out), "--part")[0] == 0
    part_end = out.stat().st_size
    site.clear()
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == 0, text
    assert out.read_bytes() == served
    # the preamble (to recognise the same file), then only [part_end, end)
    assert [e.range for e in site.requests()] == [
        "bytes=0-255",
        f"bytes={part_end}-{len(served) - 1}",
    ]
    assert f"reused {part_end:,} bytes" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.nq", "site"]


def test_interrupted_download_is_resumed_from_its_last_byte(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    served = (site.root / "m.nq").read_bytes()
    out = tmp_path / "local.nq"
    (tmp_path / ".local.nq.download").write_bytes(served[:5000])  # as a killed run leaves it
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == 0, text
    assert out.read_bytes() == served
    assert [e.range for e in site.requests()] == ["bytes=0-255", f"bytes=5000-{len(served) - 1}"]
    assert not (tmp_path / ".local.nq.download").exists()


def test_a_file_of_another_version_on_disk_is_not_extended(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "local.nq"
    write_small(tmp_path / "other.nq", seed=5)
    other = (tmp_path / "other.nq").read_bytes()
    with nqformat.open(tmp_path / "other.nq") as f:
        out.write_bytes(other[: f.part_end])
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == 0, text
    assert out.read_bytes() == (site.root / "m.nq").read_bytes()


def test_already_complete_file_costs_one_preamble_request(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "local.nq"
    assert _fetch(site.url_of("m.nq"), "-o", str(out))[0] == 0
    site.clear()
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == 0 and "already holds the file" in text
    assert site.bytes_sent() == 256


def test_server_without_range_support_fails_clearly_and_writes_nothing(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    site.honour_range = False
    out = tmp_path / "local.nq"
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == EXIT_FAILED and "ignored the Range header" in text
    assert not out.exists()


def test_corrupt_download_is_rejected_and_never_reaches_the_output(
    site: RangeServer, tmp_path: pathlib.Path
) -> None:
    path = site.root / "m.nq"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # inside LOW: the header is fine, the data is not
    path.write_bytes(bytes(raw))
    out = tmp_path / "local.nq"
    code, text = _fetch(site.url_of("m.nq"), "-o", str(out))
    assert code == EXIT_INVALID_FILE and "does not verify" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_not_a_url_is_refused(tmp_path: pathlib.Path) -> None:
    code, text = _fetch(str(tmp_path / "m.nq"))
    assert code == EXIT_FAILED and "not an http(s) URL" in text
