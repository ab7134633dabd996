"""Switch one loaded model between part-bit and full-bit, and see what each costs.

    python examples/switching.py MODEL.nq [IMAGE] [--resident codes|float]

Loads the part-bit model (only the file's prefix is read), classifies IMAGE (default: the
scikit-image cat photo ``chelsea.png``), pages the LOW section in and switches to full-bit,
classifies again, then drops LOW and goes back to part-bit. Prints the bytes paged, the time
of every step and the memory the model holds resident (this process's RSS over its RSS right
before the load). The preprocessing is the one the file's META records for its source model.

By default the module is codes-resident (``resident="codes"``): it keeps the file's packed
codes and dequantizes each layer as it runs, so the part-bit model holds about h/32 of the
FP32 weight memory and a switch only maps or unmaps LOW. ``--resident float`` keeps float32
weights (and rewrites them on a switch) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time
from functools import cache
from typing import Any

TOPK = 3


def default_image_path() -> pathlib.Path:
    """A real photo that ships with an installed package: skimage's cat, else a foolbox image."""
    for pkg, rel in (("skimage", "data/chelsea.png"), ("foolbox", "data/imagenet_00_243.jpg")):
        found = importlib.util.find_spec(pkg)
        if found is not None and found.submodule_search_locations:
            path = pathlib.Path(next(iter(found.submodule_search_locations))) / rel
            if path.is_file():
                return path
    raise SystemExit("no default image found (install scikit-image or foolbox); pass IMAGE")


def load_image(path: pathlib.Path | None) -> Any:
    from PIL import Image

    with Image.open(path or default_image_path()) as img:
        return img.convert("RGB")


@cache
def _imagenet_names() -> list[str] | None:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def predict(model: Any, image: Any, transform: Any) -> list[tuple[int, float]]:
    """Top-k (class index, probability) of one image."""
    import torch

    with torch.inference_mode():
        probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
    top = probs.topk(min(TOPK, probs.numel()))
    return [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]


def rss_mb() -> float | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, AttributeError):
        return None


def describe(pred: list[tuple[int, float]]) -> str:
    names = _imagenet_names()

    def label(i: int) -> str:
        return names[i] if names is not None and i < len(names) else f"class {i}"

    return ", ".join(f"{label(i)} ({p:.2f})" for i, p in pred)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=pathlib.Path, help="a .nq file")
    parser.add_argument("image", type=pathlib.Path, nargs="?", help="photo (default: a cat)")
    parser.add_argument(
        "--resident",
        choices=("codes", "float"),
        default="codes",
        help="keep the file's codes (default) or float32 weights in memory",
    )
    args = parser.parse_args(argv)

    import nqformat
    import nqformat.torch as nqt
    from nqformat.cli.evaluate import preprocess_from_meta

    with nqformat.open(args.file) as f:
        meta, part_end, full_end = f.metadata, f.part_end, f.full_end
    prep = preprocess_from_meta(meta)
    transform = prep.transform()
    image = load_image(args.image)
    print(f"file: {args.file}  part-bit prefix {part_end:,} B of {full_end:,} B")
    print(f"image: {args.image or default_image_path()}  preprocessing: {prep.describe()}")

    base = rss_mb()

    def held() -> str:
        """What the module's state holds (codes or float32 weights), and the process's RSS
        growth since before the load (imports, activations and allocator caches included)."""
        state = nqt.runtime(model).weight_bytes(model) / (1 << 20)
        now = rss_mb()
        rss = "" if now is None or base is None else f", process RSS +{now - base:.1f} MB"
        return f"  [{nqt.runtime(model).mode}: weights hold {state:.1f} MB{rss}]"

    t0 = time.perf_counter()
    model = nqt.load(args.file, mode="part", resident=args.resident)
    print(f"load part-bit     {time.perf_counter() - t0:8.3f} s  ({args.resident}){held()}")
    first = predict(model, image, transform)
    print(f"  part-bit: {describe(first)}")

    up = nqt.switch(model, "full")
    print(f"switch to full    {up.seconds:8.3f} s  paged in  {up.bytes_paged:>12,} B{held()}")
    print(f"  full-bit: {describe(predict(model, image, transform))}")

    down = nqt.switch(model, "part")
    print(f"switch to part    {down.seconds:8.3f} s  released  {down.bytes_paged:>12,} B{held()}")
    again = predict(model, image, transform)
    print(f"  part-bit: {describe(again)}")
    if [i for i, _ in again] != [i for i, _ in first]:
        print("part-bit prediction changed after a round trip", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
