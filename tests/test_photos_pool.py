"""The photo pools of nqformat.bench.photos: directory sources (a glob less exclusions), the
same-photo dedupe (a photo at another size or JPEG quality is one photo) and the pool names
tools/accuracy_table.py takes. Small generated fixtures only: the registry packages of the
large pool are not installed in CI (tools/install_photos.sh, docs/photos.md)."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from nqformat.bench import photos


def _photo_like(seed: int, size: tuple[int, int] = (240, 160)) -> Image.Image:
    """A smooth random RGB field with fine noise: structure at every scale, like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    noisy = smooth + rng.normal(0, 6, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture
def photo_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "pkg"
    d.mkdir()
    _photo_like(1).save(d / "a.png")
    _photo_like(2).save(d / "b.jpg", quality=90)
    big = _photo_like(3, (600, 400))
    big.save(d / "c.jpg", quality=92)
    # the same photo shipped again at a third of the size and a lower JPEG quality
    big.resize((200, 133), Image.Resampling.LANCZOS).save(d / "c_small.jpg", quality=60)
    (d / "menu.jpg").write_bytes((d / "b.jpg").read_bytes())  # a byte-identical copy
    (d / "notes.txt").write_text("not a photo")
    return d


def test_a_directory_source_takes_the_glob_less_its_exclusions(photo_dir) -> None:
    src = photos.PhotoSource("pkg 1", "apt-get install pkg", "-", str(photo_dir), (), "*.jpg")
    assert [p.name for p in src.paths(photo_dir)] == ["b.jpg", "c.jpg", "c_small.jpg", "menu.jpg"]
    src = photos.PhotoSource(
        "pkg 1", "-", "-", str(photo_dir), (), "*.jpg", exclude=("menu.jpg", "c_small.jpg")
    )
    assert [p.name for p in src.paths(photo_dir)] == ["b.jpg", "c.jpg"]


def test_explicit_files_win_over_the_pattern(photo_dir) -> None:
    src = photos.PhotoSource("pkg 1", "-", "-", str(photo_dir), ("a.png",), "*.jpg")
    assert src.paths(photo_dir) == [photo_dir / "a.png"]


def test_a_missing_directory_source_is_reported_not_raised(tmp_path) -> None:
    gone = photos.PhotoSource("gone 1", "-", "-", str(tmp_path / "nope"), (), "*.jpg")
    here = photos.PhotoSource("here 1", "-", "-", str(tmp_path), (), "*.jpg")
    _photo_like(4).save(tmp_path / "x.jpg")
    assert photos.registry_photos([gone, here]) == ([tmp_path / "x.jpg"], ["gone 1"])


def test_the_same_photo_at_another_size_and_quality_is_dropped_others_kept(photo_dir) -> None:
    paths = [photo_dir / n for n in ("a.png", "b.jpg", "c.jpg", "c_small.jpg")]
    assert photos.same_photo_distinct(paths) == paths[:3]
    # the first of the two is kept, whichever order they come in
    assert photos.same_photo_distinct(paths[::-1]) == [paths[3], paths[1], paths[0]]


def test_different_photos_with_the_same_layout_are_not_merged(tmp_path) -> None:
    # two different "night sky" photos: a bright blob in the middle of black, different stars
    paths = []
    for seed in (5, 6):
        rng = np.random.default_rng(seed)
        img = np.zeros((128, 128, 3))
        yy, xx = np.mgrid[:128, :128]
        img += (200 * np.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / 300.0))[..., None]
        for y, x in rng.integers(0, 128, (60, 2)):
            img[y, x] = 255
        path = tmp_path / f"sky{seed}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    assert photos.same_photo_distinct(paths) == paths


def test_a_flat_image_neither_crashes_the_dedupe_nor_matches_a_photo(tmp_path) -> None:
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "flat.png")
    _photo_like(7).save(tmp_path / "p.png")
    paths = [tmp_path / "flat.png", tmp_path / "p.png"]
    assert photos.same_photo_distinct(paths) == paths
    assert photos.same_photo_distinct([]) == []


def test_a_palette_image_with_transparency_opens_as_rgb_without_a_warning(tmp_path) -> None:
    img = _photo_like(8).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = photos._open_rgb(tmp_path / "p.png")
        photos.same_photo_distinct([tmp_path / "p.png"])
    assert rgb.mode == "RGB" and rgb.size == (240, 160)


def test_the_large_pool_adds_its_sources_deduped_and_names_missing_ones(
    photo_dir, tmp_path, monkeypatch
) -> None:
    here = photos.PhotoSource("pkg 1", "-", "-", str(photo_dir), (), "*.*", ("notes.txt",))
    gone = photos.PhotoSource("gone 2", "-", "-", str(tmp_path / "nope"), (), "*.jpg")
    monkeypatch.setattr(photos, "REGISTRY_PHOTOS", ())
    monkeypatch.setattr(photos, "LARGE_PHOTOS", (here, gone))
    small, missing = photos.pool_by_name("small")
    assert missing == [] and small == photos.pool_images()
    large, missing = photos.pool_by_name("large")
    # menu.jpg (byte-identical to b.jpg) and c_small.jpg (c.jpg resized) are not counted twice
    extra = [photo_dir / n for n in ("a.png", "b.jpg", "c.jpg")]
    assert large == small + extra
    assert missing == ["gone 2"]


def test_an_unknown_pool_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown photo pool 'huge'"):
        photos.pool_by_name("huge")
