#!/usr/bin/env python
"""Time to the first prediction over a slow link: .nq part-bit / full-bit by URL vs INT8
safetensors fetched whole (the table in docs/remote.md).

    python tools/bench_remote.py [--models tf_efficientnet_lite0 resnet50] [--mbit 20]
                                 [--rtt-ms 100] [--repeat 2] [--json OUT]

The files are served by ``nqformat.remote.server`` on loopback, throttled to ``--mbit`` and
with ``--rtt-ms`` added before every response and on every new connection (a TCP handshake and
a request/response round trip; TLS is not modelled). Every case starts cold: a fresh process-
private download cache, a model built from the file's META. "First prediction" is one forward
pass on one real photo, preprocessed beforehand (the same tensor for every case). Bytes are
counted by the server (response bodies; headers are not counted).

Cases, per model (converted here to INT(8|6) with round-to-nearest; resnet50 with random
weights, which changes nothing here but the predicted class):
- nq part: ``nqformat.torch.load(url, mode="part")`` then predict;
- nq part then full: the same, then ``switch(model, "full")`` and predict again (the time
  to the full-bit prediction counts from the first request);
- nq full: ``load(url, mode="full")`` then predict;
- int8 safetensors: GET the whole INT8 baseline file (the .nq file's own full codes and
  per-channel parameters, written by tools/bench_resources.py) then load it with the same
  dequantization code and predict.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def _convert(name: str, folder: pathlib.Path) -> pathlib.Path:
    import nqformat.torch as nqt
    from nqformat import zoo

    spec = zoo.resolve(name)
    real = name.startswith("tf_efficientnet_lite")
    module, meta = zoo.build(spec) if real else zoo.build(spec, random_init=True, seed=0)
    path = folder / f"{name}.nq"
    nqt.convert_model(module, path, n=8, h=6, rounding="rtn", metadata={"model": meta})
    return path


def _photo(meta: dict[str, Any]) -> Any:
    import importlib.util

    from nqformat.cli.evaluate import preprocess_from_meta

    sys.path.insert(0, str(ROOT / "examples"))
    from switching import load_image

    found = importlib.util.find_spec("foolbox")
    assert found is not None and found.submodule_search_locations
    photo = pathlib.Path(next(iter(found.submodule_search_locations))) / "data/imagenet_04_949.jpg"
    return preprocess_from_meta(meta).transform()(load_image(photo)).unsqueeze(0)


def _predict(model: Any, x: Any) -> int:
    import torch

    with torch.inference_mode():
        return int(model(x).argmax())


def _fetch_whole(url: str, dest: pathlib.Path) -> None:
    """What a client of a plain weights file does: one GET of the whole file."""
    import urllib3

    with urllib3.PoolManager() as pool:
        resp = pool.request("GET", url, preload_content=False, decode_content=False)
        with dest.open("wb") as out:
            for chunk in resp.stream(256 * 1024):
                out.write(chunk)
        resp.release_conn()


def run_model(name: str, folder: pathlib.Path, server: Any, repeat: int) -> list[dict[str, Any]]:
    import bench_resources

    import nqformat
    import nqformat.torch as nqt
    from nqformat import zoo

    nq = _convert(name, folder)
    int8, _ = bench_resources.write_baselines(nq, folder)
    with nqformat.open(nq) as f:
        meta = f.metadata
        part_end, full_end = f.part_end, f.full_end
    x = _photo(meta)
    url = server.url_of(nq.name)
    rows: dict[str, dict[str, Any]] = {}

    def attempt(case: str, cache: pathlib.Path) -> list[tuple[str, float, int, int]]:
        """Run ``case`` once. Per row: its name, seconds from the first request to the
        prediction, the predicted class, and how many requests the server saw by then."""
        t0 = time.perf_counter()
        if case == "int8 safetensors":
            local = cache / int8.name
            if not local.exists():  # warm: the file is here already
                _fetch_whole(server.url_of(int8.name), local)
            module = zoo.instantiate(meta["model"]).eval()
            bench_resources.load_baseline(module, local, 8)
            label = _predict(module, x)
            return [(case, time.perf_counter() - t0, label, len(server.requests()))]
        # the float runtime, as docs/remote.md's figures were measured
        module = nqt.load(url, mode="part" if case == "nq part" else "full", resident="float")
        label = _predict(module, x)
        out = [(case, time.perf_counter() - t0, label, len(server.requests()))]
        if case == "nq part":
            nqt.switch(module, "full")
            label = _predict(module, x)
            row = "nq part, then switch to full"
            out.append((row, time.perf_counter() - t0, label, len(server.requests())))
        nqt.close(module)
        return out

    for _ in range(repeat):
        for case in ("nq part", "nq full", "int8 safetensors"):
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["NQFORMAT_CACHE"] = tmp  # cold: nothing cached
                server.clear()
                cold = attempt(case, pathlib.Path(tmp))
                log = server.requests()
                server.clear()
                warm = attempt(case, pathlib.Path(tmp))  # everything local: the CPU's share
                assert not server.requests(), "a warm run must not touch the network"
            for (row_name, seconds, label, upto), warm_row in zip(cold, warm, strict=True):
                row = rows.setdefault(row_name, {"model": name, "case": row_name})
                row.setdefault("seconds", []).append(seconds)
                row.setdefault("local_seconds", []).append(warm_row[1])
                sent = sum(e.sent for e in log[:upto])
                row.update(bytes=sent, requests=upto, label=label)
    out = []
    for row in rows.values():
        row["best_s"] = min(row["seconds"])
        row["best_local_s"] = min(row["local_seconds"])
        row["part_end"], row["full_end"] = part_end, full_end
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet50"])
    parser.add_argument("--mbit", type=float, default=20.0)
    parser.add_argument("--rtt-ms", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)

    from nqformat.remote.server import serve

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        rate = args.mbit * 1e6 / 8
        with serve(folder, rate_bytes_per_s=rate, rtt_s=args.rtt_ms / 1000) as server:
            for name in args.models:
                rows.extend(run_model(name, folder, server, args.repeat))
    print(
        f"link: {args.mbit:g} Mbit/s, {args.rtt_ms:g} ms RTT; best of {args.repeat}; load: "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        "| model | case | first prediction (s) | same, all local (s) | bytes transferred "
        "| of the .nq file | requests | link alone (s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = r["bytes"] / r["full_end"]
        # what the link alone costs: the bytes at the rate, plus a round trip per request and
        # one for the connection (the server's simulation; the rest is CPU on this machine)
        link = r["bytes"] / rate + (r["requests"] + 1) * args.rtt_ms / 1000
        print(
            f"| {r['model']} | {r['case']} | {r['best_s']:.2f} | {r['best_local_s']:.2f} "
            f"| {r['bytes']:,} | {share:.0%} | {r['requests']} | {link:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
