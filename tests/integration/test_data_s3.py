"""Remote images against a real S3 endpoint on 127.0.0.1 (moto's server), with a TCP proxy in front of it
that drops connections, cuts responses short or flips a byte: fetched once into the cache, in
parallel, retried on transient errors, checked, and credentials never shown. JSONL files that are
themselves objects (s3://bucket/key.jsonl) read by train, ingest, validate, split and evaluate, their
relative image_url values naming objects beside them."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from det_testdata import make_detection_dataset
from minio import Minio
from moto.server import ThreadedMotoServer
from PIL import Image

from automl_vision.cli import main
from automl_vision.data import problems as P
from automl_vision.data.classification import read_classification_jsonl
from automl_vision.data.load import load_dataset, split_jsonl
from automl_vision.data.manifest import ingest, read_manifest
from automl_vision.data.problems import InvalidDataError
from automl_vision.data.storage import StorageConfig, cache_path
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import DataError
from automl_vision.serving.batch import list_inputs
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION
BUCKET = "automl-test"
ACCESS_KEY = "AKIAUNITTESTKEY123"
SECRET_KEY = "s3cr3t-never-print-me-9f8e7d"


@pytest.fixture(scope="module")
def s3_server():
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


# --- JSONL files in object storage --------------------------------------------------------------

def _upload_folder(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.fput_object(BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}", str(path))


def _put_lines(client, key: str, rows: list) -> str:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    return f"s3://{BUCKET}/{key}"


def _s3_environment(monkeypatch, s3_server, home: Path) -> None:
    """What a trial pod gets from the cluster's storage Secret; HOME moved so the default cache is the test's."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3_server[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("HOME", str(home))


