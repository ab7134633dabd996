"""``nqtool inspect``: what is in a .nq file, from its header alone (no tensor data, no torch)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import click

from nqformat.cli._common import human_errors, require_file

__all__ = ["inspect_cmd", "inspect_data"]


def _meta_get(meta: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(meta, dict):
            return None
        meta = meta.get(key)
    return meta


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
            "rounding": _meta_get(meta, "quant", "rounding"),
            "part_params": _meta_get(meta, "quant", "part_params"),
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
            }
            for r in rows
        ]
    return data


def _mib(nbytes: int) -> str:
    return f"{nbytes:,} B ({nbytes / 2**20:.2f} MiB)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


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


def _render(data: dict[str, Any], layers: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    sizes = data["sizes"]
    console.print(f"[bold]{escape(data['file'])}[/]  {_mib(data['file_size'])}")
    overview = Table.grid(padding=(0, 2))
    overview.add_row("format", f".nq {data['version']}")
    overview.add_row(
        "bits",
        f"n={data['n']} h={data['h']} l={data['l']}  "
        f"(full-bit INT{data['n']}, part-bit INT{data['h']}, LOW codes {data['l'] + 1} bits)",
    )
    overview.add_row("rounding", escape(str(data["rounding"] or "unknown")))
    if data["part_params"] is not None:
        overview.add_row("part params", escape(str(data["part_params"])))
    if data["quantizer_version"] is not None:
        overview.add_row("quantizer", escape(str(data["quantizer_version"])))
    overview.add_row("model", escape(_model_line(data)))
    overview.add_row("weights", escape(_weights_line(data)))
    overview.add_row(
        "tensors",
        f"{sizes['tensor_count']} ({sizes['nested_count']} nested, {sizes['raw_count']} raw); "
        f"{sizes['nested_elements']:,} nested weights in {sizes['nested_channels']:,} channels",
    )
    console.print(overview)
    if data["random_init"] is True:
        console.print(
            "[bold red]WARNING: this file holds RANDOMLY INITIALISED weights, not a trained "
            "model. Its accuracy is meaningless.[/]"
        )
    if data["part_only"]:
        console.print(
            "[bold yellow]LOW is absent: this is a part-bit-only file "
            f"({data['file_size']:,} of {sizes['full_bytes']:,} bytes). It serves the part-bit "
            "model only; append the missing bytes of the full file to restore the full-bit one.[/]"
        )

    sect = Table(title="Sections", title_justify="left")
    for col in ("section", "offset", "length", "end", "crc32", ""):
        sect.add_column(col, justify="left" if col in ("section", "") else "right")
    for s in data["sections"]:
        sect.add_row(
            s["name"],
            f"{s['offset']:,}",
            f"{s['length']:,}",
            f"{s['end']:,}",
            s["crc"],
            "" if s["present"] else "[yellow]absent[/]",
        )
    console.print(sect)

    size = Table(title="Sizes", title_justify="left")
    size.add_column("what")
    size.add_column("bytes", justify="right")
    size.add_column("MiB", justify="right")
    size.add_column("note")

    def row(label: str, nbytes: int, note: str = "") -> None:
        size.add_row(label, f"{nbytes:,}", f"{nbytes / 2**20:.2f}", note)

    n, h = data["n"], data["h"]
    row("part-bit model (prefix)", sizes["part_bytes"], "header + DATA + HIGH")
    row("full-bit model (file)", sizes["full_bytes"], "+ LOW")
    row("  header", sizes["header_bytes"], "preamble + INDEX + NAMES + META")
    row("  raw tensors", sizes["raw_bytes"])
    row("  per-channel params", sizes["params_bytes"], "full + part scale/offset")
    row("  HIGH section", sizes["high_section"], f"{h} bits per nested weight")
    row("  LOW section", sizes["low_section"], f"{data['l'] + 1} bits per nested weight")
    row(
        "ideal full",
        sizes["ideal_full"],
        f"h+l+1 bits/weight; file is {_over(sizes['overhead_vs_ideal'])}",
    )
    row(
        "ideal part",
        sizes["ideal_part"],
        f"h bits/weight; prefix is {_over(sizes['part_overhead_vs_ideal'])}",
    )
    row("FP32", sizes["fp32"], f"file is {_smaller(sizes['reduction_vs_fp32'])}")
    row(f"diverse INT{n} model", sizes["diverse_full_model"], "separate, densely packed")
    row(f"diverse INT{h} model", sizes["diverse_part_model"], "separate, densely packed")
    row(
        f"diverse INT{n}+INT{h}",
        sizes["diverse_total"],
        f"file is {_smaller(sizes['reduction_vs_diverse'])} "
        f"(ideal from bit widths: {_pct(sizes['ideal_reduction_vs_diverse'])})",
    )
    console.print(size)

    sw = data["switching"]
    switch = Table(title="Switching (bytes paged, paper Table 11)", title_justify="left")
    for col in ("switch", "model", "page-in", "page-out", "total", "saved"):
        switch.add_column(col, justify="left" if col in ("switch", "model") else "right")
    for direction, label in (("upgrade", "part -> full"), ("downgrade", "full -> part")):
        for who, what in (("nested", "nested (this file)"), ("diverse", f"INT{n}+INT{h}")):
            cost = sw[direction][who]
            switch.add_row(
                label if who == "nested" else "",
                what,
                f"{cost['page_in']:,}",
                f"{cost['page_out']:,}",
                f"{cost['page_in'] + cost['page_out']:,}",
                _pct(sw[direction]["reduction"]) if who == "nested" else "",
            )
    console.print(switch)

    if layers:
        console.print("[italic]Tensors[/]")
        console.file.flush()
        # Plain columns: rich's table layout takes about a second for a few hundred rows.
        click.echo(_layers_table(data["tensors"]))


def _layers_table(tensors: list[dict[str, Any]]) -> str:
    """Fixed-width text table of the tensors (name, kind, shape, dtype, bytes of each blob)."""
    head = ("name", "kind", "shape", "dtype", "data", "high", "low")
    rows = [
        (
            t["name"],
            t["kind"] + (" (zstd)" if t["compressed"] else ""),
            "x".join(str(d) for d in t["shape"]) or "scalar",
            t["dtype"],
            f"{t['data_bytes']:,}",
            f"{t['high_bytes']:,}" if t["kind"] == "nested" else "",
            f"{t['low_bytes']:,}" if t["kind"] == "nested" else "",
        )
        for t in tensors
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    right = {4, 5, 6}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


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
        _render(data, layers)
