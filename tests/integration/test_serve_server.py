"""A real `automl-vision serve` on 127.0.0.1 with a tiny packaged classification model: every request
form, the original response schema, bad input answered 400 while the server keeps serving, batching,
and explanations asked the way the original's published samples ask for them."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_testdata import (b64, explain_request, jpeg_bytes, make_package, original_request, png_bytes, png_size,
                            post_like_sample_client, running_server, sample_client_body)

from automl_vision.spec.tasks import ImageTask

pytestmark = pytest.mark.slow

LABELS = ["blue", "red"]
PIXEL_LIMIT = 10_000
BODY_LIMIT = 300_000
BODY_SECONDS = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    package = make_package(root, ImageTask.IMAGE_CLASSIFICATION, "resnet18", onnx=True)
    env = {"AUTOML_VISION_SETTINGS": json.dumps({"max_image_pixels": PIXEL_LIMIT, "max_batch_size": 8,
                                                 "max_batch_latency_ms": 20, "runtime": "onnx",
                                                 "max_request_bytes": BODY_LIMIT, "request_timeout_s": BODY_SECONDS})}
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


def _solid_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


BAD = [
    ("/v1/models/model:predict", "image/png", b"this is not an image", "request body: not an image"),
    ("/v1/models/model:predict", "image/png", _truncated(), "request body: the png image is truncated"),
    ("/v1/models/model:predict", "image/png", png_bytes(200, 100),
     f"200x100 = 20,000 pixels, over the limit of {PIXEL_LIMIT:,} (max_image_pixels)"),
    ("/v1/models/model:predict", "application/json", json.dumps({"image": "abc"}).encode(),
     "expected {\"input_data\": {\"columns\": [\"image\"], \"data\": [\"<base64 image>\", ...]}}"),
    ("/score", "application/json", json.dumps(original_request()).encode(), "empty batch"),
    ("/v1/models/model:predict", "application/json", b'{"input_data": ', "the body is not valid JSON"),
    ("/v1/models/model:predict", "application/json", b"[" * 100_000 + b"]" * 100_000,
     "the JSON body is nested too deeply (more than 1024 levels)"),
    ("/score", "application/json", b'{"input_data": {"columns": ["image"], "data": [' + b"[" * 5000 + b"]" * 5000
     + b"]}}", "the JSON body is nested too deeply (more than 1024 levels)"),
    ("/score", "image/png", _solid_png(400, 20),
     f"request body: 400x20 becomes 640x32 = 20,480 pixels when its shorter side is resized to 32 "
     f"(valid_resize_size), over the limit of {PIXEL_LIMIT:,} (max_image_pixels)"),
    ("/v1/models/model:predict", "application/json", sample_client_body(_solid_png(5000, 1)).encode(),
     "input_data.data[0]: 5000x1 has an aspect ratio of 5,000:1, over the limit of 20:1 (max_aspect_ratio)"),
    ("/v1/models/model:predict", "application/json",
     json.dumps({"input_data": {"columns": ["image"], "index": [0, 1], "data": [b64(png_bytes())]}}).encode(),
     "input_data.index must be a list with one entry per row of input_data.data (1), got 2 entries"),
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


def test_the_original_products_sample_clients_work_unchanged(server):
    """Bodies built as its published samples build them: base64.encodebytes (line breaks), an index."""
    images = [png_bytes(seed=20), jpeg_bytes(seed=21), png_bytes(60, 30, seed=22)]
    expected = predict(server, original_request(*images)).json()
    for path in ("/score", "/v1/models/model:predict"):
        one = post_like_sample_client(server.url, images[0], path=path)
        assert one.status_code == 200, one.text
        three = post_like_sample_client(server.url, *images, path=path)
        assert three.status_code == 200, three.text
        assert len(one.json()) == 1 and len(three.json()) == 3
        for got, want in zip(one.json() + three.json(), expected[:1] + expected):
            assert_classification_answer(got)
            assert np.allclose(got["probs"], want["probs"], atol=1e-5)


def test_raw_image_bytes_are_scored(server):
    """As the original's v1 clients send them (application/octet-stream), with no content type, or image/*."""
    image = png_bytes(seed=23)
    expected = predict(server, original_request(image)).json()[0]["probs"]
    for path in ("/v1/models/model:predict", "/score"):
        for headers in ({"Content-Type": "application/octet-stream"}, {}, {"Content-Type": "image/png"}):
            r = httpx.post(server.url + path, content=image, headers=headers, timeout=60)
            assert r.status_code == 200, (path, headers, r.text)
            (entry,) = r.json()
            assert_classification_answer(entry)
            assert np.allclose(entry["probs"], expected, atol=1e-5)


