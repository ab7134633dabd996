"""The headline of a run: top-level figures (worst case over the cases each applies to) and
the verdict on each target. Also recomputes them for a saved result (``refresh_summary``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

from nqformat.bench.cases import CONVERT_TARGET_MODEL, TARGETS, Case
from nqformat.bench.registry import CASE_MEASUREMENTS, RUN_MEASUREMENTS

__all__ = ["case_dict", "evaluate_targets", "headline", "primary", "refresh_summary"]


def case_dict(case: Case) -> dict[str, Any]:
    """A case as the JSON object records it."""
    return {"model": case.model, "n": case.n, "h": case.h, "label": case.label}


def primary(row: dict[str, Any]) -> dict[str, Any]:
    """The timings the headline uses: cold where eviction worked, else warm."""
    t = row["timings"]
    return t["cold"] if "cold" in t else t["warm"]


def _worst(rows: Iterable[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> tuple:
    """(largest value, its case label) over ``rows``; (None, None) where none has a value."""
    best: tuple[float | None, str | None] = (None, None)
    for row in rows:
        v = get(row)
        if v is not None and (best[0] is None or v > best[0]):
            best = (v, row["label"])
    return best


def headline(result: dict[str, Any], reference: Case) -> None:
    """Top-level keys: worst case over the cases each one applies to (named in headline_cases)."""
    rows = result["cases"]
    int8 = [r for r in rows if r["n"] == 8] or rows
    where: dict[str, str | None] = {}

    spread: dict[str, dict[str, Any]] = {}

    def put(key: str, pool: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> None:
        value, label = _worst(pool, get)
        result[key] = value
        where[key] = label
        values = [v for v in (get(r) for r in pool) if v is not None]
        if values:
            spread[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "cases": len(values),
            }

    put("size_vs_ideal", rows, lambda r: r["sizes"]["size_vs_ideal"])
    put("size_vs_diverse", rows, lambda r: r["sizes"]["size_vs_diverse"])
    put("part_load_vs_int8_load", int8, lambda r: primary(r)["part_load_vs_intn_load"])
    put("upgrade_vs_int8_load", int8, lambda r: primary(r)["upgrade_vs_intn_load"])
    put("downgrade_vs_inth_load", int8, lambda r: primary(r)["downgrade_vs_inth_load"])
    warm: dict[str, Any] = {}
    for key, sub in (
        ("part_load_vs_int8_load", "part_load_vs_intn_load"),
        ("upgrade_vs_int8_load", "upgrade_vs_intn_load"),
        ("downgrade_vs_inth_load", "downgrade_vs_inth_load"),
    ):
        value, label = _worst(int8, lambda r, s=sub: r["timings"].get("warm", {}).get(s))
        warm[key] = {"value": value, "case": label}
    result["warm"] = warm
    result["headline_cases"] = where
    result["across_cases"] = spread
    result["timing_cache_state"] = "cold" if "cold" in rows[0]["timings"] else "warm"

    for m in (*CASE_MEASUREMENTS, *RUN_MEASUREMENTS):
        if m.headline is not None:
            result.update(m.headline(result))

    ref = next(
        r
        for r in rows
        if (r["model"], r["n"], r["h"]) == (reference.model, reference.n, reference.h)
    )
    result["rss_case"] = ref["label"]
    result["peak_rss_part_mb"] = ref["rss"]["part"]["peak_rss_mb"]
    result["peak_rss_full_mb"] = ref["rss"]["full"]["peak_rss_mb"]
    result["peak_rss_intn_mb"] = ref["rss"].get("intn", {}).get("peak_rss_mb")
    result["fp32_rss_mb"] = ref["rss"]["fp32"]["peak_rss_mb"]
    result["rss_after_import_mb"] = ref["rss"]["fp32"]["rss_after_import_mb"]


def refresh_summary(result: dict[str, Any]) -> None:
    """Recompute the derived top-level figures of a saved result from its cases."""
    ref = result["reference"]
    headline(result, Case(ref["model"], ref["n"], ref["h"]))
    result["targets"] = evaluate_targets(result)


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with its value, limit and whether it is met (None: not applicable here)."""
    out: dict[str, Any] = {}
    for t in TARGETS:
        value = result.get(t.key)
        entry: dict[str, Any] = {"value": value, "target": t.limit, "op": t.op, "scope": t.scope}
        met = t.met(value)
        if t.key == "convert_seconds" and result.get("convert_model") != CONVERT_TARGET_MODEL:
            entry["note"] = (
                f"measured on {result.get('convert_model')}; the target is for "
                f"{CONVERT_TARGET_MODEL} (full mode)"
            )
            met = None
        if t.key in result.get("warm", {}):
            warm_value = result["warm"][t.key]["value"]
            entry["value_warm"] = warm_value
            entry["met_warm"] = t.met(warm_value)
        entry["met"] = met
        out[t.key] = entry
    return out
