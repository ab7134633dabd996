"""Hugging Face model directory -> ``.nq`` file, streamed tensor by tensor.

Nothing holds the model: the skeleton (meta device) says what each tensor is, and each tensor is
read from its shard, quantized and handed to :class:`~nqformat.NQWriter` (which spools it to disk)
before it is dropped. ``workers`` tensors are in flight at once; the file's bytes do not depend
on it (results are written in state-dict order).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

import nqformat
from nqformat.errors import NQError
from nqformat.hf import META_SOURCE, assets, lnfit
from nqformat.hf.checkpoint import CheckpointError, open_checkpoint
from nqformat.hf.model import Entry, Plan, Role, load_config, make_plan, model_class, skeleton
from nqformat.quant import nest_quantize
from nqformat.torch._tensors import FLOAT_DTYPES, nq_dtype, to_numpy
from nqformat.torch.convert import (
    _MIB,
    AUTO_H,
    ConvertReport,
    ProgressCallback,
    _check_options,
    _quant_meta,
    auto_h,
    resolve_params,
)

__all__ = ["convert_directory", "resolve_h"]


def _model_meta(
    directory: pathlib.Path, raw_config: dict[str, Any], class_name: str, plan: Plan, ckpt: Any
) -> dict[str, Any]:
    import transformers

    dtypes = sorted(set(ckpt.dtypes().values()))
    return {
        "source": META_SOURCE,
        "name": str(raw_config.get("_name_or_path") or directory.name),
        "class": class_name,
        "config": raw_config,
        "tied": plan.tied,
        "assets": assets.collect(directory),
        "weights": (
            f"Hugging Face checkpoint {directory.name}/ ({ckpt.format.value}, "
            f"{len(ckpt.shards)} shard(s), {'/'.join(dtypes)})"
        ),
        "random_init": False,
        "ignored_checkpoint_tensors": list(plan.ignored),
        "fp32_bytes": plan.fp32_bytes,
        "versions": {"transformers": transformers.__version__},
    }


def _quantize(
    entry: Entry,
    ckpt: Any,
    n: int,
    h: int,
    rounding: str,
    part_params: str,
    norm: lnfit.NormInput | None,
) -> tuple[Entry, str, Any]:
    """Read one tensor and make what the writer needs for it (runs on a worker thread)."""
    tensor = ckpt.read(entry.source)
    if tuple(tensor.shape) != entry.shape:
        raise CheckpointError(
            f"{entry.source}: shape {tuple(tensor.shape)} in the checkpoint, the model wants "
            f"{entry.shape}"
        )
    dtype = nq_dtype(tensor, entry.key)
    if entry.role is Role.RAW:
        return entry, dtype, to_numpy(tensor)
    if tensor.dtype not in FLOAT_DTYPES:
        raise NQError(f"{entry.source}: cannot quantize a {tensor.dtype} weight")
    weight = to_numpy(tensor.float())
    del tensor
    result = nest_quantize(weight, n, h, rounding=rounding, part_params=part_params)
    scale_part, offset_part = result.scale_part, result.offset_part
    if norm is not None:
        gamma = ckpt.read(f"{norm.norm}.weight").float().numpy()
        beta = ckpt.read(f"{norm.norm}.bias").float().numpy() if norm.has_bias else None
        scale_part, offset_part = lnfit.fit_part_params(
            weight, result.w_high, result.scale, result.zero_point, result.l, gamma, beta
        )
    return entry, dtype, (result, scale_part, offset_part)


def _write(writer: Any, entry: Entry, dtype: str, payload: Any) -> None:
    if entry.role is Role.RAW:
        writer.add_raw(entry.key, payload, dtype=dtype if dtype == "BF16" else None)
        return
    result, scale_part, offset_part = payload
    writer.add_nested(
        entry.key,
        w_high=result.w_high,
        w_low=result.w_low,
        scale_full=result.scale_full,
        offset_full=result.offset_full,
        scale_part=np.asarray(scale_part, dtype=np.float32),
        offset_part=np.asarray(offset_part, dtype=np.float32),
        dtype=dtype,
        w_int=result.w_int,
    )


def _norm_sources(
    plan: Plan, config: Any, ckpt: Any, enabled: bool
) -> dict[str, lnfit.NormInput | None]:
    """Entry key -> the norm feeding it (checkpoint names), for the LayerNorm-informed fit."""
    if not enabled:
        return {}
    linear = [e.key.removesuffix(".weight") for e in plan.entries if e.role is Role.LINEAR]
    found = lnfit.norm_inputs(getattr(config, "model_type", None), linear, ckpt.names())
    if not found:
        # the checkpoint may spell the base model prefix differently from the model
        by_source = {e.key.removesuffix(".weight"): e.source for e in plan.entries}
        linear_src = [by_source[k].removesuffix(".weight") for k in linear]
        found_src = lnfit.norm_inputs(getattr(config, "model_type", None), linear_src, ckpt.names())
        found = {k: found_src[s] for k, s in zip(linear, linear_src, strict=True) if s in found_src}
    return {f"{k}.weight": v for k, v in found.items()}


def resolve_h(directory: str | os.PathLike[str], n: int, h: int | str) -> int:
    """``h``, or for ``"auto"`` the paper's rule on the model's FP32 size (from the skeleton)."""
    if h != AUTO_H:
        return int(h)
    _, config = load_config(pathlib.Path(directory))
    model = skeleton(model_class(config), config)
    fp32 = sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())
    return auto_h(n, fp32)


def convert_directory(
    directory: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    n: int,
    h: int | str,
    rounding: str = "squant",
    part_params: str = "refit",
    keep_float: Iterable[str] = (),
    keep_embeddings_float: bool = False,
    ln_fit: bool = False,
    compress: bool = False,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> ConvertReport:
    """Write the model in a local Hugging Face directory as a NestQuant file (atomically).

    Every nn.Linear weight (minus ``keep_float`` fnmatch patterns on module names) and every
    vocabulary Embedding table (unless ``keep_embeddings_float``) is stored NESTED, one channel
    per row; tied weights are stored once under the first name; everything else (norms, biases,
    position and token-type tables) RAW in its checkpoint dtype. ``ln_fit`` fits the part-bit
    parameters of Linears fed by a LayerNorm/RMSNorm to the input statistics the norm predicts
    (:mod:`nqformat.hf.lnfit`); ``part_params`` applies to the others. META ``model`` records
    the config, model class, tied names and the tokenizer files (:mod:`nqformat.hf.assets`).
    """
    start = time.perf_counter()
    if workers < 1:
        raise NQError(f"workers must be >= 1, got {workers}")
    src = pathlib.Path(directory)
    ckpt = open_checkpoint(src)
    raw_config, config = load_config(src)
    class_name = model_class(config)
    model = skeleton(class_name, config)
    plan = make_plan(
        model, config, ckpt, keep_float=keep_float, keep_embeddings_float=keep_embeddings_float
    )
    norms = _norm_sources(plan, config, ckpt, ln_fit)
    del model
    h_rule = "explicit"
    if h == AUTO_H:
        h = auto_h(n, plan.fp32_bytes)
        h_rule = f"auto: paper Eq. 12 on D_fp32 = {plan.fp32_bytes / _MIB:.1f} MiB"
    if not isinstance(h, int):
        raise NQError(f"h must be an integer or {AUTO_H!r}, got {h!r}")
    # the CNN method names of META quant.params: the graph-aware BatchNorm fit does not apply
    # here; the LayerNorm fit (ln_fit) is recorded on its own below
    params, part_params = resolve_params(None, part_params)
    _check_options(n, h, rounding, part_params, params)
    quant = _quant_meta(n, h, rounding, part_params, params, h_rule, tuple(keep_float))
    quant["layers"] = "every nn.Linear weight minus keep_float" + (
        "" if keep_embeddings_float else ", and every vocabulary nn.Embedding table"
    )
    quant["embeddings"] = "float" if keep_embeddings_float else "nested"
    quant["ln_fit"] = sorted(norms) if ln_fit else False
    meta = {"model": _model_meta(src, raw_config, class_name, plan, ckpt), "quant": quant}

    total = len(plan.entries)
    counts = {"nested": 0, "raw": 0, "nested_el": 0, "raw_el": 0}
    with (
        nqformat.NQWriter(path, n=n, h=h, metadata=meta, compress=compress) as writer,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nq-hf") as pool,
    ):
        pending: deque[Future[Any]] = deque()
        todo = iter(plan.entries)
        done = 0

        def submit() -> None:
            entry = next(todo, None)
            if entry is not None:
                args = (entry, ckpt, n, h, rounding, part_params, norms.get(entry.key))
                pending.append(pool.submit(_quantize, *args))

        for _ in range(workers):
            submit()
        while pending:
            entry, dtype, payload = pending.popleft().result()
            submit()  # keep `workers` tensors in flight, no more: memory stays bounded
            _write(writer, entry, dtype, payload)
            del payload
            size = int(np.prod(entry.shape, dtype=np.int64))
            kind = "raw" if entry.role is Role.RAW else "nested"
            counts[kind] += 1
            counts[f"{kind}_el"] += size
            done += 1
            if progress is not None:
                progress(entry.key, done, total)
        out = writer.close()
    with nqformat.open(out, verify=False) as f:
        part_end, full_end, size = f.part_end, f.full_end, f.file_size
    return ConvertReport(
        path=pathlib.Path(out),
        n=n,
        h=h,
        seconds=time.perf_counter() - start,
        file_size=size,
        part_end=part_end,
        full_end=full_end,
        nested_tensors=counts["nested"],
        raw_tensors=counts["raw"],
        nested_elements=counts["nested_el"],
        raw_elements=counts["raw_el"],
        kept_float=plan.kept_float,
        fp32_bytes=plan.fp32_bytes,
    )