def test_a_body_over_the_size_limit_gets_a_413(server):
    big = b"x" * (BODY_LIMIT + 1)
    r = httpx.post(server.url + "/score", content=big, headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 413
    assert r.json()["error"] == (f"the request body has {BODY_LIMIT + 1:,} bytes, over the limit of {BODY_LIMIT:,} "
                                 "(max_request_bytes)")

    def chunks():  # no Content-Length: the limit holds as the body streams in
        for _ in range(4):
            yield b"x" * (BODY_LIMIT // 3)

    r = httpx.post(server.url + "/v2/models/model/infer", content=chunks(), timeout=60)
    assert r.status_code == 413 and "over the limit of" in r.json()["error"]
    assert predict(server, original_request(png_bytes())).status_code == 200


def test_a_client_sending_its_body_slowly_is_cut_off(server):
    port = int(server.url.rsplit(":", 1)[1])
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        answer = b""
        sock.settimeout(0.25)
        # One byte every quarter second, reading before each byte: a byte sent after the server has answered
        # and closed makes its kernel reset the connection, and a reset can drop the answer not yet read.
        while time.monotonic() - t0 < BODY_SECONDS + 5:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                chunk = None
            except ConnectionResetError:
                break
            if chunk == b"":
                break
            if chunk:
                answer += chunk
                continue
            try:
                sock.sendall(b"x")
            except OSError:
                break  # the server closed the connection
        elapsed = time.monotonic() - t0
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"the request body was not complete after 2 s" in answer
    assert BODY_SECONDS <= elapsed < BODY_SECONDS + 3
    assert predict(server, original_request(png_bytes())).status_code == 200


def test_a_refused_request_is_one_log_line(server):
    bad = [("/score", b"%%%"), ("/v1/models/model:predict", b'{"input_data": 1}'),
           ("/v2/models/model/infer", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                              "data": [1.0]}]}).encode())]
    for _ in range(2):  # repeated: a warning issued once would hide on the second round
        for path, body in bad:
            r = predict(server, content=body, headers={"Content-Type": "application/json"}, path=path)
            assert r.status_code == 400, r.text
        assert predict(server, original_request(png_bytes())).status_code == 200
    time.sleep(0.5)
    log = server.log.read_text()
    assert "Traceback" not in log and "Warning" not in log, log[-3000:]
    assert log.count("POST /score -> 400: the body is not valid JSON") >= 2
    assert log.count("POST /v1/models/model:predict -> 400: input_data must be an object") >= 2
    assert log.count("refused: InvalidInput: input 'x' has datatype FP32") >= 2


def test_a_multilabel_model_answers_the_sample_client(tmp_path):
    package = make_package(tmp_path, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, "mobilenetv2")
    images = [png_bytes(seed=30), jpeg_bytes(seed=31), png_bytes(30, 60, seed=32)]
    with running_server(package, tmp_path) as s:
        r = post_like_sample_client(s.url, *images)
        assert r.status_code == 200, r.text
        single = post_like_sample_client(s.url, images[1], path="/v1/models/model:predict")
        # Explanations: one per label at or above confidence_score_threshold_multilabel, most probable first.
        every = httpx.post(s.url + "/score", json=explain_request(images[0], xai_algorithm="guided_gradcam",
                                                                 attributions=True,
                                                                 confidence_score_threshold_multilabel=0.0),
                           timeout=120)
        none = httpx.post(s.url + "/score", json=explain_request(images[0], xai_algorithm="guided_gradcam",
                                                                confidence_score_threshold_multilabel=1.0),
                          timeout=120)
    assert every.status_code == 200, every.text
    (explained,) = every.json()
    assert len(explained["visualizations"]) == len(explained["attributions"]) == 2
    assert all(png_size(v)[0] >= 448 for v in explained["visualizations"])
    assert np.asarray(explained["attributions"]).shape == (2, 3, 32, 32)
    assert none.json()[0]["visualizations"] == [] and "attributions" not in none.json()[0]
    answer = r.json()
    assert len(answer) == 3
    for entry in answer:  # multi-label: one independent probability per label, not summing to 1
        assert set(entry) == {"probs", "labels"} and entry["labels"] == LABELS
        assert len(entry["probs"]) == 2 and all(0 <= p <= 1 for p in entry["probs"])
    assert np.allclose(single.json()[0]["probs"], answer[1]["probs"], atol=1e-5)


