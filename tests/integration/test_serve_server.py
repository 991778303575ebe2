"""A real `automl-vision serve` on 127.0.0.1 with a tiny packaged classification model: every request
form, the original response schema, bad input answered 400 while the server keeps serving, batching."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_testdata import b64, jpeg_bytes, make_package, original_request, png_bytes, running_server

from automl_vision.spec.tasks import ImageTask

pytestmark = pytest.mark.slow

LABELS = ["blue", "red"]
PIXEL_LIMIT = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    package = make_package(root, ImageTask.IMAGE_CLASSIFICATION, "resnet18", onnx=True)
    env = {"AUTOML_VISION_SETTINGS": json.dumps({"max_image_pixels": PIXEL_LIMIT, "max_batch_size": 8,
                                                 "max_batch_latency_ms": 20, "runtime": "onnx"})}
    with running_server(package, root, env=env) as s:
        yield s
        assert s.alive(), s.log.read_text()[-2000:]


def predict(server, body=None, *, content=None, headers=None, path="/v1/models/model:predict"):
    if content is not None:
        return httpx.post(server.url + path, content=content, headers=headers or {}, timeout=60)
    return httpx.post(server.url + path, json=body, timeout=60)


def assert_classification_answer(entry):
    assert set(entry) == {"probs", "labels"}
    assert entry["labels"] == LABELS
    assert len(entry["probs"]) == 2 and abs(sum(entry["probs"]) - 1) < 1e-5


def test_original_request_gets_one_answer_per_image(server):
    images = [png_bytes(seed=1), jpeg_bytes(seed=2), png_bytes(60, 30, seed=3)]
    r = predict(server, original_request(*images))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(answer, list) and len(answer) == 3
    for entry in answer:
        assert_classification_answer(entry)


def test_score_path_raw_bytes_and_instances_answer_alike(server):
    image = png_bytes(seed=4)
    v1 = predict(server, original_request(image)).json()[0]
    score = predict(server, original_request(image), path="/score").json()[0]
    raw = predict(server, content=image, headers={"Content-Type": "image/png"}).json()
    instances = predict(server, {"instances": [{"image": {"b64": b64(image)}}]}).json()
    charset = predict(server, content=json.dumps(original_request(image)).encode(),
                      headers={"Content-Type": "application/json; charset=utf-8"}).json()[0]
    assert len(raw) == 1 and set(instances) == {"predictions"}
    for other in (score, raw[0], instances["predictions"][0], charset):
        assert other["labels"] == v1["labels"]
        assert np.allclose(other["probs"], v1["probs"], atol=1e-5)


def test_open_inference_protocol_v2(server):
    image = png_bytes(seed=5)
    meta = httpx.get(server.url + "/v2/models/model", timeout=10).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"] for o in meta["outputs"]} == {"predictions", "probs", "labels"}
    body = {"id": "req-1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                       "data": [b64(image), b64(image)]}]}
    r = httpx.post(server.url + "/v2/models/model/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "req-1"
    assert out["probs"]["shape"] == [2, 2] and out["labels"]["data"] == LABELS
    first = json.loads(out["predictions"]["data"][0])
    assert_classification_answer(first)
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    body = {"inputs": [{"name": "image", "shape": [1, *pixels.shape], "datatype": "UINT8",
                        "data": pixels.reshape(-1).tolist()}], "outputs": [{"name": "probs"}]}
    r = httpx.post(server.url + "/v2/models/model/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["probs"]
    assert np.allclose(r.json()["outputs"][0]["data"], first["probs"], atol=1e-5)


def _truncated() -> bytes:
    return png_bytes(seed=6)[:150]


BAD = [
    ("/v1/models/model:predict", "image/png", b"this is not an image", "request body: not an image"),
    ("/v1/models/model:predict", "image/png", _truncated(), "request body: the png image is truncated"),
    ("/v1/models/model:predict", "image/png", png_bytes(200, 100),
     f"200x100 = 20,000 pixels, over the limit of {PIXEL_LIMIT:,} (max_image_pixels)"),
    ("/v1/models/model:predict", "application/json", json.dumps({"image": "abc"}).encode(),
     "expected {\"input_data\": {\"columns\": [\"image\"], \"data\": [\"<base64 image>\", ...]}}"),
    ("/score", "application/json", json.dumps(original_request()).encode(), "empty batch"),
    ("/v1/models/model:predict", "application/json", b'{"input_data": ', "Unrecognized request format"),
    ("/v1/models/model:predict", "application/json",
     json.dumps({"input_data": {"columns": ["image"], "data": [b64(png_bytes()), "%%%"]}}).encode(),
     "input_data.data[1]: not valid base64"),
    ("/v1/models/model:predict", "application/json",
     json.dumps({"input_data": {"columns": ["image"], "data": [b64(b"GIF89a-not-really")]}}).encode(),
     "input_data.data[0]: not an image"),
    ("/v2/models/model/infer", "application/json",
     json.dumps({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}).encode(),
     "empty batch"),
    ("/v2/models/model/infer", "application/json",
     json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(),
     "input 'x' has datatype FP32; send one input of datatype BYTES"),
]


@pytest.mark.parametrize("path, ctype, body, message", BAD, ids=[m[:30] for *_, m in BAD])
def test_bad_input_gets_a_400_and_the_server_keeps_serving(server, path, ctype, body, message):
    r = predict(server, content=body, headers={"Content-Type": ctype}, path=path)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.json()
    ok = predict(server, original_request(png_bytes(seed=7)))
    assert ok.status_code == 200 and server.alive()


def test_concurrent_requests_are_answered_like_single_ones(server):
    images = [png_bytes(seed=10 + i, colour=(40, 60, 220) if i % 2 else (220, 40, 40)) for i in range(6)]
    single = [predict(server, original_request(im)).json()[0]["probs"] for im in images]

    def call(i):
        r = predict(server, original_request(images[i % 6], images[(i + 1) % 6]))
        return i, r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(32)))
    for i, status, answer in results:
        assert status == 200
        assert np.allclose(answer[0]["probs"], single[i % 6], atol=1e-5)
        assert np.allclose(answer[1]["probs"], single[(i + 1) % 6], atol=1e-5)
