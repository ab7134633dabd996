"""Quality against LOW bytes paged in, for three upgrade orders (docs/mixed-precision.md).

For one model with real weights: convert it, then for budgets of 0, 10, 25, 50, 75 and 100 %
of the file's LOW bytes upgrade the layers a given order picks (walk the order, take each layer
whose LOW blob still fits: the rule of ``nqformat.torch.upgrade_within``) and measure top-1
agreement and mean KL(FP32 || model) on the photo pool. Orders:

- ``sensitivity``: by the gain per byte stored in the file's META (what ``upgrade_within`` and
  streamed LOW follow);
- ``file``: record order (what a plain front-to-back LOW download gives);
- ``random``: a random permutation, the median over several seeds (per point and metric).

``candidates`` also scores every :class:`~nqformat.quant.sensitivity.Score` the same way, to
choose the stored score by measurement. The mixed models are evaluated on a float32 module
whose weights are the file's part-bit or full-bit values per layer (bit-identical to the
codes-resident runtime in the same modes; a test checks one budget). Needs the torch extra and
the photo packages of nqformat.bench.photos.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import nqformat
from nqformat.bench.photos import (
    centre_views,
    data_config,
    distinct,
    logits_of,
    per_view_kl,
    pool_images,
)
from nqformat.quant.sensitivity import Score, choose_within, gain_order, layer_gains

__all__ = [
    "FRACTIONS",
    "Curve",
    "CurveSet",
    "Point",
    "file_gains",
    "measure_model",
    "read_pool_file",
    "render_markdown",
]

#: budget points, as fractions of the file's LOW bytes (issue 16)
FRACTIONS = (0.0, 0.10, 0.25, 0.50, 0.75, 1.0)


@dataclass(frozen=True)
class Point:
    fraction: float
    budget: int
    low_bytes: int  # LOW bytes the chosen layers page in (<= budget)
    layers: int  # layers full-bit
    agree: float  # top-1 agreement with FP32, fraction of views
    kl: float  # mean KL(FP32 || model), nats


@dataclass(frozen=True)
class Curve:
    order: str
    points: tuple[Point, ...]


@dataclass
class CurveSet:
    model: str
    n: int
    h: int
    views: int
    low_total: int
    part_end: int
    curves: list[Curve] = field(default_factory=list)
    seeds: int = 0
    fractions: tuple[float, ...] = FRACTIONS


class _Mixer:
    """A float32 module whose layers can each hold the file's part-bit or full-bit weight."""

    def __init__(self, module: torch.nn.Module, path: pathlib.Path) -> None:
        self.module = module.eval()
        self.part: dict[str, torch.Tensor] = {}
        self.full: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, int] = {}
        sd = module.state_dict()
        with nqformat.open(path) as f:
            self.metadata = f.metadata
            self.part_end = f.part_end
            for info in f.tensors():
                if info.kind.name != "NESTED":
                    continue
                self.part[info.name] = torch.from_numpy(np.array(f.read(info.name, "part")))
                self.full[info.name] = torch.from_numpy(np.array(f.read(info.name, "full")))
                self.sizes[info.name] = int(info.low.length)
        self._targets = {name: sd[name] for name in self.part}

    @torch.no_grad()
    def set(self, full: set[str]) -> None:
        for name, target in self._targets.items():
            target.copy_((self.full if name in full else self.part)[name].reshape(target.shape))


def file_gains(mixer: _Mixer, fp32: torch.nn.Module, score: Score) -> dict[str, float]:
    """Gains of every nested tensor under ``score``, computed from the file's dequantized
    weights (full-bit and part-bit) and the FP32 module's graph (the candidate study)."""
    from nqformat.torch.sensitivity import scorer

    layers = [name.rpartition(".")[0] for name in mixer.part]
    sc = scorer(fp32, layers, score)
    out = {}
    for name in mixer.part:
        full, part = (t.double().numpy() for t in (mixer.full[name], mixer.part[name]))
        rows = full.shape[0]
        out[name] = sc.gain(name.rpartition(".")[0], full.reshape(rows, -1), part.reshape(rows, -1))
    return out


