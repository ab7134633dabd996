"""Progressive download over HTTP: run the part-bit model first, upgrade when the rest arrives.

    python examples/progressive_http.py MODEL.nq [--image PHOTO]

What a phone app would do with a ``.nq`` file on a web server (spec §9): fetch the 256-byte
preamble to learn ``part_end``, fetch the prefix ``[0, part_end)`` (everything the part-bit model
needs), run it, then fetch ``[part_end, end)`` (the LOW section), append it to the same local file
and switch the loaded model to full-bit in place.

For the demonstration the script serves MODEL.nq itself from a local HTTP server (stdlib
``http.server``, bound to 127.0.0.1 on an ephemeral port, honouring ``Range`` with 206 and
``Content-Range``). The server answers a bounded number of requests, every request has a timeout,
and the server stops by itself when the script ends.
"""

from __future__ import annotations

import argparse
import http.server
import pathlib
import re
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from nqformat.container import spec

LOOPBACK = "127.0.0.1"
MAX_REQUESTS = 16  # the client makes 3; anything beyond this is refused
REQUEST_TIMEOUT_S = 30.0
CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET of the one served file, with single byte-range support (RFC 9110 §14)."""

    path_on_disk: pathlib.Path
    budget: list[int]  # remaining requests, shared with the server
    timeout = REQUEST_TIMEOUT_S  # socket timeout per connection: a stalled client cannot hang us

    def do_GET(self) -> None:
        if self.budget[0] <= 0:
            self.send_error(503, "request budget exhausted")
            return
        self.budget[0] -= 1
        size = self.path_on_disk.stat().st_size
        header = self.headers.get("Range")
        if header is None:
            start, end, status = 0, size, 200
        else:
            m = _RANGE.match(header.strip())
            if m is None:
                self.send_error(416, "only one range of the form bytes=a-b is supported")
                return
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
            if start >= size or end <= start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        with self.path_on_disk.open("rb") as f:
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def log_message(self, format: str, *args: object) -> None:
        print(f"  server: {self.requestline} -> {args[1] if len(args) > 1 else ''}")


@contextmanager
def serve(path: pathlib.Path) -> Iterator[str]:
    """Serve ``path`` on 127.0.0.1:<ephemeral>; yields its URL; stops on exit."""
    handler = type("Handler", (_RangeHandler,), {"path_on_disk": path, "budget": [MAX_REQUESTS]})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True  # never outlives the script, even if the client crashes
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=REQUEST_TIMEOUT_S)


def fetch_range(url: str, start: int, end: int | None = None) -> tuple[bytes, str]:
    """GET bytes [start, end) (to the end of the file if end is None); insists on a 206."""
    want = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
    req = urllib.request.Request(url, headers={"Range": want})
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
        if resp.status != 206:
            raise RuntimeError(f"server ignored the Range header (status {resp.status})")
        body = resp.read()
        content_range = resp.headers.get("Content-Range", "")
    if end is not None and len(body) != end - start:
        raise RuntimeError(f"asked for {end - start} bytes, got {len(body)}")
    return body, content_range


def parse_preamble(buf: bytes) -> spec.Preamble:
    """Check magic and preamble CRC (spec §3.1, §11 steps 1-4) before trusting any offset."""
    if len(buf) != spec.PREAMBLE_SIZE or not buf.startswith(spec.MAGIC):
        raise RuntimeError("not an .nq file (bad magic or short preamble)")
    (stored,) = struct.unpack_from("<I", buf, spec.PREAMBLE_CRC_OFFSET)
    if spec.crc32(buf[: spec.PREAMBLE_CRC_OFFSET]) != stored:
        raise RuntimeError("preamble CRC mismatch: the download is corrupt")
    return spec.Preamble.unpack(buf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=pathlib.Path, help="a .nq file to serve and fetch")
    parser.add_argument("--image", type=pathlib.Path, help="photo to classify (default: a cat)")
    args = parser.parse_args(argv)

    # torch-side imports only now, so --help works without torch; the helpers of switching.py
    # (same folder) classify the photo
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from switching import describe, load_image, predict

    import nqformat
    import nqformat.torch as nqt
    from nqformat.cli.evaluate import preprocess_from_meta

    image = load_image(args.image)
    total = 0
    with serve(args.file) as url, tempfile.TemporaryDirectory() as tmp:
        local = pathlib.Path(tmp) / args.file.name
        print(f"serving {args.file} at {url}")

        head, cr = fetch_range(url, 0, spec.PREAMBLE_SIZE)
        total += len(head)
        pre = parse_preamble(head)
        served_size = int(cr.rsplit("/", 1)[1])
        if not spec.PREAMBLE_SIZE < pre.part_end <= pre.full_end == served_size:
            raise RuntimeError(
                f"preamble offsets do not fit the served file: part_end={pre.part_end}, "
                f"full_end={pre.full_end}, size={served_size}"
            )
        print(f"step 1: preamble   {len(head):>10,} bytes  ({cr})")
        print(f"        n={pre.n} h={pre.h} part_end={pre.part_end:,} full_end={pre.full_end:,}")

        rest_of_prefix, cr = fetch_range(url, spec.PREAMBLE_SIZE, pre.part_end)
        local.write_bytes(head + rest_of_prefix)
        total += len(rest_of_prefix)
        print(f"step 2: prefix     {len(rest_of_prefix):>10,} bytes  ({cr})")

        with nqformat.open(local) as f:  # a part-bit-only file (spec §9) opens normally
            print(f"        local file: {f.file_size:,} bytes, part-bit only: {f.part_only}")
            transform = preprocess_from_meta(f.metadata).transform()
        t0 = time.perf_counter()
        model = nqt.load(local, mode="part")
        print(f"        loaded part-bit model from the prefix in {time.perf_counter() - t0:.2f} s")
        print(f"        part-bit: {describe(predict(model, image, transform))}")

        low, cr = fetch_range(url, pre.part_end)
        with local.open("ab") as f:
            f.write(low)
        total += len(low)
        print(f"step 3: LOW        {len(low):>10,} bytes  ({cr})")
        report = nqt.switch(model, "full")
        print(
            f"        switched to full-bit in place in {report.seconds:.3f} s, "
            f"paged in {report.bytes_paged_in:,} B"
        )
        print(f"        full-bit: {describe(predict(model, image, transform))}")

        same = local.read_bytes() == args.file.read_bytes()
        print(
            f"fetched {total:,} bytes in 3 requests; "
            f"local copy identical to the served file: {same}"
        )
        if not same:
            return 1
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
