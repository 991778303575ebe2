"""Remote images against a real S3 endpoint on 127.0.0.1 (moto's server), with a TCP proxy in front of it
that drops connections, cuts responses short or flips a byte: fetched once into the cache, in
parallel, retried on transient errors, checked, and credentials never shown."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.data import problems as P
from automl_vision.data.manifest import ingest
from automl_vision.data.storage import StorageConfig, cache_path
from automl_vision.data.validate import ValidationOptions, load_dataset, validate_dataset
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION
BUCKET = "automl-test"
ACCESS_KEY = "AKIAUNITTESTKEY123"
SECRET_KEY = "s3cr3t-never-print-me-9f8e7d"


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield host, port
    server.stop()


class FaultyProxy:
    """Forwards TCP to the S3 server; for a GET of a chosen key, applies the next queued fault:
    ``drop`` (close before any answer), ``cut`` (headers and a few bytes of body, then close) or
    ``corrupt`` (flip the first body byte)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.faults: dict[str, list[str]] = {}
        self.applied: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fault_for(self, data: bytes) -> str | None:
        with self.lock:
            for key, queue in self.faults.items():
                if queue and f"GET /{BUCKET}/{key} ".encode() in data:
                    fault = queue.pop(0)
                    self.applied.append((key, fault))
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        state: dict[str, str | None] = {"fault": None}

        def close_both() -> None:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def pump_back() -> None:
            buffered = b""
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    fault = state["fault"]
                    if fault in ("cut", "corrupt"):
                        buffered += data
                        end = buffered.find(b"\r\n\r\n")
                        if end < 0 or len(buffered) < end + 4 + 16:
                            continue
                        body = end + 4
                        if fault == "cut":
                            client.sendall(buffered[: body + 16])
                            close_both()
                            return
                        data = buffered[:body] + bytes([buffered[body] ^ 0xFF]) + buffered[body + 1:]
                        buffered = b""
                        state["fault"] = None
                    client.sendall(data)
            except OSError:
                pass
            close_both()

        threading.Thread(target=pump_back, daemon=True).start()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                fault = self._fault_for(data)
                if fault == "drop":
                    close_both()
                    return
                state["fault"] = fault
                upstream.sendall(data)
        except OSError:
            pass
        close_both()


@pytest.fixture
def proxy(s3_server):
    p = FaultyProxy(s3_server)
    yield p
    p.close()


