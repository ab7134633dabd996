"""docs/benchmarks.md: the run beside the NestQuant paper's Tables 9 to 11, and the writing of
the JSON object and the report (the report's hand-written notes section is kept)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nqformat._atomic import AtomicFile
from nqformat.bench.cases import MIB, REQUIRED_KEYS, TARGETS
from nqformat.bench.text import fmt, rss_cell, verdict

__all__ = [
    "DEFAULT_FULL_COMMAND",
    "NOTES_BEGIN",
    "NOTES_END",
    "PAPER_SIZES",
    "PAPER_SWITCH",
    "read_notes",
    "render_markdown",
    "write_outputs",
]


# The NestQuant paper's numbers (its Tables 9, 10 and 11). Model names as in this project.
PAPER_NAMES = {
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "mobilenetv2_w1": "MobileNet-V2",
}
#: Tables 9 and 10: (NestQuant MB, diverse MB, reduction vs diverse %, FP32 MB, reduction vs FP32 %)
PAPER_SIZES: dict[tuple[str, int, int], tuple[float, float, float, float, float]] = {
    ("resnet18", 8, 4): (13.3, 17.1, 22.4, 44.7, 70.3),
    ("resnet18", 8, 5): (13.3, 19.0, 30.0, 44.7, 70.3),
    ("resnet18", 8, 6): (13.4, 20.5, 34.3, 44.7, 69.9),
    ("resnet18", 8, 7): (13.0, 21.5, 39.6, 44.7, 71.0),
    ("resnet18", 6, 4): (10.1, 14.9, 32.2, 44.7, 77.4),
    ("resnet18", 6, 5): (10.5, 16.7, 37.4, 44.7, 76.5),
    ("resnet50", 8, 4): (29.5, 38.2, 22.7, 97.8, 69.8),
    ("resnet50", 8, 5): (29.5, 42.2, 30.1, 97.8, 69.8),
    ("resnet50", 8, 6): (29.8, 45.5, 34.4, 97.8, 69.5),
    ("resnet50", 8, 7): (28.8, 47.6, 39.5, 97.8, 70.5),
    ("resnet50", 6, 4): (22.5, 33.3, 32.3, 97.8, 76.9),
    ("resnet50", 6, 5): (23.4, 37.3, 37.3, 97.8, 76.1),
    ("resnet101", 8, 4): (51.6, 66.9, 22.8, 170.5, 69.7),
    ("resnet101", 8, 5): (51.6, 73.9, 30.2, 170.5, 69.7),
    ("resnet101", 8, 6): (52.2, 79.6, 34.4, 170.5, 69.4),
    ("resnet101", 8, 7): (50.5, 83.4, 39.5, 170.5, 70.4),
    ("resnet101", 6, 4): (39.5, 58.4, 32.3, 170.5, 76.8),
    ("resnet101", 6, 5): (41.0, 65.5, 37.3, 170.5, 75.9),
    ("mobilenetv2_w1", 8, 5): (4.7, 6.7, 30.6, 13.6, 65.5),
    ("mobilenetv2_w1", 8, 6): (4.7, 7.2, 34.3, 13.6, 65.2),
    ("mobilenetv2_w1", 8, 7): (4.6, 7.5, 38.7, 13.6, 66.2),
}
#: Table 11: (part-bit memory MB, NestQuant page-in MB, diverse page-in MB, diverse page-out MB,
#: reduced overhead %, full-bit memory MB, FP32 memory MB). Upgrade and downgrade are symmetric.
PAPER_SWITCH: dict[tuple[str, int, int], tuple[float, ...]] = {
    ("resnet18", 8, 4): (43.1, 7.4, 11.3, 5.8, 56.9, 86.2, 147.2),
    ("resnet18", 8, 5): (53.9, 5.9, 11.3, 7.6, 68.9, 86.2, 147.2),
    ("resnet18", 8, 6): (64.7, 4.5, 11.3, 9.1, 78.1, 86.2, 147.2),
    ("resnet18", 8, 7): (75.5, 2.9, 11.3, 10.1, 86.6, 86.2, 147.2),
    ("resnet18", 6, 4): (43.1, 5.1, 9.1, 5.8, 66.1, 64.7, 147.2),
    ("resnet18", 6, 5): (53.9, 3.5, 9.1, 7.6, 79.1, 64.7, 147.2),
    ("resnet50", 8, 4): (56.2, 16.4, 25.2, 13.0, 57.1, 112.3, 283.3),
    ("resnet50", 8, 5): (70.2, 13.1, 25.2, 17.1, 69.0, 112.3, 283.3),
    ("resnet50", 8, 6): (84.2, 9.9, 25.2, 20.3, 78.1, 112.3, 283.3),
    ("resnet50", 8, 7): (98.3, 6.4, 25.2, 22.5, 86.6, 112.3, 283.3),
    ("resnet50", 6, 4): (56.2, 11.3, 20.3, 13.0, 66.2, 84.2, 283.3),
    ("resnet50", 6, 5): (70.2, 7.8, 20.3, 17.1, 79.1, 84.2, 283.3),
    ("resnet101", 8, 4): (72.0, 28.7, 44.0, 22.8, 57.1, 144.1, 402.9),
    ("resnet101", 8, 5): (90.0, 23.0, 44.0, 29.9, 69.0, 144.1, 402.9),
    ("resnet101", 8, 6): (108.1, 17.4, 44.0, 35.6, 78.1, 144.1, 402.9),
    ("resnet101", 8, 7): (126.1, 11.2, 44.0, 39.3, 86.6, 144.1, 402.9),
    ("resnet101", 6, 4): (72.0, 19.8, 35.6, 22.8, 66.2, 108.1, 402.9),
    ("resnet101", 6, 5): (90.0, 13.7, 35.6, 29.9, 79.1, 108.1, 402.9),
    ("mobilenetv2_w1", 8, 5): (42.9, 2.1, 3.9, 2.8, 69.1, 68.6, 93.1),
    ("mobilenetv2_w1", 8, 6): (51.5, 1.6, 3.9, 3.3, 78.1, 68.6, 93.1),
    ("mobilenetv2_w1", 8, 7): (60.0, 1.0, 3.9, 3.6, 86.4, 68.6, 93.1),
}

DEFAULT_FULL_COMMAND = "nqtool bench --json docs/bench-results.json --markdown docs/benchmarks.md"
NOTES_BEGIN = "<!-- notes:begin (kept when the full run rewrites this file) -->"
NOTES_END = "<!-- notes:end -->"


def _mb(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _paper(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if value is None else f"{format(value, spec)}{suffix}"


def render_markdown(result: dict[str, Any], notes: str = "") -> str:
    """docs/benchmarks.md: headline and targets, Tables 9 and 11 beside the paper, timings."""
    m = result["machine"]
    method = result["method"]
    cache = method["page_cache"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks: sizes, load and switch times, memory")
    w("")
    w("Written by the full run of `nqtool bench`; do not edit by hand except between the notes")
    w("markers at the end. Reproduce with:")
    w("")
    w("```")
    w(
        result["command"]
        or "nqtool bench --json docs/bench-results.json --markdown docs/benchmarks.md"
    )
    w("```")
    w("")
    w(
        f"Run {result['date']}, {result['wall_seconds'] / 60:.1f} min, on {m['cpu']} "
        f"({m['cores_usable']} usable cores, {m['mem_total_gib']} GiB), Python {m['python']}, "
        f"torch {m['torch']}, numpy {m['numpy']}, safetensors "
        f"{m['safetensors']}. Load average {', '.join(f'{x:.2f}' for x in m['loadavg_start'])} "
        f"at the start and {', '.join(f'{x:.2f}' for x in m['loadavg_end'])} at the end (other "
        f"work shared the machine). Raw numbers: `docs/bench-results.json`."
    )
    w("")
    w("## Method")
    w("")
    w(
        f"- Every time is a ratio of medians of {method['timed_reps']} repetitions after "
        f"{method['warmup_runs']} warm-up run(s), the `.nq` side and its baseline timed in the "
        f"same loop, interleaved, with {method['torch_threads']} torch thread(s) (default here: "
        f"{m['torch_threads_default']}; with it, other work on this shared machine made every "
        "tensor copy about 10x slower on both sides)."
    )
    w(
        f"- Page cache: timings are taken **cold** ({cache['eviction']}) and **warm**; headline "
        f"ratios are {result['timing_cache_state']}. {cache['note']}."
    )
    w(f"- Baselines: {method['baselines']}.")
    w(
        "- Every case checks that the baseline module is bit-identical to the one the `.nq` "
        "runtime builds (column *same*), so only the container differs."
    )
    w(f"- Modules: {method['modules']}.")
    w(
        "- Peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` in a fresh process right after "
        "the module is ready; it includes the interpreter and torch "
        f"(about {result['rss_after_import_mb']:.0f} MB after the imports alone)."
    )
    w("- Weights: " + "; ".join(f"`{k}`: {v}" for k, v in method["weights"].items()) + ".")
    w(
        "- Sizes come from `nqformat.report` (the figures `nqtool inspect` prints). *Ideal*: every "
        "nested weight costs exactly h + (l+1) bits, plus raw tensors, per-channel parameters and "
        "the header. *Diverse*: a separate densely packed INT-n and INT-h model, each with its own "
        "scale/offset and raw tensors, no header (a lower bound)."
    )
    w("")
    w("## Headline figures and targets")
    w("")
    w("| figure | value | median over cases | target | status | where |")
    w("|---|---:|---:|---:|---|---|")
    targets = result["targets"]
    shown_keys = REQUIRED_KEYS[:12] + tuple(t.key for t in TARGETS if t.key not in REQUIRED_KEYS)
    for key in shown_keys:
        if key not in result:
            continue  # a saved result from before the key existed
        value = result[key]
        t = targets.get(key)
        spec = ".3g" if key == "unpack_elements_per_s" else ".3f"
        shown = value if isinstance(value, str) else fmt(value, spec)
        where = result["headline_cases"].get(key) or ""
        if key.startswith("peak_rss") or key == "fp32_rss_mb":
            where = f"{result['rss_case']}, MB"
        if key == "convert_seconds":
            where = f"`{result['convert_command']}`, median of {result['convert']['reps']}"
        if key.startswith("unpack"):
            where = "nqformat.bench.unpack (tools/bench_bitpack.py)"
        status = verdict(t["met"]) if t else ""
        if t and "value_warm" in t:
            status += f" (warm: {fmt(t['value_warm'])}, {verdict(t['met_warm'])})"
        target = f"{t['op']} {t['target']:g}" if t else ""
        median = result.get("across_cases", {}).get(key, {}).get("median")
        mid = fmt(median) if median else ""
        w(f"| `{key}` | {shown} | {mid} | {target} | {status} | {where} |")
    w("")
    w(
        "Ratios are the worst case over the cases they apply to (the INT8 ones for "
        "`*_int8_load`; *where* names that case), so a target counts as met only if every case "
        "meets it; the median over the same cases is beside it."
    )
    w("")
    _md_table9(result, w)
    _md_table11(result, w)
    _md_timings(result, w)
    _md_convert(result, w)
    w("## Notes")
    w("")
    w(NOTES_BEGIN)
    w(notes.strip("\n") if notes.strip() else "")
    w(NOTES_END)
    w("")
    return "\n".join(out)


def _md_table9(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Paper Tables 9 and 10: model size")
    w("")
    w(
        "MB = MiB, as the paper's FP32 sizes imply. *Paper* columns are the paper's figures for "
        "the same architecture (— where it has none: it reports lightweight models at "
        "h = 5..7 only, and EfficientNet-B0, not Lite0)."
    )
    w("")
    w(
        "| model | n,h | .nq MB | paper | diverse MB | paper | reduction | paper | FP32 MB | "
        "paper | vs FP32 | paper | vs ideal |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["cases"]:
        s = row["sizes"]
        rep = s["report"]
        p = PAPER_SIZES.get((row["model"], row["n"], row["h"]))
        pv = p or (None,) * 5
        w(
            f"| {row['model']} | {row['n']},{row['h']} | {_mb(s['file_bytes'])} | {_paper(pv[0])} "
            f"| {_mb(rep['diverse_total'])} | {_paper(pv[1])} | "
            f"{_pct(1 - s['size_vs_diverse'])} | {_paper(pv[2], '.1f', '%')} | "
            f"{_mb(rep['fp32'])} | {_paper(pv[3])} | {_pct(1 - s['size_vs_fp32'])} | "
            f"{_paper(pv[4], '.1f', '%')} | {s['size_vs_ideal']:.4f} |"
        )
    w("")


def _md_table11(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Paper Table 11: switching page-in / page-out and memory")
    w("")
    w(
        "Upgrade (part → full). NestQuant pages in LOW and pages out nothing; the diverse pair "
        "pages in the INT-n model and pages out the INT-h one. Downgrade is the mirror image (the "
        "paper's table is symmetric, so is ours). *Paged in* is what the runtime's switch "
        "reported. Memory: the paper *estimates* part/full memory as k/8 of its INT8 figure; ours "
        "is measured peak RSS of a ready float32 module in a fresh process."
    )
    w("")
    w(
        "| model | n,h | .nq in MB | paper | paged in (switch) | diverse in/out MB | paper | "
        "reduced | paper | RSS part MB | paper | RSS full MB | paper | RSS FP32 MB | paper |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["cases"]:
        sw = row["sizes"]["switching"]["upgrade"]
        p = PAPER_SWITCH.get((row["model"], row["n"], row["h"]))
        pv = p or (None,) * 7
        rep = row["timings"]["switch_report"].get("upgrade", {})
        paged = next((v for k, v in rep.items() if k.startswith("bytes")), None)
        paper_div = "—" if p is None else f"{pv[2]:.1f} / {pv[3]:.1f}"
        w(
            f"| {row['model']} | {row['n']},{row['h']} | {_mb(sw['nested']['page_in'])} | "
            f"{_paper(pv[1])} | {'—' if paged is None else _mb(paged)} | "
            f"{_mb(sw['diverse']['page_in'])} / {_mb(sw['diverse']['page_out'])} | {paper_div} | "
            f"{_pct(sw['reduction'])} | {_paper(pv[4], '.1f', '%')} | "
            f"{rss_cell(row, 'part')} | {_paper(pv[0])} | "
            f"{rss_cell(row, 'full')} | {_paper(pv[5])} | "
            f"{rss_cell(row, 'fp32')} | {_paper(pv[6])} |"
        )
    w("")


def _md_timings(result: dict[str, Any], w: Callable[[str], None]) -> None:
    w("## Beyond the paper: measured load and switch times")
    w("")
    w(
        "Ratios of medians, `.nq` runtime / safetensors baseline (below 1 = the `.nq` file is "
        "faster). *part/INT-n*: a ready part-bit module from the `.nq` file against loading the "
        "separate INT-n model. *up/INT-n*: switching that module to full bit in place against "
        "loading the INT-n model. *down/INT-h*: switching back against loading the INT-h model. "
        "Medians in milliseconds in `docs/bench-results.json`."
    )
    w("")
    w(
        "| model | n,h | part/INT-n cold | warm | up/INT-n cold | warm | down/INT-h cold | warm | "
        "INT-n load ms (cold) | same |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in result["cases"]:
        t = row["timings"]
        cold = t.get("cold", {})
        warm = t.get("warm", {})
        base_ms = (cold or warm)["times"]["intn_load"]["median_s"] * 1e3
        same = t["baseline_equal_full"] and t["baseline_equal_part"]
        pairs = " | ".join(
            f"{fmt(cold.get(k))} | {fmt(warm.get(k))}"
            for k in ("part_load_vs_intn_load", "upgrade_vs_intn_load", "downgrade_vs_inth_load")
        )
        w(f"| {row['model']} | {row['n']},{row['h']} | {pairs} | {base_ms:.0f} | {fmt(same)} |")
    w("")
    for row in result["cases"]:
        prof = row["timings"].get("profile")
        if not prof:
            continue
        w(f"Where the time goes ({prof['case']}, warm cache, cProfile, top functions by own time):")
        w("")
        w("| step | function | calls | own s |")
        w("|---|---|---:|---:|")
        for step in ("part_load", "upgrade", "intn_load"):
            for r in prof[step][:6]:
                w(f"| {step} | `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} |")
        w("")
    u = result["unpack"]
    w(
        f"Unpack kernel (nqformat.bench.unpack, as tools/bench_bitpack.py prints it): "
        f"{u['unpack_elements_per_s']:.3g} elements/s, "
        f"{u['unpack_vs_memcpy']:.2f}× the time of a memcpy of the unpacked bytes."
    )
    w("")


def _md_convert(result: dict[str, Any], w: Callable[[str], None]) -> None:
    conv = result["convert"]
    w("## Convert time")
    w("")
    w(
        f"`{conv['command']}`, whole process (interpreter start to file renamed into place): "
        f"median {conv['median_s']:.2f} s of {conv['reps']} (min {conv['min_s']:.2f}, max "
        f"{conv['max_s']:.2f})."
    )
    prof = conv.get("profile")
    if prof:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in prof["stages_s"].items())
        w(f"In-process stages ({prof['model']}): {stages}. cProfile, top by own time:")
        w("")
        w("| function | calls | own s | cumulative s |")
        w("|---|---:|---:|---:|")
        for r in prof["top_by_tottime"]:
            w(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.2f} | {r['cumtime_s']:.2f} |")
    w("")


def read_notes(path: Path) -> str:
    """The hand-written notes section of an existing benchmarks.md, kept across rewrites."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]


def write_outputs(result: dict[str, Any], json_path: Path | None, md_path: Path | None) -> None:
    """Write the JSON object and/or the markdown report (atomically: tmp + rename)."""
    if json_path is not None:
        _atomic_write(json_path, json.dumps(result, indent=1, sort_keys=True) + "\n")
    if md_path is not None:
        _atomic_write(md_path, render_markdown(result, read_notes(md_path)))


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (the shared atomic-write helper)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as out:
        out.file.write(text.encode("utf-8"))
