"""``nqtool inspect``: what is in a .nq file, from its header alone (no tensor data, no torch)."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

import click

from nqformat.cli._common import human_errors, require_file

__all__ = ["inspect_cmd", "inspect_data", "printable"]


def printable(text: str) -> str:
    """``text`` with every non-printable character (terminal escape sequences, control and
    format characters, unpaired surrogates) written as a Python-style escape, and backslashes
    doubled so that the escapes are unambiguous: names and META strings come from the file,
    and a name must not be able to drive the terminal (issue 11)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _meta_get(meta: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(meta, dict):
            return None
        meta = meta.get(key)
    return meta


def _params_fit(meta: Any) -> dict[str, int] | None:
    """Layer counts of META quant.params_fit (spec/metadata.md), if well-formed."""
    bn, lsq = (_meta_get(meta, "quant", "params_fit", k) for k in ("bn_layers", "lsq_layers"))
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (bn, lsq))
    return {"bn_layers": bn, "lsq_layers": lsq} if ok else None


def _layer_fit(meta: Any, name: str, kind: str) -> str | None:
    """Which (scale, offset) fit a nested tensor got: bn/lsq per layer, else the file's choice."""
    if kind != "nested":
        return None
    fit = _meta_get(meta, "quant", "params_fit", "layers", name, "fit")
    if isinstance(fit, str):
        return fit
    params = _meta_get(meta, "quant", "params")
    return params if isinstance(params, str) else None


def inspect_data(path: pathlib.Path, *, layers: bool = False) -> dict[str, Any]:
    """Everything ``inspect`` shows, as one JSON-ready dict (the ``--json`` output)."""
    import nqformat
    from nqformat.report import section_name, size_report, tensor_rows

    with nqformat.open(path) as f:
        meta = f.metadata
        rows = tensor_rows(f)
        sizes = size_report(f, rows)
        sections = [
            {
                "name": section_name(s),
                "offset": int(s.offset),
                "length": int(s.length),
                "end": int(s.offset) + int(s.length),
                "crc": f"{int(s.crc):08x}",
                "present": int(s.offset) + int(s.length) <= f.file_size,
            }
            for s in f.sections()
        ]
        model = _meta_get(meta, "model")
        data: dict[str, Any] = {
            "file": str(path),
            "file_size": int(f.file_size),
            "version": f"{f.version[0]}.{f.version[1]}",
            "n": f.n,
            "h": f.h,
            "l": f.l,
            "part_only": bool(f.part_only),
            "low_present": not f.part_only,
            # spec §14: the nested widths, coarsest first, each level's byte end, those present
            "levels": list(f.levels),
            "level_ends": [int(e) for e in f.level_ends],
            "available_levels": list(f.available_levels),
            # what the header and the channel parameters really take in a file of several
            # levels (LEVELS is part of the header; a (scale, offset) pair per level)
            "level_header_bytes": int(f.header_end),
            "level_params_bytes": sum(
                int(t.data.length) for t in f.tensors() if t.kind.name == "NESTED"
            ),
            "rounding": _meta_get(meta, "quant", "rounding"),
            "part_params": _meta_get(meta, "quant", "part_params"),
            "params": _meta_get(meta, "quant", "params"),
            "params_fit": _params_fit(meta),
            "quantizer_version": _meta_get(meta, "quant", "quantizer_version"),
            "model": model if isinstance(model, dict) else None,
            "random_init": _meta_get(meta, "model", "random_init"),
            "weights": _meta_get(meta, "model", "weights"),
            "sections": sections,
            "sizes": sizes.to_dict(),
            "switching": sizes.switching_dict(),
            "metadata": meta,
        }
    if layers:
        data["tensors"] = [
            {
                "name": r.name,
                "kind": r.kind,
                "shape": list(r.shape),
                "dtype": r.dtype,
                "numel": r.numel,
                "data_bytes": r.data_bytes,
                "high_bytes": r.high_bytes,
                "low_bytes": r.low_bytes,
                "compressed": r.compressed,
                "fit": _layer_fit(meta, r.name, r.kind),
            }
            for r in rows
        ]
    return data


def _mib(nbytes: int) -> str:
    return f"{nbytes:,} B ({nbytes / 2**20:.2f} MiB)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if abs(x) >= 0.001 else f"{100 * x:.3f}%"


def _smaller(reduction: float) -> str:
    """``1 - ours/baseline`` in words; tiny files can be larger than a baseline."""
    if reduction >= 0:
        return f"{_pct(reduction)} smaller"
    return f"{1 - reduction:.2f}x larger"


def _over(overhead: float) -> str:
    """``ours/ideal - 1`` in words: padding makes a file larger, compression smaller."""
    if overhead >= 0:
        return f"{_pct(overhead)} larger (alignment padding)"
    return f"{_pct(-overhead)} smaller (compression)"