def _client(host: str, port: int):
    from minio import Minio

    client = Minio(f"{host}:{port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    return client


def _upload(client, key: str, seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    data = buf.getvalue()
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    return data


def _storage(port: int, **changes) -> StorageConfig:
    values = dict(endpoint=f"http://127.0.0.1:{port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                  region="us-east-1", backoff_s=0.01, attempts=4)
    values.update(changes)
    return StorageConfig(**values)


def _jsonl(path: Path, urls: list[str]) -> Path:
    path.write_text("".join(json.dumps({"image_url": u, "label": "odd" if i % 2 else "even"}) + "\n"
                            for i, u in enumerate(urls)))
    return path


def test_fetch_retries_dropped_cut_and_corrupted_transfers(s3_server, proxy, tmp_path):
    client = _client(*s3_server)
    prefix = "retry"
    data = {f"{prefix}/img{i}.png": _upload(client, f"{prefix}/img{i}.png", i) for i in range(30)}
    proxy.faults = {f"{prefix}/img3.png": ["drop"], f"{prefix}/img5.png": ["cut", "cut"],
                    f"{prefix}/img7.png": ["corrupt"]}
    jsonl = _jsonl(tmp_path / "d.jsonl", [f"s3://{BUCKET}/{k}" for k in data])
    options = ValidationOptions(storage=_storage(proxy.port), cache_dir=str(tmp_path / "cache"))
    result = validate_dataset(jsonl, MC, options=options)
    assert result.report.problems == []
    assert sorted(proxy.applied) == [(f"{prefix}/img3.png", "drop"), (f"{prefix}/img5.png", "cut"),
                                     (f"{prefix}/img5.png", "cut"), (f"{prefix}/img7.png", "corrupt")]
    fetch = result.report.fetch
    assert (fetch.fetched, fetch.cached, fetch.failed, fetch.retries) == (30, 0, 0, 4)
    for record in result.dataset.records:
        assert Path(record.path).read_bytes() == data[record.uri.split(f"{BUCKET}/", 1)[1]]
        assert (record.width, record.height, record.format) == (32, 24, "png")
    # fetched once: a second run reads the cache and asks the server nothing
    again = validate_dataset(jsonl, MC, options=options)
    assert (again.report.fetch.fetched, again.report.fetch.cached) == (0, 30)


def test_missing_object_bucket_and_persistent_failure(s3_server, proxy, tmp_path):
    client = _client(*s3_server)
    _upload(client, "fail/ok.png", 1)
    _upload(client, "fail/flaky.png", 2)
    proxy.faults = {"fail/flaky.png": ["cut"] * 10}
    jsonl = _jsonl(tmp_path / "d.jsonl", [f"s3://{BUCKET}/fail/ok.png", f"s3://{BUCKET}/fail/ghost.png",
                                          "s3://no-such-bucket-here/a.png", f"s3://{BUCKET}/fail/flaky.png"])
    options = ValidationOptions(storage=_storage(proxy.port, attempts=3), cache_dir=str(tmp_path / "cache"))
    report = validate_dataset(jsonl, MC, options=options).report
    assert [(p.line, p.code) for p in report.problems] == [(2, P.IMAGE_MISSING), (3, P.IMAGE_MISSING),
                                                           (4, P.FETCH_FAILED)]
    texts = [str(p) for p in report.problems]
    assert texts[0] == (f"{jsonl}:2: image_url='s3://{BUCKET}/fail/ghost.png': image not found: "
                        "object not found (NoSuchKey)")
    assert texts[1] == (f"{jsonl}:3: image_url='s3://no-such-bucket-here/a.png': image not found: "
                        "bucket not found (NoSuchBucket)")
    assert texts[2].startswith(f"{jsonl}:4: image_url='s3://{BUCKET}/fail/flaky.png': cannot fetch: "
                               "connection broken while reading")
    assert texts[2].endswith("(gave up after 3 tries)")
    assert len([a for a in proxy.applied if a[0] == "fail/flaky.png"]) == 3
    assert not cache_path(tmp_path / "cache", f"s3://{BUCKET}/fail/flaky.png").exists()  # nothing half-written
    assert report.images == 1


def test_datastore_uris_mapped_onto_an_s3_store_root(s3_server, tmp_path):
    client = _client(*s3_server)
    _upload(client, "root/image_data/Image_01.png", 3)
    _upload(client, "root/blobs/x/Image_02.png", 4)
    jsonl = _jsonl(tmp_path / "d.jsonl", [
        "AmlDatastore://image_data/Image_01.png",
        "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/blobs/paths/x/Image_02.png"])
    options = ValidationOptions(storage=_storage(s3_server[1], store_root=f"s3://{BUCKET}/root"),
                                cache_dir=str(tmp_path / "cache"))
    ds = load_dataset(jsonl, MC, options=options)
    assert [r.uri for r in ds.records] == [f"s3://{BUCKET}/root/image_data/Image_01.png",
                                           f"s3://{BUCKET}/root/blobs/x/Image_02.png"]
    assert all(Path(r.path).is_file() for r in ds.records)


def test_ingested_remote_dataset_refetches_a_cleared_cache(s3_server, tmp_path):
    client = _client(*s3_server)
    for i in range(6):
        _upload(client, f"ingest/{i}.png", 10 + i)
    jsonl = _jsonl(tmp_path / "d.jsonl", [f"s3://{BUCKET}/ingest/{i}.png" for i in range(6)])
    options = ValidationOptions(storage=_storage(s3_server[1]))
    done = ingest(jsonl, MC, tmp_path / "ingested", options=options)
    cached = [Path(r.path) for r in done.dataset.records]
    assert all(p.is_file() and (tmp_path / "ingested" / "cache") in p.parents for p in cached)
    for p in cached:
        p.unlink()
    ds = load_dataset(tmp_path / "ingested", MC, options=ValidationOptions(storage=_storage(s3_server[1]),
                                                                          cache_dir=str(tmp_path / "cache2")))
    assert all(Path(r.path).is_file() and (tmp_path / "cache2") in Path(r.path).parents for r in ds.records)


@pytest.mark.slow
def test_cli_reads_credentials_from_the_environment_and_never_prints_them(s3_server, tmp_path):
    client = _client(*s3_server)
    for i in range(4):
        _upload(client, f"cli/{i}.png", 20 + i)
    jsonl = _jsonl(tmp_path / "d.jsonl", [f"s3://{BUCKET}/cli/{i}.png" for i in range(4)]
                   + [f"s3://{BUCKET}/cli/missing.png"])
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_server[1]}", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "automl_vision", "-v", "data", "validate", str(jsonl), "--task", MC.value,
           "--output-dir", str(tmp_path / "out")]
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "cli/missing.png': image not found: object not found (NoSuchKey)" in bad.stdout
    skip = subprocess.run(cmd + ["--on-invalid", "skip", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert skip.returncode == 0, skip.stderr
    report = json.loads(skip.stdout)
    assert report["images"] == 4 and report["skipped"] == {"images": 1, "objects": 0}
    assert report["manifest"] == str(tmp_path / "out" / "manifest.parquet")
    for text in (bad.stdout, bad.stderr, skip.stdout, skip.stderr):
        assert SECRET_KEY not in text and ACCESS_KEY not in text
