"""Fetching 500 images from a local S3 server (moto's, on 127.0.0.1): parallel downloads against
one-by-one, as a ratio; then the same through a proxy that adds 20 ms before each answer, closer to a
store across a network.

    python benchmarks/data_s3_fetch.py [--images 500] [--workers 16] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from automl_vision.data.storage import StorageConfig, fetch_all

BUCKET = "bench-images"
BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "JPEGImages"


class LatencyProxy:
    """TCP proxy that waits ``delay`` seconds before passing on each answer from the server."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream, self.delay = upstream, delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        waiting = True
        try:
            while True:
                src.settimeout(None)
                data = src.recv(65536)
                if not data:
                    break
                if delay and waiting:
                    time.sleep(delay)  # once per answer: the next recv blocks until the next request
                dst.sendall(data)
                src.settimeout(0.001)
                try:
                    while True:
                        more = src.recv(65536)
                        if not more:
                            raise OSError
                        dst.sendall(more)
                except TimeoutError:
                    waiting = True
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def upload(host: str, port: int, n: int) -> int:
    from minio import Minio

    client = Minio(f"{host}:{port}", access_key="bench", secret_key="bench-secret", secure=False, region="us-east-1")
    client.make_bucket(BUCKET)
    sources = sorted(BCCD.glob("*.jpg")) if BCCD.is_dir() else []
    total = 0
    for i in range(n):
        if sources:
            data = sources[i % len(sources)].read_bytes()
        else:
            from PIL import Image

            buf = io.BytesIO()
            Image.new("RGB", (640, 480), (i % 255, 80, 160)).save(buf, "JPEG")
            data = buf.getvalue()
        client.put_object(BUCKET, f"img/{i:05d}.jpg", io.BytesIO(data), len(data))
        total += len(data)
    return total


def timed_fetch(port: int, n: int, workers: int) -> tuple[float, int]:
    config = StorageConfig(endpoint=f"http://127.0.0.1:{port}", access_key="bench", secret_key="bench-secret",
                           region="us-east-1", workers=workers)
    uris = [f"s3://{BUCKET}/img/{i:05d}.jpg" for i in range(n)]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        results, stats = fetch_all([(u, u) for u in uris], cache, config, workers=workers)
        seconds = time.perf_counter() - t0
    assert stats.fetched == n and stats.failed == 0, stats
    return seconds, stats.bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        size = upload(host, port, args.images)
        print(f"{args.images} images, {size / 1e6:.1f} MB in the local S3 server")
        proxy = LatencyProxy((host, port), args.latency_ms / 1000)
        for label, p in (("direct", port), (f"+{args.latency_ms:g} ms per answer", proxy.port)):
            one, _ = timed_fetch(p, args.images, 1)
            many, _ = timed_fetch(p, args.images, args.workers)
            print(f"{label:>22}: one-by-one {args.images / one:>7,.0f} images/s ({one:.2f} s); "
                  f"{args.workers} in parallel {args.images / many:>7,.0f} images/s ({many:.2f} s); "
                  f"ratio {one / many:.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
