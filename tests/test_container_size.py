"""File size against the information-theoretic ideal (issue 2, item 5)."""

from __future__ import annotations

import pathlib

import numpy as np

import nqformat
from nqformat import NQWriter

# torchvision resnet18: (name, out, in, kh, kw) of every conv and the fc layer.
_RESNET18_LAYERS = [("conv1", 64, 3, 7, 7)]
for _stage, (_cout, _cin) in enumerate([(64, 64), (128, 64), (256, 128), (512, 256)], start=1):
    for _block in range(2):
        _in = _cin if _block == 0 else _cout
        _RESNET18_LAYERS.append((f"layer{_stage}.{_block}.conv1", _cout, _in, 3, 3))
        _RESNET18_LAYERS.append((f"layer{_stage}.{_block}.conv2", _cout, _cout, 3, 3))
        if _block == 0 and _stage > 1:
            _RESNET18_LAYERS.append((f"layer{_stage}.{_block}.downsample.0", _cout, _cin, 1, 1))
_RESNET18_LAYERS.append(("fc", 1000, 512, 0, 0))


def _bn_name(conv: str) -> str:
    if conv == "conv1":
        return "bn1"
    if conv.endswith("downsample.0"):
        return conv[:-1] + "1"
    return conv.replace("conv", "bn")


def test_resnet18_shaped_file_is_within_half_a_percent_of_ideal(tmp_path: pathlib.Path) -> None:
    n, h = 8, 6
    rng = np.random.default_rng(18)
    path = tmp_path / "resnet18.nq"
    ideal_bits = 0
    ideal_bytes = 0
    quantized = 0
    with NQWriter(path, n=n, h=h, metadata={"model": {"arch": "resnet18"}}) as w:
        for name, cout, cin, kh, kw in _RESNET18_LAYERS:
            shape = (cout, cin, kh, kw) if kh else (cout, cin)
            high = rng.integers(-(1 << (h - 1)), 1 << (h - 1), size=shape, dtype=np.int8)
            low = rng.integers(-(1 << (n - h)), 1 << (n - h), size=shape, dtype=np.int8)
            np.clip(high, -31, 31, out=high)  # keeps H*4 + L inside 8 bits
            params = {
                k: rng.random(cout, dtype=np.float32)
                for k in ("scale_full", "offset_full", "scale_part", "offset_part")
            }
            w.add_nested(f"{name}.weight", w_high=high, w_low=low, **params)
            quantized += high.size
            ideal_bits += high.size * (h + (n - h) + 1)
            ideal_bytes += 16 * cout  # the four float32 parameter arrays
            if name == "fc":
                bias = rng.standard_normal(cout).astype(np.float32)
                w.add_raw("fc.bias", bias)
                ideal_bytes += bias.nbytes
                continue
            bn = _bn_name(name)
            for part in ("weight", "bias", "running_mean", "running_var"):
                arr = rng.standard_normal(cout).astype(np.float32)
                w.add_raw(f"{bn}.{part}", arr)
                ideal_bytes += arr.nbytes
            w.add_raw(f"{bn}.num_batches_tracked", np.array(0, np.int64))
            ideal_bytes += 8
    with nqformat.open(path) as f:
        header = f.header_end
    ideal = ideal_bits / 8 + ideal_bytes + header
    actual = path.stat().st_size
    overhead = actual / ideal - 1
    print(
        f"resnet18 (8,6): {quantized} quantized weights, file {actual} B, ideal {ideal:.0f} B, "
        f"overhead {overhead:.4%}"
    )
    assert 11_000_000 < quantized < 12_000_000  # the real resnet18 has 11.68 M conv/fc weights
    assert 0 <= overhead < 0.005
