"""Streaming conversion of a big sharded Hugging Face checkpoint in bounded memory (issue 14).

    python tools/bench_hf_stream.py --dir /tmp/llama-bench --workers 1 2

1. Generates a random-init Llama-style model (default about 1.68 B parameters: hidden 2048,
   24 layers, intermediate 8192, vocab 32000, input embeddings tied to the LM head) as sharded
   bf16 safetensors with its index, **shard by shard** (one shard's tensors in memory at a time,
   never the whole model), from a transformers config (a meta-device skeleton gives names and
   shapes).
2. Runs ``nqtool convert DIR --n 8 --h 4 --workers W`` once per W in a fresh process under
   ``/usr/bin/time -v`` and reports peak RSS against the bound ``2 x largest shard + 1 GiB`` and
   weights per second (ratio W vs W=1 in the same run).
3. Loads the result with ``nqformat.torch.load(file, "part")`` in a fresh process and reports its
   peak RSS against the FP32 size of the model it must hold (the float runtime: it materialises
   float32 weights; a codes-resident runtime would be bounded by the file instead).
4. Deletes the generated directory and files unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

GIB = 1 << 30
SHARD_BYTES = 1 << 30  # target shard size on disk (bf16)
INIT_STD = 0.02


def llama_config(layers: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )


def generate(directory: pathlib.Path, layers: int, seed: int = 0) -> dict[str, Any]:
    """Write config.json, model-0000x-of-0000y.safetensors and the index, shard by shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    config = llama_config(layers)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    tied = {n for n, _ in skeleton.named_parameters(remove_duplicate=False)} - {
        n for n, _ in skeleton.named_parameters()
    }
    specs = [(k, tuple(t.shape)) for k, t in skeleton.state_dict().items() if k not in tied]
    del skeleton
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, shape in specs:
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((key, shape))
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for key, shape in group:
            if key.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen) * INIT_STD).to(torch.bfloat16)
            shard[key] = t
            weight_map[key] = name
            total += t.numel()
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        del shard
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": weight_map})
    )
    config.save_pretrained(str(directory))
    shards = sorted(directory.glob("model-*.safetensors"))
    return {
        "parameters": total,
        "shards": len(shards),
        "largest_shard_bytes": max(p.stat().st_size for p in shards),
        "checkpoint_bytes": sum(p.stat().st_size for p in shards),
    }


def describe(directory: pathlib.Path) -> dict[str, Any]:
    """Sizes of a generated checkpoint, from its files and safetensors headers."""
    from nqformat.hf.checkpoint import open_checkpoint

    ckpt = open_checkpoint(directory)
    total = 0
    for shard in ckpt.shards:
        with open(shard, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                total += int(np.prod(entry["shape"], dtype=np.int64))
    return {
        "parameters": total,
        "shards": len(ckpt.shards),
        "largest_shard_bytes": ckpt.largest_shard_bytes,
        "checkpoint_bytes": ckpt.total_bytes,
    }


def generate_in_child(directory: pathlib.Path, layers: int) -> dict[str, Any]:
    """:func:`generate` in a child process, so this one stays small while it measures."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_hf_stream as b, pathlib; "
        "b.generate(pathlib.Path(sys.argv[2]), int(sys.argv[3]))"
    )
    here = str(pathlib.Path(__file__).resolve().parent)
    subprocess.run([sys.executable, "-c", code, here, str(directory), str(layers)], check=True)
    return describe(directory)


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Run under /usr/bin/time -v: (wall seconds, peak RSS bytes, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if m is None:
        raise RuntimeError("no peak RSS in /usr/bin/time -v output")
    return wall, int(m.group(1)) * 1024, proc.stdout


LOAD_SNIPPET = """
import sys, time, nqformat.torch as nqt
t = time.perf_counter()
m = nqt.load(sys.argv[1], "part", resident="float")  # as docs/transformers.md measured it
print("load_seconds", time.perf_counter() - t)
print("params", sum(p.numel() for p in m.parameters()))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/tmp/nq-llama-bench"))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-load", action="store_true", help="skip the load measurement")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse DIR/model from an earlier --keep run"
    )
    args = parser.parse_args(argv)
    src = args.dir / "model"
    print(f"load before: {os.getloadavg()}")
    t = time.perf_counter()
    if args.reuse and (src / "model.safetensors.index.json").is_file():
        info = describe(src)
    else:
        info = generate_in_child(src, args.layers)
    print(
        f"checkpoint {info['parameters'] / 1e9:.3f} B parameters in {info['shards']} bf16 shards "
        f"({info['checkpoint_bytes'] / GIB:.2f} GiB, largest "
        f"{info['largest_shard_bytes'] / GIB:.2f} GiB), ready in {time.perf_counter() - t:.0f} s"
    )
    bound = 2 * info["largest_shard_bytes"] + GIB
    nqtool = str(pathlib.Path(sys.executable).with_name("nqtool"))
    base_rate = None
    out = args.dir / "model.nq"
    try:
        for w in args.workers:
            cmd = [nqtool, "convert", str(src), "--n", "8", "--h", "4", "--workers", str(w)]
            cmd += ["-o", str(out), "--force", "-q"]
            load = os.getloadavg()
            wall, peak, _ = timed(cmd)
            rate = info["parameters"] / wall
            base_rate = base_rate or rate
            print(
                f"convert --workers {w}: {wall:.0f} s, {rate / 1e6:.2f} M weights/s "
                f"(x{rate / base_rate:.2f} vs workers {args.workers[0]}), peak RSS "
                f"{peak / GIB:.2f} GiB, bound {bound / GIB:.2f} GiB -> "
                f"{'WITHIN' if peak < bound else 'OVER'} ({peak / bound:.2f} of it); "
                f"load avg at start {load[0]:.1f}"
            )
        print(f"file {out.stat().st_size / GIB:.2f} GiB")
        if not args.no_load:
            wall, peak, text = timed([sys.executable, "-c", LOAD_SNIPPET, str(out)])
            fp32 = 4 * info["parameters"]
            print(
                f"load part-bit (float runtime): {wall:.0f} s, peak RSS {peak / GIB:.2f} GiB = "
                f"{peak / fp32:.2f} x the FP32 model ({fp32 / GIB:.2f} GiB); {text.split()}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
