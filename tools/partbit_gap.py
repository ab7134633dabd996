"""Where a part-bit model's error exceeds a separately quantized INT-h model's, layer by layer.

    python tools/partbit_gap.py --model tf_efficientnet_lite0 --n 8 --h 6

Both files are converted with ``params="bn"``; for every layer with BN-predicted inputs it prints
the predicted output error ``Σ d r² + (Σ μ r)²`` (``r`` = dequantized minus FP32 weight, the
objective the ``bn`` fit minimises) over ``Σ d w²`` (the layer's output scale), for the part-bit
model of INT(n|h) and for INT-h, and splits the part-bit error into the elements whose high code
is the top code (clipped in docs/quantizer.md step 3) and the rest. No photos are used: this is
the fit's own objective, the quantity two floats per channel can act on.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

import nqformat
import nqformat.torch as nqt
from nqformat import zoo
from nqformat.container.spec import Kind
from nqformat.torch.convert import predicted_inputs


def _error(r: np.ndarray, var: np.ndarray, mean: np.ndarray) -> float:
    d, mu = np.broadcast_to(var, r.shape), np.broadcast_to(mean, r.shape)
    return float((d * r * r).sum() + ((mu * r).sum(axis=1) ** 2).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--h", type=int, default=6)
    ap.add_argument("--top", type=int, default=10, help="layers to list (largest excess first)")
    args = ap.parse_args(argv)
    fp32, meta = zoo.build(zoo.resolve(args.model))
    fp32.eval()
    state = {k: v.detach().numpy() for k, v in fp32.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        nested_path, inth_path = pathlib.Path(tmp, "nested.nq"), pathlib.Path(tmp, "inth.nq")
        md = {"model": meta}
        nqt.convert_model(fp32, nested_path, n=args.n, h=args.h, params="bn", metadata=md)
        nqt.convert_model(fp32, inth_path, n=args.h, h=args.h - 1, params="bn", metadata=md)
        with nqformat.open(nested_path) as nested, nqformat.open(inth_path) as inth:
            names = [t for t in nested.names() if nested.info(t).kind is not Kind.RAW]
            inputs = predicted_inputs(fp32, [t.removesuffix(".weight") for t in names])
            rows, totals = [], np.zeros(4)
            for name in names:
                if name.removesuffix(".weight") not in inputs:
                    continue
                var, mean = inputs[name.removesuffix(".weight")]
                w = state[name].reshape(state[name].shape[0], -1).astype(np.float64)
                part = nested.read(name, mode="part").reshape(w.shape).astype(np.float64) - w
                alone = inth.read(name, mode="full").reshape(w.shape).astype(np.float64) - w
                top = nested.codes(name, "high").reshape(w.shape) == (1 << (args.h - 1)) - 1
                scale = float((np.broadcast_to(var, w.shape) * w * w).sum())
                errs = np.array(
                    [
                        _error(part, var, mean),
                        _error(alone, var, mean),
                        _error(np.where(top, part, 0.0), var, mean),
                        _error(np.where(top, 0.0, part), var, mean),
                    ]
                ) / max(scale, 1e-30)
                totals += errs
                rows.append((name, *errs, float(top.mean())))
    print(f"{args.model} INT({args.n}|{args.h}) part-bit vs INT{args.h}, both params=bn")
    print(f"{'layer':34s} {'part':>9s} {'INT-h':>9s} {'top code':>9s} {'rest':>9s} top share")
    for r in sorted(rows, key=lambda r: r[2] - r[1])[: args.top]:
        print(f"{r[0]:34s} {r[1]:9.2e} {r[2]:9.2e} {r[3]:9.2e} {r[4]:9.2e} {r[5]:8.3f}")
    print(
        f"sum over {len(rows)} layers: part {totals[0]:.4f}, INT{args.h} {totals[1]:.4f} "
        f"(ratio {totals[0] / totals[1]:.3f}); part-bit split: top-code elements "
        f"{totals[2]:.4f}, the rest {totals[3]:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
