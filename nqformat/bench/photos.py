"""Real photos that ship with pip packages, and the metrics computed on them.

The labelled set is the 20 ImageNet validation photos foolbox 3.3.4 ships
(``imagenet_{i:02d}_{label}.jpg``); the unlabelled pool adds scikit-image's and scikit-learn's
sample photographs. ``tools/accuracy_table.py`` (docs/accuracy.md) and ``tools/bench_partbit.py``
measure on the same views with these functions. Needs the torch and test extras.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nqformat.cli.evaluate import label_from_filename

__all__ = [
    "SKIMAGE_PHOTOS",
    "SKLEARN_PHOTOS",
    "VIEWS_PER_IMAGE",
    "DataConfig",
    "agreement",
    "centre_views",
    "data_config",
    "labelled_images",
    "logits_of",
    "mean_kl",
    "pool_images",
    "ten_views",
    "top1_correct",
]

#: scikit-image sample photos (real photographs only: no synthetic or binary images)
SKIMAGE_PHOTOS = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
#: forward batch of logits_of
BATCH = 50


def _package_dir(name: str) -> pathlib.Path:
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {name!r} is not installed (pip install 'nqformat[test]')", name=name
        )
    return pathlib.Path(next(iter(found.submodule_search_locations)))


def labelled_images() -> list[tuple[pathlib.Path, int]]:
    """foolbox's 20 ImageNet validation photos, ``imagenet_{i:02d}_{label}.jpg``."""
    files = sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    return [(p, label_from_filename(p)) for p in files]


def pool_images() -> list[pathlib.Path]:
    """The unlabelled pool: the labelled 20 plus the scikit-image and scikit-learn photos."""
    skimage_dir = _package_dir("skimage") / "data"
    sklearn_dir = _package_dir("sklearn") / "datasets" / "images"
    paths = [p for p, _ in labelled_images()]
    paths += [skimage_dir / name for name in SKIMAGE_PHOTOS]
    paths += [sklearn_dir / name for name in SKLEARN_PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing sample photos: {missing}")
    return paths


@dataclass(frozen=True)
class DataConfig:
    """Eval preprocessing of the source model (timm data config)."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def resize(self) -> int:
        return math.floor(self.input_size / self.crop_pct)

    def describe(self) -> str:
        return (
            f"resize {self.resize} {self.interpolation}, crop {self.input_size}, "
            f"mean {list(self.mean)}, std {list(self.std)}"
        )


def data_config(model: torch.nn.Module) -> DataConfig:
    """The model's evaluation preprocessing, as timm resolves it."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return DataConfig(
        input_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg["crop_pct"]),
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
    )


def _open_rgb(path: pathlib.Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _base(cfg: DataConfig) -> tuple[Any, Any]:
    from torchvision import transforms as T

    resize = T.Resize(cfg.resize, interpolation=T.InterpolationMode(cfg.interpolation))
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    return resize, to_tensor


def centre_views(paths: Iterable[pathlib.Path], cfg: DataConfig) -> torch.Tensor:
    """One centre crop per image: the standard evaluation view."""
    from torchvision import transforms as T

    resize, to_tensor = _base(cfg)
    crop = T.CenterCrop(cfg.input_size)
    return torch.stack([to_tensor(crop(resize(_open_rgb(p)))) for p in paths])


VIEWS_PER_IMAGE = 10


def ten_views(paths: Iterable[pathlib.Path], cfg: DataConfig) -> torch.Tensor:
    """Ten views per image: centre and four corner crops, each also flipped horizontally."""
    from torchvision import transforms as T

    resize, to_tensor = _base(cfg)
    ten = T.TenCrop(cfg.input_size)
    return torch.stack([to_tensor(v) for p in paths for v in ten(resize(_open_rgb(p)))])


@torch.inference_mode()
def logits_of(model: torch.nn.Module, x: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """The model's float logits for ``x``, in batches of ``batch`` (eval mode, no grad)."""
    model.eval()
    return torch.cat([model(x[i : i + batch]).float() for i in range(0, len(x), batch)])


def top1_correct(logits: torch.Tensor, labels: Sequence[int]) -> int:
    """How many rows' top-1 class equals the label."""
    return int((logits.argmax(-1) == torch.tensor(list(labels))).sum())


def agreement(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of views where the top-1 class equals the reference's top-1 class."""
    return float((ref.argmax(-1) == other.argmax(-1)).double().mean())


def mean_kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over views of KL(softmax(ref) || softmax(other)), in nats, float64."""
    p = torch.log_softmax(ref.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())