def _model_line(data: dict[str, Any]) -> str:
    model = data["model"] or {}
    source = model.get("source") or model.get("zoo")
    name = model.get("name") or model.get("arch")
    if source is None and name is None:
        return "unknown (META has no model.name)"
    return " ".join(str(x) for x in (source, name) if x is not None)


def _weights_line(data: dict[str, Any]) -> str:
    if data["random_init"] is True:
        return "RANDOM INITIALISATION (not trained)"
    if data["weights"] is not None:
        return str(data["weights"])
    if data["random_init"] is False:
        return "trained (source not recorded)"
    return "unknown (META has no model.random_init)"


def _table(title: str, head: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> str:
    """Fixed-width text table. Plain text on purpose: rich's layout engine costs ~1 s for a few
    hundred rows and its import a noticeable part of inspect's time budget."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths).rstrip()
    return "\n".join([click.style(title, bold=True), line(head), rule, *(line(r) for r in rows)])


def _render(data: dict[str, Any], layers: bool) -> str:
    sizes = data["sizes"]
    n, h, low_bits = data["n"], data["h"], data["l"] + 1
    out: list[str] = [click.style(f"{data['file']}  {_mib(data['file_size'])}", bold=True)]
    overview = [
        ("format", f".nq {data['version']}"),
        (
            "bits",
            f"n={n} h={h} l={data['l']}  (full-bit INT{n}, part-bit INT{h}, "
            f"LOW codes {low_bits} bits)",
        ),
        ("rounding", str(data["rounding"] or "unknown")),
    ]
    if data["part_params"] is not None:
        overview.append(("part params", str(data["part_params"])))
    if data["params"] is not None:
        fit = data["params_fit"]
        counts = f" ({fit['bn_layers']} layers BN fit, {fit['lsq_layers']} LSQ)" if fit else ""
        overview.append(("params", f"{data['params']}{counts}"))
    if data["quantizer_version"] is not None:
        overview.append(("quantizer", str(data["quantizer_version"])))
    overview += [
        ("model", _model_line(data)),
        ("weights", _weights_line(data)),
        (
            "tensors",
            f"{sizes['tensor_count']} ({sizes['nested_count']} nested, {sizes['raw_count']} "
            f"raw); {sizes['nested_elements']:,} nested weights in "
            f"{sizes['nested_channels']:,} channels",
        ),
    ]
    levels = data.get("levels") or [h, n]
    if len(levels) > 2:  # a file of several levels (spec §14): LOW holds one residual per level
        residual = ", ".join(str(b - a + 1) for a, b in itertools.pairwise(levels))
        overview[1] = (
            "bits",
            f"n={n} h={h}  (full-bit INT{n}, part-bit INT{h}, LOW residuals of {residual} bits)",
        )
        widths = "|".join(map(str, levels[::-1]))
        ends = ", ".join(
            f"{w}-bit {e:,} B" + ("" if w in data["available_levels"] else " (absent)")
            for w, e in zip(levels, data["level_ends"], strict=True)
        )
        overview.insert(2, ("levels", f"INT({widths}); each level ends at: {ends}"))
    width = max(len(k) for k, _ in overview)
    out += [f"{k.ljust(width)}  {printable(v)}" for k, v in overview]
    if data["random_init"] is True:
        out.append(
            click.style(
                "WARNING: this file holds RANDOMLY INITIALISED weights, not a trained model. "
                "Its accuracy is meaningless.",
                fg="red",
                bold=True,
            )
        )
    if data["part_only"]:
        out.append(
            click.style(
                f"LOW is absent: this is a part-bit-only file ({data['file_size']:,} of "
                f"{sizes['full_bytes']:,} bytes). It serves the part-bit model only; append the "
                "missing bytes of the full file to restore the full-bit one.",
                fg="yellow",
                bold=True,
            )
        )

    out.append("")
    out.append(
        _table(
            "Sections",
            ("section", "offset", "length", "end", "crc32", ""),
            [
                (
                    s["name"],
                    f"{s['offset']:,}",
                    f"{s['length']:,}",
                    f"{s['end']:,}",
                    s["crc"],
                    "" if s["present"] else "absent",
                )
                for s in data["sections"]
            ],
            {1, 2, 3},
        )
    )

    def size_row(label: str, nbytes: int, note: str = "") -> tuple[str, ...]:
        return (label, f"{nbytes:,}", f"{nbytes / 2**20:.2f}", note)

    if len(levels) > 2:  # spec §14: the two-level ideal and switching figures do not apply
        out.append("")
        out.append(_levels_sizes(data, levels, size_row))
        return "\n".join(out)
    out.append("")
    out.append(
        _table(
            "Sizes",
            ("what", "bytes", "MiB", "note"),
            [
                size_row("part-bit model (prefix)", sizes["part_bytes"], "header + DATA + HIGH"),
                size_row("full-bit model (file)", sizes["full_bytes"], "+ LOW"),
                size_row("  header", sizes["header_bytes"], "preamble + INDEX + NAMES + META"),
                size_row("  raw tensors", sizes["raw_bytes"]),
                size_row("  per-channel params", sizes["params_bytes"], "full + part scale/offset"),
                size_row("  HIGH section", sizes["high_section"], f"{h} bits per nested weight"),
                size_row(
                    "  LOW section", sizes["low_section"], f"{low_bits} bits per nested weight"
                ),
                size_row(
                    "ideal full",
                    sizes["ideal_full"],
                    f"h+l+1 bits/weight; file is {_over(sizes['overhead_vs_ideal'])}",
                ),
                size_row(
                    "ideal part",
                    sizes["ideal_part"],
                    f"h bits/weight; prefix is {_over(sizes['part_overhead_vs_ideal'])}",
                ),
                size_row("FP32", sizes["fp32"], f"file is {_smaller(sizes['reduction_vs_fp32'])}"),
                size_row(f"diverse INT{n} model", sizes["diverse_full_model"], "separate, dense"),
                size_row(f"diverse INT{h} model", sizes["diverse_part_model"], "separate, dense"),
                size_row(
                    f"diverse INT{n}+INT{h}",
                    sizes["diverse_total"],
                    f"file is {_smaller(sizes['reduction_vs_diverse'])} (ideal from bit widths: "
                    f"{_pct(sizes['ideal_reduction_vs_diverse'])})",
                ),
            ],
            {1, 2},
        )
    )

    sw = data["switching"]
    rows = []
    for direction, label in (("upgrade", "part -> full"), ("downgrade", "full -> part")):
        for who, what in (("nested", "nested (this file)"), ("diverse", f"INT{n}+INT{h}")):
            cost = sw[direction][who]
            rows.append(
                (
                    label if who == "nested" else "",
                    what,
                    f"{cost['page_in']:,}",
                    f"{cost['page_out']:,}",
                    f"{cost['page_in'] + cost['page_out']:,}",
                    _pct(sw[direction]["reduction"]) if who == "nested" else "",
                )
            )
    out.append("")
    out.append(
        _table(
            "Switching (bytes paged; paper Table 11)",
            ("switch", "model", "page-in", "page-out", "total", "saved"),
            rows,
            {2, 3, 4, 5},
        )
    )
    if layers:
        out.append("")
        out.append(
            _table(
                "Tensors",
                ("name", "kind", "shape", "dtype", "data", "high", "low", "fit"),
                [
                    (
                        printable(t["name"]),
                        t["kind"] + (" (zstd)" if t["compressed"] else ""),
                        "x".join(str(d) for d in t["shape"]) or "scalar",
                        t["dtype"],
                        f"{t['data_bytes']:,}",
                        f"{t['high_bytes']:,}" if t["kind"] == "nested" else "",
                        f"{t['low_bytes']:,}" if t["kind"] == "nested" else "",
                        t["fit"] or "",
                    )
                    for t in data["tensors"]
                ],
                {4, 5, 6},
            )
        )
    return "\n".join(out)


def _levels_sizes(data: dict[str, Any], levels: list[int], size_row: Any) -> str:
    """The Sizes table of a file of several levels (spec §14): each level's prefix, and what
    the file is made of (the ideal and diverse-model rows of a 1.0 file assume two levels)."""
    sizes = data["sizes"]
    rows = [
        size_row(
            f"{w}-bit model (prefix)" if i + 1 < len(levels) else f"{w}-bit model (file)",
            end,
            "header + DATA + HIGH" if i == 0 else f"+ residual level {i}",
        )
        for i, (w, end) in enumerate(zip(levels, data["level_ends"], strict=True))
    ]
    residual = ", ".join(str(b - a + 1) for a, b in itertools.pairwise(levels))
    rows += [
        size_row(
            "  header", data["level_header_bytes"], "preamble + INDEX + NAMES + META + LEVELS"
        ),
        size_row("  raw tensors", sizes["raw_bytes"]),
        size_row(
            "  per-channel params", data["level_params_bytes"], "a scale/offset pair per level"
        ),
        size_row("  HIGH section", sizes["high_section"], f"{levels[0]} bits per nested weight"),
        size_row("  LOW section", sizes["low_section"], f"residuals of {residual} bits"),
        size_row("FP32", sizes["fp32"], f"file is {_smaller(sizes['reduction_vs_fp32'])}"),
    ]
    return _table("Sizes", ("what", "bytes", "MiB", "note"), rows, {1, 2})


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=pathlib.Path))
@click.option("--layers", is_flag=True, help="Add a per-tensor table.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: docs/cli.md).")
@human_errors
def inspect_cmd(file: pathlib.Path, layers: bool, as_json: bool) -> None:
    """Show what is in FILE: bit widths, model, sections, sizes and switching costs.

    Reads the header only, so it is fast on any file and works on a part-bit-only file.
    """
    require_file(file)
    data = inspect_data(file, layers=layers)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(_render(data, layers))
