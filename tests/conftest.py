"""Fixtures shared by several test modules."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from nqformat.cli import main
from nqformat.remote.server import RangeServer, serve
from tests._container_util import write_small


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A converted 1000-class timm model with random weights (seconds to make): for the
    mechanics of eval and the runtime, not for accuracy."""
    out = tmp_path_factory.mktemp("model") / "mnv3.nq"
    args = [
        "convert", "mobilenetv3_small_050", "--zoo", "timm", "--n", "8", "--h", "6",
        "--random-init", "--rounding", "rtn", "-q", "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Iterator[RangeServer]:
    """A loopback HTTP server with Range support serving one small valid file, ``m.nq``."""
    root = tmp_path / "site"
    root.mkdir()
    write_small(root / "m.nq")
    with serve(root) as srv:
        yield srv