@torch.inference_mode()
def synthetic_gains(
    mixer: _Mixer,
    size: int,
    images: int = 8,
    seed: int = 0,
    start: str = "full",
    inputs: str = "white",
) -> dict[str, float]:
    """Candidate study only: each layer's gain measured at the model's output on synthetic
    inputs (``nqformat.torch.sensitivity.probe_batch``: no photo) from the file's dequantized
    weights. ``start="full"``: KL(full || full with that one layer part-bit), the probe's
    measurement; ``"part"``: KL(full || part) - KL(full || part with that one layer
    full-bit)."""
    from nqformat.torch.sensitivity import probe_batch

    x = probe_batch((3, size, size), images, seed, inputs)
    every = set(mixer.part)
    mixer.set(every)
    ref = mixer.module(x)
    out = {}
    if start == "part":
        mixer.set(set())
        base = float(per_view_kl(ref, mixer.module(x)).mean())
    for name in mixer.part:
        mixer.set(every - {name} if start == "full" else {name})
        kl = float(per_view_kl(ref, mixer.module(x)).mean())
        out[name] = kl if start == "full" else max(base - kl, 0.0)
    return out


def read_pool_file(path: pathlib.Path) -> list[pathlib.Path]:
    """The photos a pool file lists: one path a line (blank lines and ``#`` comments skipped),
    byte-identical files once. A missing photo stops the run: a curve on a smaller pool than
    asked for would be read as the larger one."""
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    paths = [pathlib.Path(s) for s in (ln.strip() for ln in lines) if s and not s.startswith("#")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} listed photos are missing, e.g. {missing[:3]}")
    if not paths:
        raise SystemExit(f"{path}: lists no photos")
    return distinct(paths)


def _curve(
    mixer: _Mixer,
    order: Sequence[str],
    score_fn: Callable[[set[str]], tuple[float, float]],
    cache: dict[frozenset[str], tuple[float, float]],
    fractions: Sequence[float] = FRACTIONS,
) -> list[Point]:
    total = sum(mixer.sizes.values())
    points = []
    for frac in fractions:
        budget = int(frac * total)
        choice = choose_within(order, mixer.sizes, budget)
        key = frozenset(choice.chosen)
        if key not in cache:
            cache[key] = score_fn(set(key))
        agree, kl = cache[key]
        points.append(Point(frac, budget, choice.bytes, len(key), agree, kl))
    return points


def _median_curve(curves: Sequence[Sequence[Point]]) -> list[Point]:
    out = []
    for pts in zip(*curves, strict=True):
        first = pts[0]
        out.append(
            Point(
                first.fraction,
                first.budget,
                int(np.median([p.low_bytes for p in pts])),
                int(np.median([p.layers for p in pts])),
                float(np.median([p.agree for p in pts])),
                float(np.median([p.kl for p in pts])),
            )
        )
    return out


