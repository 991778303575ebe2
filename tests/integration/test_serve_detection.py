"""Serving detection and instance segmentation models: real servers for Faster R-CNN and Mask R-CNN,
yolov5 through batch scoring, the original response schema (polygons included), inference
settings changing the answer (score threshold, tiling)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_testdata import (explain_request, make_package, original_request, png_bytes, png_size,
                            post_like_sample_client, running_server)

from automl_vision.serving.engine import load_engine
from automl_vision.serving.package import load_package
from automl_vision.spec.tasks import ImageTask

pytestmark = pytest.mark.slow

OD, IS = ImageTask.IMAGE_OBJECT_DETECTION, ImageTask.IMAGE_INSTANCE_SEGMENTATION
LABELS = {"blue", "red"}


def assert_detection_answer(entry, *, polygons: bool):
    assert set(entry) == {"boxes"} and isinstance(entry["boxes"], list)
    for det in entry["boxes"]:
        assert set(det) == ({"box", "label", "score", "polygon"} if polygons else {"box", "label", "score"})
        b = det["box"]
        assert set(b) == {"topX", "topY", "bottomX", "bottomY"}
        assert 0 <= b["topX"] <= b["bottomX"] <= 1 and 0 <= b["topY"] <= b["bottomY"] <= 1
        assert det["label"] in LABELS and 0 <= det["score"] <= 1
        if polygons:
            for ring in det["polygon"]:
                assert len(ring) % 2 == 0 and len(ring) >= 6 and all(0 <= v <= 1 for v in ring)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def detection_package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("od"), OD, "fasterrcnn_resnet18_fpn")


def test_detection_server_answers_boxes_and_a_higher_threshold_returns_fewer(detection_package, tmp_path):
    images = [png_bytes(96, 80, seed=1), png_bytes(64, 64, seed=2)]
    env = {"AUTOML_VISION_SETTINGS": json.dumps({"box_score_thresh": 0.0})}
    with running_server(detection_package, tmp_path, env=env) as server:
        r = httpx.post(server.url + "/v1/models/model:predict", json=original_request(*images), timeout=120)
        assert r.status_code == 200, r.text
        low = r.json()
        # The original product's sample client: encodebytes base64, index [0, 1, 2].
        sample = post_like_sample_client(server.url, *images, images[0])
        assert sample.status_code == 200, sample.text
        bad = httpx.post(server.url + "/score", content=b"GIF", headers={"Content-Type": "image/gif"}, timeout=60)
        assert bad.status_code == 400 and "not an image" in bad.json()["error"]
        # D-RISE, beyond the original (which explains no detector): its two highest-scoring boxes.
        explained = httpx.post(server.url + "/score", json=explain_request(images[0], num_masks=16, max_boxes=2,
                                                                          attributions=True), timeout=300)
        wrong = httpx.post(server.url + "/score", json=explain_request(images[0], xai_algorithm="xrai"), timeout=60)
        assert server.alive()
    assert explained.status_code == 200, explained.text
    (answer,) = explained.json()
    assert [b["box"] for b in answer["boxes"]] == [b["box"] for b in low[0]["boxes"]]
    ranked = sorted(range(len(answer["boxes"])), key=lambda i: -answer["boxes"][i]["score"])
    for rank, i in enumerate(ranked):
        box = answer["boxes"][i]
        if rank < 2:
            assert png_size(box["visualizations"]) == (2 * 96 * 3, 80 * 3)  # two panels, enlarged 3x to >= 224
            heat = np.asarray(box["attributions"], dtype=np.float32)
            assert heat.shape == (80, 96) and np.isfinite(heat).all()
        else:
            assert set(box) == {"box", "label", "score"}
    assert wrong.status_code == 400
    assert "xai_algorithm='xrai' for a model of task image_object_detection (xrai explains classifiers)" in wrong.text
    assert len(low) == 2
    for entry in low:
        assert_detection_answer(entry, polygons=False)
    assert len(sample.json()) == 3 and sample.json()[:2] == low and sample.json()[2] == low[0]
    assert all(len(e["boxes"]) > 0 for e in low)
    # The same model with a higher threshold from a settings file, through batch scoring.
    (tmp_path / "imgs").mkdir()
    for i, data in enumerate(images):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(data)
    threshold = min(d["score"] for e in low for d in e["boxes"]) + 1e-3
    (tmp_path / "high.json").write_text(json.dumps({"box_score_thresh": threshold}))
    p = cli("predict", str(tmp_path / "imgs"), "--model", str(detection_package), "--out", str(tmp_path / "p.jsonl"),
            "--settings", str(tmp_path / "high.json"))
    assert p.returncode == 0, p.stderr
    high = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [h["image_url"] for h in high] == ["imgs/0.png", "imgs/1.png"]
    assert sum(len(h["boxes"]) for h in high) < sum(len(e["boxes"]) for e in low)
    assert all(d["score"] >= threshold for h in high for d in h["boxes"])


def test_tiling_is_applied_at_inference_when_configured(detection_package):
    package = load_package(detection_package)
    image = Image.new("RGB", (128, 64), (90, 90, 90))
    answers = {}
    for grid in (None, "2x1"):
        engine = load_engine(package, package.settings(("test", {"tile_grid_size": grid, "box_score_thresh": 0.0})))
        answers[grid] = engine.infer([engine.preparer(image)])[0]
        assert_detection_answer(answers[grid], polygons=False)
    assert answers[None] != answers["2x1"]  # boxes found in the tiles join the whole image's


def test_segmentation_server_answers_polygons(tmp_path):
    package = make_package(tmp_path, IS, "maskrcnn_resnet18_fpn")
    env = {"AUTOML_VISION_SETTINGS": json.dumps({"box_score_thresh": 0.0, "max_number_of_polygon_points": 12})}
    with running_server(package, tmp_path, env=env) as server:
        r = httpx.post(server.url + "/v1/models/model:predict", json=original_request(png_bytes(80, 64)),
                       timeout=120)
        assert r.status_code == 200, r.text
        sample = post_like_sample_client(server.url, png_bytes(80, 64), png_bytes(64, 48, seed=3), png_bytes(80, 64))
        assert sample.status_code == 200, sample.text
        explained = httpx.post(server.url + "/score", json=explain_request(png_bytes(80, 64), num_masks=4,
                                                                          max_boxes=1), timeout=300)
    assert explained.status_code == 200, explained.text
    boxes = explained.json()[0]["boxes"]
    assert sum("visualizations" in b for b in boxes) == 1 and all("attributions" not in b for b in boxes)
    assert all("polygon" in b for b in boxes)
    (entry,) = r.json()
    assert len(sample.json()) == 3 and sample.json()[0] == entry and sample.json()[2] == entry
    for other in sample.json():
        assert_detection_answer(other, polygons=True)
    assert_detection_answer(entry, polygons=True)
    assert entry["boxes"] and any(det["polygon"] for det in entry["boxes"])
    assert all(sum(len(ring) for ring in det["polygon"]) // 2 <= 12 for det in entry["boxes"])


def test_yolov5_package_scores_a_folder(tmp_path):
    package = make_package(tmp_path, OD, "yolov5")
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes(70, 50, seed=i))
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"box_score_thresh": 0.0, "img_size": 64}))
    # with D-RISE on each image's top box: explained through the same yolov5 engine, masked images and all
    p = cli("predict", str(tmp_path / "imgs"), "--model", str(package), "--out", str(tmp_path / "p.jsonl"),
            "--settings", str(settings), "--explain", "d_rise", "--xai-parameters", '{"num_masks": 8, "max_boxes": 1}')
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert_detection_answer({"boxes": row["boxes"]}, polygons=False)
        (e,) = row["explanations"]
        top = max(range(len(row["boxes"])), key=lambda i: row["boxes"][i]["score"])
        assert e["box_index"] == top and e["label"] == row["boxes"][top]["label"]
        assert np.load(tmp_path / e["attributions"]).shape == (50, 70)  # the image's own size
        assert (tmp_path / e["visualization"]).is_file()


def test_an_image_gets_the_same_boxes_whatever_shares_its_batch(detection_package):
    package = load_package(detection_package)
    engine = load_engine(package, package.settings(("test", {"box_score_thresh": 0.0})))
    small, large = Image.new("RGB", (64, 48), (200, 40, 40)), Image.new("RGB", (96, 80), (40, 40, 200))
    alone = engine.infer([engine.preparer(small)])[0]["boxes"]
    together = engine.infer([engine.preparer(large), engine.preparer(small), engine.preparer(small)])
    for other in (together[1]["boxes"], together[2]["boxes"]):  # equal but for float rounding
        assert [d["label"] for d in other] == [d["label"] for d in alone]
        assert np.allclose([[*d["box"].values(), d["score"]] for d in other],
                           [[*d["box"].values(), d["score"]] for d in alone], atol=1e-5)
