"""``nqtool verify`` names each broken tensor once, with all its problems on one line."""

from __future__ import annotations

import pathlib

import numpy as np
from click.testing import CliRunner

import nqformat
from nqformat.cli import main
from nqformat.cli._common import EXIT_INVALID_FILE
from nqformat.container.verify import Problem, group_by_tensor


def _file(path: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    with nqformat.NQWriter(path, n=4, h=2, metadata={}) as w:
        for name in ("conv.weight", "fc.weight"):
            w.add_nested(
                name,
                w_high=rng.integers(-2, 2, (4, 8), dtype=np.int8),
                w_low=rng.integers(0, 4, (4, 8), dtype=np.int8),  # q = 4H + L in [-8, 7]
                scale_full=np.ones(4, np.float32),
                offset_full=np.zeros(4, np.float32),
                scale_part=np.ones(4, np.float32),
                offset_part=np.zeros(4, np.float32),
            )
    return path


def test_verify_line_names_a_tensor_with_several_failures_once(tmp_path: pathlib.Path) -> None:
    path = _file(tmp_path / "m.nq")
    with nqformat.open(path) as f:
        info = f.info("fc.weight")
    data = bytearray(path.read_bytes())
    data[info.high.offset] ^= 0x01  # HIGH blob CRC breaks
    data[info.low.offset] ^= 0x01  # and LOW blob CRC too
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == EXIT_INVALID_FILE
    lines = [line for line in result.stderr.splitlines() if "fc.weight" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].count("fc.weight") == 1
    assert "HIGH blob CRC" in lines[0] and "LOW blob CRC" in lines[0]
    assert "conv.weight" not in result.stderr


def test_api_verify_names_the_tensor_once_per_problem(tmp_path: pathlib.Path) -> None:
    path = _file(tmp_path / "m.nq")
    with nqformat.open(path) as f:
        info = f.info("conv.weight")
    data = bytearray(path.read_bytes())
    data[info.high.offset] ^= 0x01
    path.write_bytes(bytes(data))
    with nqformat.open(path) as f:
        problems = [p for p in f.verify() if "conv.weight" in p]
    assert problems and all(p.count("conv.weight") == 1 for p in problems)


def test_group_by_tensor_keeps_section_lines_and_first_seen_order() -> None:
    problems = [
        Problem("HIGH section CRC is 0x1, computed 0x2"),
        Problem("HIGH blob CRC bad", "b"),
        Problem("HIGH blob CRC bad", "a"),
        Problem("LOW blob CRC bad", "b"),
    ]
    assert group_by_tensor(problems) == [
        "HIGH section CRC is 0x1, computed 0x2",
        "b: HIGH blob CRC bad; LOW blob CRC bad",
        "a: HIGH blob CRC bad",
    ]
