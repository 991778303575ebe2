"""A real HTTP server on 127.0.0.1 standing in for the weights sources, and small real weights files.

The server serves ``files`` (path -> bytes) with GET and HEAD and counts the GETs of each path.
Under ``/hf/`` it answers as the Hugging Face Hub does for an LFS file: a HEAD on
``/hf/<repo>/resolve/main/<file>`` gets a 302 with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256)
and ``X-Linked-Size``, pointing at ``/cdn/<sha256>``. Faults per path: ``cut`` (the connection is
closed halfway through the body), ``slow`` (the body trickles, so downloads overlap).
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}
        self.gets: Counter = Counter()
        self.hf: dict[str, bytes] = {}  # '<repo>/<file>' -> bytes, served the Hub's way
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _hf_head(self):
                rel = self.path.removeprefix("/hf/").replace("/resolve/main/", "/")
                data = server.hf.get(rel)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return True
                sha = server.hf_etags.get(rel) or hashlib.sha256(data).hexdigest()
                server.files[f"/cdn/{hashlib.sha256(data).hexdigest()}"] = data
                self.send_response(302)
                self.send_header("Location", f"/cdn/{hashlib.sha256(data).hexdigest()}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_HEAD(self):
                if self.path.startswith("/hf/"):
                    self._hf_head()
                    return
                data = server.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()

            def do_GET(self):
                server.gets[self.path] += 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                fault = server.faults.get(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "slow":
                    step = max(1, len(data) // 10)
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.15)
                    return
                self.wfile.write(data)

        self.hf_etags: dict[str, str] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def torch_bytes(state: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def hashed_name(stem: str, data: bytes) -> str:
    """torchvision's naming: ``<stem>-<first 8 hex digits of the sha256>.pth``."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def publish_torchvision(monkeypatch, weights_member, data: bytes, stem: str) -> str:
    """Make torchvision's weights enum point at a file named after ``data``'s hash (as torchvision
    names its releases); returns the file name."""
    name = hashed_name(stem, data)
    monkeypatch.setattr(weights_member.value, "url", f"https://download.pytorch.org/models/{name}")
    return name


@pytest.fixture
def s3(monkeypatch):
    """A real S3 server on 127.0.0.1 with a bucket ``models``, its credentials in the environment:
    (a Minio client, the endpoint URL)."""
    from minio import Minio

    from kube_testserver import object_store

    with object_store("models") as secret:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, secret[name])
        endpoint = secret["AWS_ENDPOINT_URL"]
        yield (Minio(endpoint[len("http://"):], access_key=secret["AWS_ACCESS_KEY_ID"],
                     secret_key=secret["AWS_SECRET_ACCESS_KEY"], secure=False), endpoint)