def test_attributions_alone_come_without_pictures(server):
    r = predict(server, explain_request(png_bytes(seed=44), xai_algorithm="guided_backprop", visualizations=False,
                                        attributions=True))
    assert r.status_code == 200, r.text
    (answer,) = r.json()
    assert set(answer) == {"probs", "labels", "attributions"}
    assert np.asarray(answer["attributions"]).shape == (3, 32, 32)


@pytest.mark.parametrize("method", ["xrai", "integrated_gradients", "guided_gradcam", "guided_backprop"])
def test_the_original_explanation_request_is_answered_in_its_shape(server, method):
    """The body of the original's explainability sample; the model is served by ONNX Runtime and explained
    by its PyTorch network. Answer: the usual probs and labels, plus one PNG (the 2 x 2 grid) and
    [3, crop, crop] attributions for the predicted class."""
    images = [png_bytes(seed=40), jpeg_bytes(seed=41)]
    plain = predict(server, original_request(*images)).json()
    steps = {"n_steps": 8} if method in ("xrai", "integrated_gradients") else {}
    r = predict(server, explain_request(*images, xai_algorithm=method, visualizations=True, attributions=True,
                                        **steps))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert len(answer) == 2
    for got, want in zip(answer, plain):
        assert set(got) == {"probs", "labels", "visualizations", "attributions"}
        assert got["labels"] == LABELS and np.allclose(got["probs"], want["probs"], atol=1e-5)
        w, h = png_size(got["visualizations"])
        assert w == h and w >= 2 * 224  # two panels a side, each enlarged to at least 224 pixels
        attributions = np.asarray(got["attributions"], dtype=np.float32)
        assert attributions.shape == (3, 32, 32) and np.isfinite(attributions).all()
        assert np.abs(attributions).sum() > 0


def test_explanations_default_to_xrai_pictures_and_mix_with_plain_rows(server):
    """model_explainability with no xai_parameters: XRAI, a picture and no attributions (the original's
    defaults); a row without the flag in the same request is answered as usual."""
    image = base64.encodebytes(png_bytes(seed=42)).decode()
    body = {"input_data": {"columns": ["image"], "data": [
        json.dumps({"image_base64": image, "model_explainability": True}),
        json.dumps({"image_base64": image, "model_explainability": False}),
        image]}}
    r = predict(server, body)
    assert r.status_code == 200, r.text
    first, second, third = r.json()
    assert set(first) == {"probs", "labels", "visualizations"}
    assert set(second) == set(third) == {"probs", "labels"}
    assert np.allclose(first["probs"], third["probs"], atol=1e-5)
    assert "explained one image with xrai" in server.log.read_text()


@pytest.mark.parametrize("xai_parameters, message", [
    ({"xai_algorithm": "lime"}, "xai_algorithm='lime' for a model of task image_classification; allowed: xrai, "),
    ({"xai_algorithm": "d_rise"}, "(d_rise explains detectors)"),
    ({"n_steps": 201}, "input_data.data[0].xai_parameters.n_steps=201: allowed from 2 to 200 (the server's limit"),
    ({"n_steps": 1}, "n_steps=1: allowed from 2 to 200"),
    ({"xai_algorithm": "guided_backprop", "n_steps": 10}, "n_steps: not a parameter of guided_backprop"),
    ({"approximation_method": "simpson", "xai_algorithm": "integrated_gradients"},
     "approximation_method='simpson'; allowed: riemann_middle, gausslegendre"),
    ({"visualizations": "yes"}, "visualizations='yes': expected true or false"),
    ({"visualizations": False}, "visualizations and attributions are both false"),
])
def test_explanation_parameters_out_of_bounds_get_a_400(server, xai_parameters, message):
    r = predict(server, explain_request(png_bytes(seed=43), **xai_parameters))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_more_explained_images_than_the_limit_get_a_400_before_any_work(server):
    r = predict(server, explain_request(*[png_bytes(seed=50 + i) for i in range(5)]))
    assert r.status_code == 400, r.text
    assert ("5 images ask for an explanation (model_explainability); this server explains at most 4 per request "
            "(explain_max_images)") in r.json()["error"]
    bad = {"input_data": {"columns": ["image"], "data": [
        json.dumps({"image_base64": b64(png_bytes()), "model_explainability": "true"})]}}
    r = predict(server, bad)
    assert r.status_code == 400 and "model_explainability='true'" not in r.text
    assert 'input_data.data[0].model_explainability="true": expected true or false' in r.json()["error"]
    typo = {"input_data": {"columns": ["image"], "data": [json.dumps({"image_base64": b64(png_bytes()),
                                                                      "model_explainabilty": True})]}}
    r = predict(server, typo)
    assert r.status_code == 400
    assert "unknown key(s) model_explainabilty; an explanation row has image_base64, model_explainability" in r.text