@pytest.mark.usefixtures("one_thread", "cli_logging")
def test_train_reads_an_s3_jsonl_whose_image_urls_are_relative(s3_server, tmp_path, monkeypatch, make_dataset,
                                                               capsys):
    """What a Katib trial pod runs with the job's training_data: the JSONL and its images exist only in
    the bucket, the images named relative to the JSONL's own prefix."""
    client = _client(*s3_server)
    local = make_dataset(tmp_path / "upload", n_per_class=4, size=24)
    _upload_folder(client, local.parent, "cls/set1")
    shutil.rmtree(local.parent)
    _s3_environment(monkeypatch, s3_server, tmp_path / "home")
    out = tmp_path / "trial"
    code = main(["train", "--task", MC.value, "--training_data", f"s3://{BUCKET}/cls/set1/train.jsonl",
                 "--model_name", "resnet18", "--pretrained", "0", "--number_of_epochs", "1",
                 "--train_crop_size", "24", "--valid_resize_size", "24", "--valid_crop_size", "24",
                 "--training_batch_size", "4", "--validation_batch_size", "4", "--device", "cpu",
                 "--num_workers", "0", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_completed"] == 1
    cache = tmp_path / "home" / ".cache" / "automl-vision" / "images"
    assert len(list((cache / "jsonl").glob("*.jsonl"))) == 1  # the JSONL, downloaded into the cache
    assert len(list(cache.rglob("*.png"))) == 8  # and every image it names, fetched beside it


def test_ingest_of_an_s3_detection_jsonl_matches_the_same_files_read_locally(s3_server, tmp_path):
    client = _client(*s3_server)
    root = tmp_path / "det"
    train = make_detection_dataset(root, n=4, size=(48, 40), name="train.jsonl")
    val = make_detection_dataset(root, n=2, size=(48, 40), seed=1, name="val.jsonl")
    _upload_folder(client, root, "det/v1")
    train_uri, val_uri = f"s3://{BUCKET}/det/v1/train.jsonl", f"s3://{BUCKET}/det/v1/val.jsonl"
    options = ValidationOptions(storage=_storage(s3_server[1]))
    remote = ingest(train_uri, OD, tmp_path / "from_s3", validation=val_uri, options=options)
    local = ingest(train, OD, tmp_path / "from_disk", validation=val, options=options)
    assert remote.report.files == [train_uri, val_uri]

    def content(r):
        return (r.image_url, r.width, r.height, r.format, r.file_size, r.labels, r.objects, r.split, r.line)

    from_s3 = read_manifest(tmp_path / "from_s3", OD).records
    from_disk = read_manifest(tmp_path / "from_disk", OD).records
    assert len(from_s3) == 6 and sum(len(r.objects) for r in from_s3) == 9
    assert [content(r) for r in from_s3] == [content(r) for r in from_disk]
    assert [r.split for r in from_s3] == ["train"] * 4 + ["validation"] * 2
    assert [r.source for r in from_s3] == [train_uri] * 4 + [val_uri] * 2
    assert from_s3[0].uri == f"s3://{BUCKET}/det/v1/images/img_0_000.png"
    assert from_s3[4].uri == f"s3://{BUCKET}/det/v1/images/img_1_000.png"
    for r in from_s3:
        assert (tmp_path / "from_s3" / "cache") in Path(r.path).parents
        assert Path(r.path).read_bytes() == (root / r.image_url).read_bytes()


def test_problems_in_an_s3_jsonl_are_reported_at_its_uri_and_line(s3_server, tmp_path):
    client = _client(*s3_server)
    for i, name in enumerate(("a", "b", "c")):
        _upload(client, f"bad/images/{name}.png", 30 + i)
    uri = _put_lines(client, "bad/train.jsonl", [
        {"image_url": "images/a.png", "label": "even"},
        {"image_url": "images/b.png", "label": "odd"},
        {"image_url": "images/c.png"},
        {"image_url": "../outside.png", "label": "odd"},
        {"image_url": "images/ghost.png", "label": "odd"},
        '{"image_url": "images/c.png", "label": ',
    ])
    options = ValidationOptions(storage=_storage(s3_server[1]), cache_dir=str(tmp_path / "cache"))
    report = validate_dataset(uri, MC, options=options).report
    assert [(p.line, p.code) for p in report.problems] == [
        (3, P.MISSING_FIELD), (4, P.PATH_ESCAPES_ROOT), (5, P.IMAGE_MISSING), (6, P.BAD_JSON)]
    texts = [str(p) for p in report.problems]
    assert texts[0].startswith(f"{uri}:3: label=null must be one non-empty class name")
    assert texts[1] == (f"{uri}:4: image_url='../outside.png' resolves to s3://{BUCKET}/outside.png, outside "
                        f"the data root s3://{BUCKET}/bad (relative paths may not leave it; pass a data root "
                        "that contains the images, or an absolute s3://bucket/key URI)")
    assert texts[2] == f"{uri}:5: image_url='images/ghost.png': image not found: object not found (NoSuchKey)"
    assert texts[3].startswith(f"{uri}:6: not valid JSON")
    with pytest.raises(InvalidDataError) as info:
        load_dataset(uri, MC, options=options)
    message = str(info.value)
    assert f"{uri}:3: " in message and f"{uri}:6: " in message
    assert str(tmp_path / "cache") not in message  # the local copy is never what a message names
    # the file fixed in the bucket: read again (its ETag changed), the stale copy gone
    _put_lines(client, "bad/train.jsonl", [{"image_url": "images/a.png", "label": "even"},
                                           {"image_url": "images/b.png", "label": "odd"}])
    assert len(load_dataset(uri, MC, options=options).records) == 2
    assert len(list((tmp_path / "cache" / "jsonl").iterdir())) == 1


@pytest.mark.usefixtures("cli_logging")
def test_a_missing_or_unreachable_s3_jsonl_is_one_clear_error(s3_server, tmp_path, monkeypatch, capsys):
    uri = f"s3://{BUCKET}/nowhere/train.jsonl"
    _client(*s3_server)
    _s3_environment(monkeypatch, s3_server, tmp_path / "home")
    code = main(["data", "validate", uri, "--task", MC.value])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"error: cannot read {uri}: object not found (NoSuchKey); check the bucket and key, and that "
            f"AWS_ENDPOINT_URL names the store that holds them (endpoint: http://127.0.0.1:{s3_server[1]}; "
            "credentials: set)") in err
    assert SECRET_KEY not in err and ACCESS_KEY not in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = StorageConfig(endpoint=f"http://127.0.0.1:{port}", attempts=2, backoff_s=0.01)
    with pytest.raises(DataError) as info:
        load_dataset(uri, MC, options=ValidationOptions(storage=nowhere, cache_dir=str(tmp_path / "cache")))
    assert str(info.value) == (
        f"cannot read {uri}: connection failed (NewConnectionError) (gave up after 2 tries); set AWS_ENDPOINT_URL "
        "(or AWS_ENDPOINT_URL_S3) to the URL of the S3-compatible store, e.g. http://minio.kubeflow:9000, and "
        f"check that it can be reached from here (endpoint: http://127.0.0.1:{port}; credentials: not set "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY))")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jsonl"))


