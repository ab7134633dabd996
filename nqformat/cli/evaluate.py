"""``nqtool eval``: top-1/top-5 of the part-bit and full-bit models on labelled images.

The images are an ImageFolder tree (DIR/<class>/<image>) or, with ``--labels-from-filename``, a
flat folder whose file names end in the class index (foolbox's ``imagenet_00_243.jpg``: 243).

torch, torchvision and the runtime are imported inside the command only, so the rest of nqtool
stays torch-free. The preprocessing is the one the file's META records for its source model.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click

from nqformat.cli._common import (
    EXIT_USAGE,
    fail,
    human_errors,
    require_file,
    require_torch_extra,
)

__all__ = [
    "EvalResult",
    "Preprocess",
    "eval_cmd",
    "imagenet_synset_index",
    "label_from_filename",
    "parse_budget",
    "parse_class_index",
    "preprocess_from_meta",
]

#: the standard ImageNet evaluation transform (pytorchcv, torchvision): resize the shorter side
#: to 256 (= 224 / 0.875), bilinear, centre-crop 224, normalise with the ImageNet mean and std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bilinear"
TOPK = (1, 5)
#: --limit draws its images with this seed, so a limited run is the same every time.
LIMIT_SEED = 0
MIB = 1 << 20
#: --labels-from-filename: the class index is the last ``_<digits>`` of the file's stem
LABEL_IN_NAME = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class Preprocess:
    """Evaluation transform: resize the shorter side, centre-crop, normalise.

    ``resize`` defaults to floor(input_size / crop_pct), timm's rule for ``crop_mode="center"``;
    META may record it explicitly (pytorchcv rounds up instead).
    """

    input_size: int = DEFAULT_INPUT_SIZE
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int = 0  # 0: derive from input_size and crop_pct
    source: str = "default (ImageNet standard: resize 256 bilinear, crop 224)"

    def __post_init__(self) -> None:
        if self.resize == 0:
            object.__setattr__(self, "resize", math.floor(self.input_size / self.crop_pct))

    def transform(self) -> Any:
        from torchvision import transforms

        modes = {
            "bilinear": transforms.InterpolationMode.BILINEAR,
            "bicubic": transforms.InterpolationMode.BICUBIC,
            "nearest": transforms.InterpolationMode.NEAREST,
        }
        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=modes[self.interpolation]),
                transforms.CenterCrop(self.input_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def describe(self) -> str:
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        return (
            f"resize {self.resize} {self.interpolation}, centre crop {self.input_size}, "
            f"mean ({mean}) std ({std})  [{self.source}]"
        )


def _find_data_config(meta: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str]:
    model = meta.get("model")
    model = model if isinstance(model, dict) else {}
    config = model.get("data_config")
    return (config, "model.data_config") if isinstance(config, dict) else (None, "")


def preprocess_from_meta(meta: Mapping[str, Any]) -> Preprocess:
    """The transform META ``model.data_config`` records (timm's data-config keys plus
    ``resize``, written by ``nqformat.zoo``), else the standard ImageNet one."""
    config, where = _find_data_config(meta)
    if config is None:
        return Preprocess()
    size = config.get("input_size", DEFAULT_INPUT_SIZE)
    if isinstance(size, Sequence):  # timm: (channels, height, width)
        height, width = int(size[-2]), int(size[-1])
        if height != width:
            raise click.ClickException(
                f"META {where}.input_size {list(size)} is not square; eval supports square crops"
            )
        size = height
    crop_mode = config.get("crop_mode", "center")
    if crop_mode != "center":
        raise click.ClickException(
            f"META {where}.crop_mode is {crop_mode!r}; eval implements 'center' only"
        )
    interpolation = str(config.get("interpolation", DEFAULT_INTERPOLATION))
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise click.ClickException(f"META {where}.interpolation {interpolation!r} is not supported")
    mean = tuple(float(x) for x in config.get("mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in config.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise click.ClickException(f"META {where}: mean and std need 3 values (RGB)")
    return Preprocess(
        input_size=int(size),
        crop_pct=float(config.get("crop_pct", DEFAULT_CROP_PCT)),
        resize=int(config.get("resize", 0)),
        interpolation=interpolation,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        source=f"META {where}",
    )


def parse_class_index(path: pathlib.Path) -> dict[str, int]:
    """Folder name -> class index, from JSON ``{name: index}`` or a text file of names in order.

    A text file has one name per line (blank lines and ``#`` comments skipped); line i is index i.
    """
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not valid JSON ({exc})") from exc
        bad = [k for k, v in data.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad:
            raise click.ClickException(
                f"{path}: class indices must be non-negative integers (bad: {bad[:3]})"
            )
        return dict(data)
    names = [line.strip() for line in text.splitlines()]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise click.ClickException(f"{path}: no class names found")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise click.ClickException(f"{path}: class {name!r} is listed twice")
        index[name] = i
    return index


def label_from_filename(path: pathlib.Path) -> int | None:
    """The class index a file name carries as its last ``_<digits>`` (``imagenet_00_243.jpg``:
    243, the way foolbox names its ImageNet samples); None where the name carries none."""
    match = LABEL_IN_NAME.search(pathlib.Path(path).stem)
    return int(match.group(1)) if match else None


def imagenet_synset_index() -> dict[str, int]:
    """WordNet synset id (n01440764, ...) -> standard ImageNet-1k index, from timm (offline)."""
    from timm.data import ImageNetInfo

    return {name: i for i, name in enumerate(ImageNetInfo().label_names())}


@dataclass(frozen=True)
class EvalResult:
    mode: str
    images: int
    top1: int
    top5: int
    seconds: float

    @property
    def top1_acc(self) -> float:
        return self.top1 / self.images if self.images else 0.0

    @property
    def top5_acc(self) -> float:
        return self.top5 / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top1_acc": self.top1_acc, "top5_acc": self.top5_acc}


def _dataset(data: pathlib.Path, preprocess: Preprocess, mapping: dict[str, int] | None) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        dataset = ImageFolder(str(data), transform=preprocess.transform())
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"{data}: no images in ImageFolder layout (DIR/<class>/<image>) ({exc})"
        ) from exc
    if mapping is not None:
        missing = [c for c in dataset.classes if c not in mapping]
        if missing:
            raise click.ClickException(
                f"{len(missing)} folder(s) of {data} are not in the class index, e.g. "
                f"{', '.join(missing[:5])}"
            )
        remap = [mapping[c] for c in dataset.classes]
        dataset.target_transform = remap.__getitem__
    return dataset


class _FlatLabelled:
    """A flat folder of images labelled by their file names (a map-style torch dataset)."""

    def __init__(self, data: pathlib.Path, preprocess: Preprocess, pattern: str) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        files = sorted(
            p for p in data.glob(pattern) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        )
        if not files:
            raise click.ClickException(
                f"{data}: no images ({', '.join(IMG_EXTENSIONS[:3])}, ...) matching {pattern!r} "
                "directly in the folder"
            )
        labels = [label_from_filename(p) for p in files]
        unlabelled = [p.name for p, label in zip(files, labels, strict=True) if label is None]
        if unlabelled:
            raise click.ClickException(
                f"{len(unlabelled)} image(s) of {data} carry no class index in their name "
                f"(expected NAME_<index>.jpg, e.g. imagenet_00_243.jpg), e.g. {unlabelled[0]}"
            )
        self.samples = [(p, int(label)) for p, label in zip(files, labels, strict=True)]
        self.classes = sorted({str(label) for _, label in self.samples})
        self.transform = preprocess.transform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        return self.transform(default_loader(str(path))), label


def _check_folders_fit(folders: int, data: pathlib.Path, classes: int) -> None:
    """Folders indexed in sorted order are the model's classes only if there are as many."""
    if folders == classes:
        return
    raise click.ClickException(
        f"{data} has {folders} class folder(s) but the model has {classes} classes, so the "
        "folders in sorted order cannot be its class indices; say how they map with "
        "--imagenet-synsets (folders named n01440764, ...), --class-index FILE, or use "
        "--labels-from-filename for a flat folder of NAME_<index>.jpg files"
    )


def _run(
    model: Any,
    loader: Any,
    mode: str,
    num_images: int,
    sorted_folders: tuple[int, pathlib.Path] | None = None,
) -> EvalResult:
    """Top-1/top-5 counts of ``model`` over ``loader``. ``sorted_folders``: (number of class
    folders, DATA) when the folders are indexed in sorted order, checked against the model's
    classes on the first batch, before any count is reported."""
    import torch
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    top1 = top5 = seen = 0
    start = time.perf_counter()
    columns = (
        TextColumn(f"[bold]{mode:>4}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("top-1 {task.fields[acc]}"),
        TimeRemainingColumn(),
    )
    # on stderr, so that stdout carries only results (and --json output stays parseable)
    console = Console(stderr=True)
    with Progress(*columns, console=console) as progress, torch.inference_mode():
        task = progress.add_task(mode, total=num_images, acc="-")
        for images, targets in loader:
            logits = model(images)
            if logits.ndim != 2:
                raise click.ClickException(
                    f"the model returned shape {tuple(logits.shape)}, expected (batch, classes)"
                )
            classes = logits.shape[1]
            if sorted_folders is not None:
                _check_folders_fit(*sorted_folders, classes)
                sorted_folders = None  # the first batch decides
            if int(targets.max()) >= classes:
                raise click.ClickException(
                    f"class index {int(targets.max())} but the model has {classes} classes; "
                    "check --class-index / --imagenet-synsets / --labels-from-filename"
                )
            k = min(max(TOPK), classes)
            best = logits.topk(k, dim=1).indices
            hits = best == targets[:, None]
            top1 += int(hits[:, :1].any(dim=1).sum())
            top5 += int(hits.any(dim=1).sum())
            seen += len(targets)
            progress.update(task, advance=len(targets), acc=f"{100 * top1 / seen:.1f}%")
    return EvalResult(mode, seen, top1, top5, time.perf_counter() - start)


@click.command("eval")
@click.argument("file", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path),
    help="ImageFolder tree DIR/<class folder>/<image>, or a flat folder with "
    "--labels-from-filename.",
)
@click.option(
    "--mode",
    type=click.Choice(["part", "full", "both"]),
    default="both",
    show_default=True,
    help="Which model to evaluate; 'both' switches part -> full in place.",
)
@click.option(
    "--class-index",
    type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
    help="Folder name -> model class index: JSON {name: index} or a text file of names in order.",
)
@click.option(
    "--imagenet-synsets",
    is_flag=True,
    help="Folders are ImageNet synset ids (n01440764, ...): map them to the standard 0..999.",
)
@click.option(
    "--labels-from-filename",
    is_flag=True,
    help="DATA is a flat folder of images whose names end in the class index, NAME_<index>.jpg "
    "(as foolbox names its ImageNet samples: imagenet_00_243.jpg is class 243).",
)
@click.option(
    "--pattern",
    default="*",
    show_default=True,
    help="With --labels-from-filename: only the images whose names match this glob "
    "(foolbox's folder also holds CIFAR and MNIST samples: --pattern 'imagenet_*').",
)
@click.option(
    "--resident",
    type=click.Choice(["codes", "float"]),
    default="codes",
    show_default=True,
    help="codes: keep the packed codes and dequantize each layer as it runs (part-bit memory); "
    "float: expand every weight to float32 at load. Outputs are bit-identical.",
)
@click.option(
    "--budget",
    metavar="BYTES",
    help="Upgrade the part-bit model within BYTES of LOW (or a share of LOW such as 25%), the "
    "layers with the largest predicted gain per byte first (nqformat.torch.upgrade_within), and "
    "evaluate that model as 'budget' (after 'part' with --mode both). Needs --resident codes.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Evaluate N images drawn with a fixed seed (the same N every run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@human_errors
def eval_cmd(
    file: pathlib.Path,
    data: pathlib.Path,
    mode: str,
    class_index: pathlib.Path | None,
    imagenet_synsets: bool,
    labels_from_filename: bool,
    pattern: str,
    resident: str,
    budget: str | None,
    batch_size: int,
    workers: int,
    limit: int | None,
    as_json: bool,
) -> None:
    """Measure top-1 and top-5 of FILE's part-bit and/or full-bit model on images in DATA.

    The model runs on the codes-resident runtime by default (--resident codes: packed codes in
    memory, each layer dequantized as it runs); the memory its weights hold is printed per mode.

    DATA is an ImageFolder tree. Its folders are indexed in sorted order unless --class-index or
    --imagenet-synsets says how they map to the model's classes (needed for any subset of
    ImageNet); sorted folders that cannot be the model's classes are an error. With
    --labels-from-filename DATA is a flat folder and each file name carries its class index.
    The preprocessing is the one recorded in the file's META.
    """
    import nqformat

    require_file(file)
    chosen = [class_index is not None, imagenet_synsets, labels_from_filename]
    if sum(chosen) > 1:
        fail(
            "give one of --class-index, --imagenet-synsets, --labels-from-filename, not both",
            EXIT_USAGE,
        )
    if pattern != "*" and not labels_from_filename:
        fail("--pattern selects files of a flat folder: give --labels-from-filename", EXIT_USAGE)
    if budget is not None and (mode == "full" or resident != "codes"):
        fail("--budget upgrades layers of the part-bit model one by one: it needs --mode part "
             "or both and --resident codes", EXIT_USAGE)  # fmt: skip
    require_torch_extra("eval", "torchvision")
    with nqformat.open(file) as f:
        meta = f.metadata
        part_only = f.part_only
        # the LOW blobs' bytes, as upgrade_within counts them
        low_bytes = sum(t.low.length for t in f.tensors() if t.kind.name == "NESTED")
    if part_only and (mode != "part" or budget is not None):
        fail(f"{file} is a part-bit-only file (LOW absent): only --mode part can run")
    budget_bytes = parse_budget(budget, low_bytes) if budget is not None else None
    preprocess = preprocess_from_meta(meta)
    if class_index is not None:
        mapping: dict[str, int] | None = parse_class_index(class_index)
    elif imagenet_synsets:
        mapping = imagenet_synset_index()
    else:
        mapping = None

    import torch
    from torch.utils.data import DataLoader, Subset

    import nqformat.torch as nqtorch

    if labels_from_filename:
        dataset: Any = _FlatLabelled(data, preprocess, pattern)
        sorted_folders = None
    else:
        dataset = _dataset(data, preprocess, mapping)
        sorted_folders = (len(dataset.classes), data) if mapping is None else None
    total = len(dataset)
    if limit is not None and limit < total:
        generator = torch.Generator().manual_seed(LIMIT_SEED)
        indices = torch.randperm(total, generator=generator)[:limit].sort().values.tolist()
        dataset = Subset(dataset, indices)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    num_images = len(dataset)
    if not as_json:
        if labels_from_filename:
            click.echo(
                f"data: {num_images} images {pattern!r} in {data}, class index from each file name"
            )
        else:
            click.echo(f"data: {num_images} images in {len(_classes(dataset))} folders of {data}")
        click.echo(f"preprocessing: {preprocess.describe()}")
        if mapping is None and not labels_from_filename:
            click.echo("class index: folders in sorted order -> 0..k-1 (no --class-index given)")
    model_meta = meta.get("model")
    if isinstance(model_meta, dict) and model_meta.get("random_init") is True:
        click.echo(
            "WARNING: the file holds randomly initialised weights; its accuracy is meaningless",
            err=True,
        )

    results: list[EvalResult] = []
    switch_info: dict[str, Any] | None = None
    first = "full" if mode == "full" else "part"
    weight_bytes: dict[str, int] = {}
    budget_info: dict[str, Any] | None = None
    model = nqtorch.load(file, mode=first, resident=resident)
    try:
        model.eval()
        handle = nqtorch.runtime(model)
        if budget_bytes is None or mode == "both":
            weight_bytes[first] = handle.weight_bytes(model)
            results.append(_run(model, loader, first, num_images, sorted_folders))
            sorted_folders = None
        if budget_bytes is not None:
            chosen = nqtorch.upgrade_within(model, budget_bytes)
            budget_info = {**asdict(chosen), "summary": chosen.summary()}
            weight_bytes["budget"] = handle.weight_bytes(model)
            results.append(_run(model, loader, "budget", num_images, sorted_folders))
        elif mode == "both":
            report = nqtorch.switch(model, "full")
            switch_info = {**asdict(report), "bytes_paged": report.bytes_paged}
            weight_bytes["full"] = handle.weight_bytes(model)
            results.append(_run(model, loader, "full", num_images))
    finally:
        nqtorch.close(model)

    if as_json:
        out = {
            "file": str(file),
            "data": str(data),
            "images": num_images,
            "preprocess": asdict(preprocess),
            "results": {r.mode: r.to_dict() for r in results},
            "switch": switch_info,
            "budget": budget_info,
            "resident": resident,
            "weight_bytes": weight_bytes,
        }
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    if budget_info is not None:
        click.echo(budget_info["summary"])
    for r in results:
        click.echo(
            f"{r.mode:>4}  top-1 {100 * r.top1_acc:6.2f}% ({r.top1}/{r.images})  "
            f"top-5 {100 * r.top5_acc:6.2f}% ({r.top5}/{r.images})  {r.seconds:.1f} s  "
            f"weights resident {weight_bytes[r.mode] / MIB:.1f} MiB ({resident} runtime)"
        )
    if switch_info is not None:
        done = "switched" if resident == "codes" else "rewrote"
        click.echo(
            f"switch part -> full: paged in {switch_info['bytes_paged_in']:,} bytes of LOW, "
            f"{done} {switch_info['tensors']} layers in {switch_info['seconds']:.2f} s"
        )


def parse_budget(text: str, low_bytes: int) -> int:
    """``--budget``: a byte count (``1500000``) or a share of the file's LOW (``25%``)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return int(share / 100 * low_bytes)
        budget = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give a number of bytes or a percentage of LOW such as 25%",
            param_hint="--budget",
        ) from None
    if budget < 0:
        raise click.BadParameter(f"{text!r}: a budget cannot be negative", param_hint="--budget")
    return budget


def _classes(dataset: Any) -> list[str]:
    base = getattr(dataset, "dataset", dataset)
    return list(base.classes)