def measure_model(
    model_name: str,
    *,
    n: int = 8,
    h: int = 4,
    seeds: int = 5,
    candidates: bool = False,
    only: Sequence[str] = (),
    sensitivity: bool | str = "probe",
    extended: bool = True,
    pool: Sequence[pathlib.Path] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    workdir: pathlib.Path | None = None,
    log: Callable[[str], None] = print,
) -> CurveSet:
    """Convert ``model_name`` (nqformat.zoo, real weights) to INT(n|h) and measure its curves
    (``only``: just the orders whose labels start with one of these; ``sensitivity``: the
    converter's option, the score whose stored order is the ``sensitivity`` curve; ``pool``:
    these photos instead of the project's pool, see :func:`read_pool_file`; ``fractions``:
    just these budget points, to spend a long run's time where it decides something)."""
    import nqformat.torch as nqt
    from nqformat import zoo

    fp32, model_meta = zoo.build(zoo.resolve(model_name))
    fp32.eval()
    cfg = data_config(fp32)
    photos = list(pool) if pool is not None else pool_images(extended=extended)
    x = centre_views(photos, cfg)
    ref = logits_of(fp32, x)
    log(f"{model_name}: {len(photos)} photos, 1 view each, {cfg.describe()}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = pathlib.Path(tmp) / f"{model_name}.nq"
        nqt.convert_model(
            fp32, path, n=n, h=h, metadata={"model": model_meta}, sensitivity=sensitivity
        )
        work, _ = zoo.build(zoo.resolve(model_name))
        mixer = _Mixer(work, path)
    total = sum(mixer.sizes.values())
    cache: dict[frozenset[str], tuple[float, float]] = {}

    def score_fn(full: set[str]) -> tuple[float, float]:
        mixer.set(full)
        out = logits_of(mixer.module, x)
        agree = float((ref.argmax(-1) == out.argmax(-1)).double().mean())
        return agree, float(per_view_kl(ref, out).mean())

    fractions = tuple(fractions)
    result = CurveSet(model_name, n, h, 1, total, mixer.part_end, seeds=seeds, fractions=fractions)
    stored = layer_gains(mixer.metadata)
    if stored is None:
        raise SystemExit(f"{model_name}: the converted file has no META sensitivity")
    names = list(mixer.sizes)
    orders: dict[str, list[str]] = {
        "sensitivity": gain_order(stored, mixer.sizes),
        "file": names,
    }
    if candidates:
        for score in Score:
            gains = file_gains(mixer, fp32, score)
            orders[f"score={score.value}"] = gain_order(gains, mixer.sizes)
        for inputs, start in (("white", "full"), ("white", "part"), ("pink", "full")):
            label = f"{inputs}-noise KL from {start}"
            if not only or any(label.startswith(o) for o in only):
                gains = synthetic_gains(
                    mixer, cfg.input_size, images=16, start=start, inputs=inputs
                )
                orders[label] = gain_order(gains, mixer.sizes)
    if only:
        orders = {k: v for k, v in orders.items() if any(k.startswith(o) for o in only)}
    for label, order in orders.items():
        result.curves.append(Curve(label, tuple(_curve(mixer, order, score_fn, cache, fractions))))
        log(_line(result.curves[-1]))
    rng = np.random.default_rng(0)
    randoms = []
    for seed in range(seeds):
        perm = [names[i] for i in rng.permutation(len(names))]
        pts = _curve(mixer, perm, score_fn, cache, fractions)
        randoms.append(pts)
        log(_line(Curve(f"random seed {seed}", tuple(pts))))
    if randoms:
        result.curves.append(Curve(f"random (median of {seeds})", tuple(_median_curve(randoms))))
        log(_line(result.curves[-1]))
    return result


def _line(c: Curve) -> str:
    cells = "  ".join(f"{100 * p.agree:5.1f}%/{p.kl:.4f}" for p in c.points)
    return f"  {c.order:<24} {cells}"


def render_markdown(sets: Sequence[CurveSet], command: str, env: Mapping[str, str]) -> str:
    """The curves as markdown tables (one per model): agreement and KL per budget point."""
    out = [f"Command: `{command}`", ""]
    out += [f"- {k}: {v}" for k, v in env.items()]
    for s in sets:
        out += [
            "",
            f"### {s.model}, INT({s.n}|{s.h}): LOW = {s.low_total:,} B "
            f"(part-bit prefix {s.part_end:,} B), {s.views} view per photo",
            "",
            "| order | " + " | ".join(f"{round(100 * f)} %" for f in s.fractions) + " |",
            "|---|" + "---|" * len(s.fractions),
        ]
        for c in s.curves:
            cells = [f"{100 * p.agree:.1f}% / {p.kl:.4f}" for p in c.points]
            out.append(f"| {c.order} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Cells: top-1 agreement with FP32 / mean KL(FP32‖model) in nats.")
    return "\n".join(out) + "\n"