@pytest.mark.usefixtures("cli_logging")
def test_split_and_evaluate_read_an_s3_jsonl(s3_server, tmp_path, monkeypatch, make_dataset, capsys):
    client = _client(*s3_server)
    local = make_dataset(tmp_path / "upload", n_per_class=3, size=16)
    _upload_folder(client, local.parent, "cls/set2")
    rows = [json.loads(x) for x in local.read_text().splitlines()]
    shutil.rmtree(local.parent)
    uri = f"s3://{BUCKET}/cls/set2/train.jsonl"
    storage = _storage(s3_server[1])
    files = split_jsonl(uri, MC, tmp_path / "split", ratio=0.34, options=ValidationOptions(
        storage=storage, check_files=False, check_images=False, cache_dir=str(tmp_path / "cache")))
    assert (files.train_images, files.validation_images) == (4, 2)
    written = [json.loads(x) for f in (files.train, files.validation) for x in f.read_text().splitlines()]
    assert sorted(r["image_url"] for r in written) == sorted(f"s3://{BUCKET}/cls/set2/{r['image_url']}" for r in rows)
    assert len(load_dataset(files.validation, MC, options=ValidationOptions(
        storage=storage, cache_dir=str(tmp_path / "cache"))).records) == 2

    # evaluate --data with the labelled JSONL in the bucket; predictions name images as the JSONL does
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"image_url": r["image_url"], "labels": ["green", "red"],
                                               "probs": [0.1, 0.9] if r["label"] == "red" else [0.8, 0.2]}) + "\n"
                                   for r in rows))
    _s3_environment(monkeypatch, s3_server, tmp_path / "home")
    data = read_classification_jsonl(uri, MC)
    assert data.source == uri and [s.line for s in data.samples] == list(range(1, 7))
    assert all(Path(s.image_path).is_file() for s in data.samples)
    code = main(["evaluate", "--task", MC.value, "--data", uri, "--predictions", str(predictions)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert json.loads(captured.out)["accuracy"] == 1.0


def test_model_inputs_of_an_s3_jsonl_and_of_s3_image_urls_are_fetched(s3_server, tmp_path, monkeypatch, make_dataset):
    """What the evaluate step and ``predict``/``evaluate --model`` read: a labelled JSONL in the bucket
    (relative image_url values), and the held-out split that ``split_jsonl`` writes for it (absolute
    s3:// image_url values) — each image fetched into the cache, image_url kept as written."""
    client = _client(*s3_server)
    local = make_dataset(tmp_path / "upload", n_per_class=2, size=16)
    _upload_folder(client, local.parent, "cls/inputs")
    rows = [json.loads(x) for x in local.read_text().splitlines()]
    originals = {r["image_url"]: (local.parent / r["image_url"]).read_bytes() for r in rows}
    shutil.rmtree(local.parent)
    _s3_environment(monkeypatch, s3_server, tmp_path / "home")

    items = list_inputs(f"s3://{BUCKET}/cls/inputs/train.jsonl")
    assert [i.image_url for i in items] == [r["image_url"] for r in rows]
    assert [Path(i.path).read_bytes() for i in items] == [originals[r["image_url"]] for r in rows]

    held_out = tmp_path / "validation.jsonl"
    held_out.write_text("".join(json.dumps({"image_url": f"s3://{BUCKET}/cls/inputs/{r['image_url']}",
                                            "label": r["label"]}) + "\n" for r in rows[:2]))
    items = list_inputs(held_out)
    assert [i.image_url for i in items] == [f"s3://{BUCKET}/cls/inputs/{r['image_url']}" for r in rows[:2]]
    assert [Path(i.path).read_bytes() for i in items] == [originals[r["image_url"]] for r in rows[:2]]

    held_out.write_text(json.dumps({"image_url": f"s3://{BUCKET}/cls/inputs/images/ghost.png", "label": "red"}) + "\n")
    with pytest.raises(DataError) as e:
        list_inputs(held_out)
    assert str(held_out) in str(e.value) and f"s3://{BUCKET}/cls/inputs/images/ghost.png" in str(e.value)
    assert "NoSuchKey" in str(e.value)
