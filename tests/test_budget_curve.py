"""The curve tool: its photo pool file (read_pool_file) and its tables (render_markdown)."""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

from nqformat.bench.budget_curve import read_pool_file


def _photo(path: pathlib.Path, content: bytes) -> pathlib.Path:
    path.write_bytes(content)
    return path


def test_pool_file_lists_paths_one_a_line_skipping_blanks_comments_and_duplicates(
    tmp_path: pathlib.Path,
) -> None:
    a = _photo(tmp_path / "a.jpg", b"a")
    b = _photo(tmp_path / "b.jpg", b"b")
    same_as_a = _photo(tmp_path / "c.jpg", b"a")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"# pool\n{a}\n\n  {b}  \n{same_as_a}\n", encoding="utf-8")
    assert read_pool_file(pool) == [a, b]


def test_a_missing_photo_or_an_empty_pool_stops_the_run(tmp_path: pathlib.Path) -> None:
    a = _photo(tmp_path / "a.jpg", b"a")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"{a}\n{tmp_path / 'gone.jpg'}\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="1 listed photos are missing"):
        read_pool_file(pool)
    pool.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no photos"):
        read_pool_file(pool)


def test_markdown_has_one_column_per_measured_budget_point() -> None:
    from nqformat.bench.budget_curve import Curve, CurveSet, Point, render_markdown

    s = CurveSet("m", 8, 4, 1, 1000, 500, fractions=(0.1, 0.25))
    s.curves.append(
        Curve("file", (Point(0.1, 100, 90, 2, 0.5, 0.25), Point(0.25, 250, 250, 4, 1.0, 0.0)))
    )
    text = render_markdown([s], "cmd", {})
    assert "| order | 10 % | 25 % |" in text
    assert "| file | 50.0% / 0.2500 | 100.0% / 0.0000 |" in text
