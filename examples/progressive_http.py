"""Progressive download over HTTP: run the part-bit model first, upgrade when the rest arrives.

    python examples/progressive_http.py MODEL.nq [--image PHOTO]

What an app does with a ``.nq`` file on a web server (spec §9), with the library doing the
HTTP: ``nqformat.torch.load(url, mode="part")`` fetches the preamble, the header and the rest of
the prefix ``[0, part_end)`` (byte-range requests, nothing at or past ``part_end``), the app
runs the part-bit model, and ``nqformat.torch.switch(model, "full")`` fetches LOW (and only
LOW) and upgrades the loaded model in place. The model is codes-resident
(``resident="codes"``): it holds the fetched packed codes, not float32 weights, and the
upgrade only adds LOW; each step prints what the weights hold.

For the demonstration the script serves MODEL's folder itself from a local range server
(``nqformat.remote.server``, bound to 127.0.0.1 on an ephemeral port) and prints what the
server sent for each request. The download cache goes to a temporary folder, so every run
starts cold and nothing is left behind; the server stops by itself when the script ends.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

MIB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=pathlib.Path, help="a .nq file to serve and fetch")
    parser.add_argument("--image", type=pathlib.Path, help="photo to classify (default: a cat)")
    args = parser.parse_args(argv)

    # torch-side imports only now, so --help works without torch; the helpers of switching.py
    # (same folder) classify the photo
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from switching import describe, load_image, predict

    import nqformat.torch as nqt
    from nqformat.cli.evaluate import preprocess_from_meta
    from nqformat.remote.server import serve

    image = load_image(args.image)
    with tempfile.TemporaryDirectory() as cache, serve(args.file.resolve().parent) as server:
        os.environ["NQFORMAT_CACHE"] = cache  # cold and private: see the module docstring
        url = server.url_of(args.file.name)
        print(f"serving {args.file} at {url}")

        t0 = time.perf_counter()
        model = nqt.load(url, mode="part", resident="codes")
        handle = nqt.runtime(model)
        f = handle.file
        transform = preprocess_from_meta(f.metadata).transform()
        part = describe(predict(model, image, transform))
        seconds = time.perf_counter() - t0
        sent = server.requests()
        for step, (what, got) in enumerate(
            zip(("preamble", "header", "prefix"), sent, strict=True)
        ):
            print(f"step {step + 1}: {what:<9}{got.sent:>11,} bytes  ({got.range} -> {got.status})")
        print(
            f"        part_end={f.part_end:,}: fetched {sum(e.sent for e in sent):,} bytes, "
            f"nothing at or past part_end: {f.max_offset_read <= f.part_end}"
        )
        print(f"        first prediction {seconds:.2f} s after the first request")
        print(f"        part-bit: {part}")
        print(f"        weights hold {handle.weight_bytes(model) / MIB:.2f} MB (part-bit codes)")

        server.clear()
        report = nqt.switch(model, "full")
        (low,) = server.requests()
        print(f"step 4: LOW      {low.sent:>11,} bytes  ({low.range} -> {low.status})")
        print(f"        switched to full-bit in place in {report.seconds:.3f} s")
        print(f"        full-bit: {describe(predict(model, image, transform))}")
        print(f"        weights hold {handle.weight_bytes(model) / MIB:.2f} MB (full-bit codes)")

        total = sum(e.sent for e in sent) + low.sent
        size = args.file.stat().st_size
        print(f"fetched {total:,} bytes in {len(sent) + 1} requests; the file is {size:,} bytes")
        nqt.close(model)
        if total != size:
            return 1
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
