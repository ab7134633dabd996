"""The plain-text summary ``nqtool bench`` prints, and the cell formatting the markdown shares."""

from __future__ import annotations

from typing import Any

from nqformat.bench.cases import REQUIRED_KEYS
from nqformat.bench.summary import primary

__all__ = ["fmt", "render_text", "rss_cell", "verdict"]


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def rss_cell(row: dict[str, Any], mode: str) -> str:
    """Peak RSS of one mode in MB, or a dash where this run did not measure it."""
    entry = row["rss"].get(mode)
    return "—" if entry is None else f"{entry['peak_rss_mb']:.0f}"


def verdict(flag: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[flag]


def render_text(result: dict[str, Any]) -> str:
    """A plain-text summary: the headline figures with targets, then one line per case."""
    lines = [
        f"nqtool bench ({result['mode']}) on {result['machine']['cores_usable']} cores, "
        f"torch {result['machine']['torch']}, timings {result['timing_cache_state']} cache, "
        f"{result['wall_seconds']:.0f} s",
        "",
        f"{'figure':<26} {'value':>12} {'target':>10}  status   worst case",
    ]
    targets = result["targets"]
    for key in REQUIRED_KEYS[:12]:
        value = result[key]
        t = targets.get(key)
        spec = ".3g" if key == "unpack_elements_per_s" else ".3f"
        shown = fmt(value, spec) if not isinstance(value, str) else value
        target = f"{t['op']} {t['target']:g}" if t else ""
        status = verdict(t["met"]) if t else ""
        where = result["headline_cases"].get(key) or ""
        if key.startswith("peak_rss") or key == "fp32_rss_mb":
            where = result["rss_case"]
        lines.append(f"{key:<26} {shown:>12} {target:>10}  {status:<7}  {where}")
    lines += [
        "",
        f"{'case':<34} {'vs ideal':>8} {'vs div.':>8} {'part/INTn':>9} {'up/INTn':>8} "
        f"{'down/INTh':>9} {'RSS part':>8} {'full':>6} {'fp32':>6}  same",
    ]
    for row in result["cases"]:
        p = primary(row)
        same = row["timings"]["baseline_equal_full"] and row["timings"]["baseline_equal_part"]
        lines.append(
            f"{row['label']:<34} {row['sizes']['size_vs_ideal']:>8.4f} "
            f"{row['sizes']['size_vs_diverse']:>8.3f} {fmt(p['part_load_vs_intn_load']):>9} "
            f"{fmt(p['upgrade_vs_intn_load']):>8} {fmt(p['downgrade_vs_inth_load']):>9} "
            f"{rss_cell(row, 'part'):>8} {rss_cell(row, 'full'):>6} {rss_cell(row, 'fp32'):>6}  "
            f"{fmt(same)}"
        )
    return "\n".join(lines)
