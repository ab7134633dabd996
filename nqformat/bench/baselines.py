"""The baselines: the ``.nq`` file's own numbers as separate INT-n and INT-h safetensors models.

Baselines differ from the ``.nq`` side only in the container. Their codes and per-channel
parameters are read back from the ``.nq`` file itself, so the baseline module must come out
bit-identical to the one the runtime builds (``states_equal``). The INT-n model stores the full
codes (``int8`` as they are for n = 8, otherwise packed with ``nqformat.bitpack``) and the INT-h
model the high codes packed with ``nqformat.bitpack``, each with float32 per-channel scale and
offset and the raw tensors. Loading one is ``safetensors.numpy.load_file``, the same unpack, the
same float32 ``codes * scale + offset`` (spec §7.2) and the same module assignment as the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_baseline", "save_fp32", "states_equal", "write_baselines"]


def _codes_key(name: str) -> str:
    return f"{name}.__codes"


def _scale_key(name: str) -> str:
    return f"{name}.__scale"


def _offset_key(name: str) -> str:
    return f"{name}.__offset"


def write_baselines(nq_path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write the INT-n and INT-h safetensors models holding exactly the ``.nq`` file's numbers."""
    import numpy as np
    from safetensors.numpy import save_file

    import nqformat
    from nqformat import bitpack
    from nqformat.container.spec import Kind

    full: dict[str, np.ndarray] = {}
    part: dict[str, np.ndarray] = {}
    with nqformat.open(nq_path) as f:
        n, h = f.n, f.h
        for info in f.tensors():
            name = info.name
            if info.kind == Kind.NESTED:
                p = f.params(name)
                q = f.codes(name, part="full")
                hi = f.codes(name, part="high")
                full[_codes_key(name)] = _store_codes(q, n, bitpack)
                full[_scale_key(name)] = np.ascontiguousarray(p.scale_full, dtype=np.float32)
                full[_offset_key(name)] = np.ascontiguousarray(p.offset_full, dtype=np.float32)
                part[_codes_key(name)] = _store_codes(hi, h, bitpack)
                part[_scale_key(name)] = np.ascontiguousarray(p.scale_part, dtype=np.float32)
                part[_offset_key(name)] = np.ascontiguousarray(p.offset_part, dtype=np.float32)
            else:
                raw = np.ascontiguousarray(f.read(name))
                full[name] = raw
                part[name] = raw
    stem = nq_path.stem
    full_path = out_dir / f"{stem}.int{n}.safetensors"
    part_path = out_dir / f"{stem}.int{h}.safetensors"
    save_file(full, str(full_path), metadata={"bits": str(n), "source": nq_path.name})
    save_file(part, str(part_path), metadata={"bits": str(h), "source": nq_path.name})
    return full_path, part_path


def _store_codes(codes: Any, width: int, bitpack: Any) -> Any:
    import numpy as np

    flat = np.ascontiguousarray(codes).reshape(-1)
    if width == 8:  # an INT8 model stores its codes as int8: packing at 8 bits is the identity
        return flat.astype(np.int8)
    return bitpack.pack(flat, width)


def load_baseline(module: Any, path: Path, width: int) -> Any:
    """Load a baseline safetensors model into ``module`` with the runtime's own code: the
    reader's §7.2 dequantization and the runtime's copy into the module's state tensors."""
    import torch
    from safetensors.numpy import load_file

    from nqformat import bitpack
    from nqformat.container.dequant import dequantize
    from nqformat.torch._tensors import to_torch, writable_view

    arrays = load_file(str(path))
    own = module.state_dict()  # aliases of the module's tensors, as the runtime uses them
    with torch.no_grad():
        for name, target in own.items():
            key = _codes_key(name)
            if key in arrays:
                stored = arrays[key]
                shape = tuple(target.shape)
                codes = stored if width == 8 else bitpack.unpack(stored, width, target.numel())
                # Dequantize straight into the module's memory, as the .nq runtime does, so the
                # two sides differ only in the container.
                view = writable_view(target, "F32")
                value = dequantize(
                    codes, arrays[_scale_key(name)], arrays[_offset_key(name)], shape, out=view
                )
                if view is None:
                    target.copy_(to_torch(value, "F32").reshape(target.shape))
            else:
                target.copy_(to_torch(arrays[name], "").reshape(target.shape))
    return module


def states_equal(a: Any, b: Any) -> bool:
    """Every state_dict entry of two modules bit-identical."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def save_fp32(module: Any, path: Path) -> None:
    """The FP32 module as a safetensors file (the FP32 peak-RSS baseline loads it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
