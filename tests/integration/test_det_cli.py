"""Detection and segmentation trials from the CLI on tiny data and on real BCCD images; the trained
package served by the predictor functions; ``evaluate`` scoring prediction files."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from det_testdata import bccd_jsonl, make_detection_dataset

from automl_vision.training.reporter import KATIB_METRIC_RE

pytestmark = pytest.mark.slow

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
TORCHVISION_SMALL = ["--pretrained", "0", "--min_size", "64", "--max_size", "96", "--number_of_epochs", "1",
                     "--box_score_thresh", "0.01"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # One thread per process: the test machine has two small cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900, env=env)


def check_trial(p: subprocess.CompletedProcess, out: Path, extra_metrics: set[str]) -> list[dict]:
    assert p.returncode == 0, p.stderr[-3000:]
    # Katib reads stdout and stderr: only the reporter's timestamped lines may hold name=value
    # (ultralytics' own argument dump "epochs=1, batch=4" must not get through).
    metric_lines = [ln for ln in (p.stdout + p.stderr).splitlines() if KATIB_METRIC_RE.search(ln)]
    assert metric_lines and all(TIMESTAMP.match(ln) for ln in metric_lines), metric_lines
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(metric_lines)
    for row in rows:
        assert {"epoch", "mean_average_precision", "precision", "recall", "train_loss"} | extra_metrics <= set(row)
        assert all(isinstance(v, str) for v in row.values())
        assert math.isfinite(float(row["train_loss"]))
        assert all(re.fullmatch(r"[\w|-]+", k) for k in row)
    per_label = [json.loads(x) for x in (out / "per_label_metrics.jsonl").read_text().splitlines()]
    assert len(per_label) == len(rows) and set(per_label[0]["per_label"]) == {"blue", "red"}
    for name in ("model.safetensors", "labels.json", "config.json", "metrics.json"):
        assert (out / "outputs" / name).is_file(), name
    metrics = json.loads((out / "outputs" / "metrics.json").read_text())
    assert "per_label" in metrics and "mean_average_precision" in metrics
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed"
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return {"train": make_detection_dataset(root / "train", n=6, seed=0),
            "train3": make_detection_dataset(root / "train3", n=3, seed=4),
            "val": make_detection_dataset(root / "val", n=3, seed=1),
            "seg_train": make_detection_dataset(root / "seg_train", n=6, seed=2, segmentation=True, strings=True),
            "seg_val": make_detection_dataset(root / "seg_val", n=3, seed=3, segmentation=True)}


def _images(jsonl: Path):
    from PIL import Image

    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    return rows, [Image.open(jsonl.parent / r["image_url"]).convert("RGB") for r in rows]


def _write_predictions(path: Path, rows, responses) -> Path:
    path.write_text("".join(json.dumps({"image_url": r["image_url"], **resp}) + "\n"
                            for r, resp in zip(rows, responses)))
    return path


def _packaged_with_onnx(outputs: Path, dest: Path, validation: Path) -> Path:
    """The trial packaged as a run packages it: the ONNX export gated on the validation data."""
    from automl_vision.serving.export import package_model

    result = package_model(outputs, dest, validation_data=validation)
    gate = result.onnx.gate or {}
    assert result.onnx.file == "model.onnx" and (dest / "model.onnx").is_file(), result.onnx.reason
    assert gate["passed"] and gate["data"] == str(validation) and gate["images"] == 3, gate
    assert gate["onnx"] == pytest.approx(gate["pytorch"], abs=0.005)
    return dest


def _answers(package_dir: Path, images, runtime: str, **settings) -> tuple[str, list[dict]]:
    from automl_vision.serving.engine import load_engine
    from automl_vision.serving.package import load_package

    package = load_package(package_dir)
    engine = load_engine(package, package.settings(("test", {"runtime": runtime, **settings})))
    return engine.runtime, engine.infer([engine.preparer(im) for im in images])


def _same_answers(ours: list[dict], theirs: list[dict], above: float = 0.0) -> int:
    """Both runtimes' answers agree box for box (sorted by score) above the score ``above`` (clear of
    scores so low that they tie): labels, coordinates within 1e-3 of the image, scores within 1e-3,
    masks (from the polygons) overlapping by 90%; returns the box count."""
    count = 0
    for a, b in zip(ours, theirs, strict=True):
        a, b = ([d for d in x["boxes"] if d["score"] > above] for x in (a, b))
        assert len(a) == len(b)
        for x, y in zip(sorted(a, key=lambda d: -d["score"]), sorted(b, key=lambda d: -d["score"])):
            assert x["label"] == y["label"] and x["score"] == pytest.approx(y["score"], abs=1e-3)
            assert [x["box"][k] for k in sorted(x["box"])] == pytest.approx([y["box"][k] for k in sorted(y["box"])],
                                                                           abs=1e-3)
            if "polygon" in x:
                from automl_vision.models.masks import polygon_to_mask

                mx, my = polygon_to_mask(x["polygon"], 96, 80), polygon_to_mask(y["polygon"], 96, 80)
                assert (mx & my).sum() >= 0.9 * (mx | my).sum()
            count += 1
    return count


def test_fasterrcnn_with_tiling_trains_serves_and_evaluates(tiny, tmp_path, monkeypatch):
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_object_detection", "--training_data", str(tiny["train3"]),
            "--validation_data", str(tiny["val"]), "--model_name", "fasterrcnn_resnet18_fpn", *TORCHVISION_SMALL,
            "--validation_metric_type", "coco_voc", "--tile_grid_size", "2x1", "--output-dir", str(out))
    rows = check_trial(p, out, {"coco_map", "coco_map_50", "coco_mar_100"})
    config = json.loads((out / "outputs" / "config.json").read_text())
    assert config["model_settings"]["tile_grid_size"] == "2x1" and config["model_settings"]["min_size"] == 64

    from automl_vision.models.detection import load_detector, predict_images

    package = load_detector(out / "outputs")
    assert package.classes == ["blue", "red"]
    val_rows, images = _images(tiny["val"])
    responses = predict_images(package.model, images, package.settings, package.classes)
    assert len(responses) == 3
    for resp in responses:
        for det in resp["boxes"]:
            assert det["label"] in ("blue", "red") and 0 <= det["score"] <= 1
            assert 0 <= det["box"]["topX"] <= det["box"]["bottomX"] <= 1
    # Scoring the package's own predictions gives the trial's figure (same model, same settings).
    preds = _write_predictions(tmp_path / "pred.jsonl", val_rows, responses)
    e = cli("evaluate", "--task", "image_object_detection", "--data", str(tiny["val"]), "--predictions", str(preds),
            "--output", str(tmp_path / "scores.json"))
    assert e.returncode == 0, e.stderr
    scores = json.loads(e.stdout)
    assert scores == json.loads((tmp_path / "scores.json").read_text())
    assert scores["mean_average_precision"] == pytest.approx(float(rows[-1]["mean_average_precision"]), abs=1e-5)
    assert scores["coco_map"] == pytest.approx(float(rows[-1]["coco_map"]), abs=1e-4)

    # The ONNX export: gated on the validation data, served by default on the CPU, tiles and all.
    packaged = _packaged_with_onnx(out / "outputs", tmp_path / "package", tiny["val"])
    runtime, onnx_answers = _answers(packaged, images, "auto")
    assert runtime == "onnx"
    pytorch_answers = _answers(packaged, images, "pytorch")[1]
    assert _same_answers(onnx_answers, pytorch_answers) > 0
    # OpenVINO runs the same file (an option, never chosen by auto)
    runtime, openvino_answers = _answers(packaged, images, "openvino")
    assert runtime == "openvino" and _same_answers(openvino_answers, pytorch_answers, above=0.02) > 0
    # Resizing and a stricter score threshold are applied outside the graph; NMS is fixed in it.
    changed = {"box_score_thresh": 0.3, "box_detections_per_img": 5, "min_size": 80}
    runtime, answers = _answers(packaged, images, "auto", **changed)
    assert runtime == "onnx" and _same_answers(answers, _answers(packaged, images, "pytorch", **changed)[1]) >= 0
    assert _answers(packaged, images[:1], "auto", box_nms_thresh=0.3)[0] == "pytorch"
    from automl_vision.errors import ConfigError

    with pytest.raises(ConfigError, match=r"box_nms_thresh=0.3 \(exported with 0.5\)"):
        _answers(packaged, images[:1], "onnx", box_nms_thresh=0.3)

    # An export that does not score like the trained model is caught: the same network with other weights.
    import torch

    from automl_vision.models.onnx_detectors import export_torchvision_detector
    from automl_vision.serving.export import gate_export
    from automl_vision.serving.package import load_package

    other = load_detector(out / "outputs")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.model.roi_heads.box_predictor.parameters():
            p.normal_(0, 0.5)
    wrong = tmp_path / "wrong.onnx"
    description = export_torchvision_detector(other.model, wrong, other.settings.to_json(), with_masks=False)
    gate = gate_export(load_package(packaged), wrong, description, tiny["val"])
    assert not gate.passed and "ONNX Runtime's answers differ from PyTorch's on" in gate.reason, gate.reason

    # Packaging with such an export keeps PyTorch only and says why, in package.json and the README.
    import automl_vision.serving.export as export_module
    from automl_vision.serving.package import OnnxExport

    def other_weights(package, settings, path):
        return OnnxExport("model.onnx", description=export_torchvision_detector(
            other.model, path, other.settings.to_json(), with_masks=False))

    with monkeypatch.context() as m:
        m.setattr(export_module, "_export", other_weights)
        refused = export_module.package_model(out / "outputs", tmp_path / "refused", validation_data=tiny["val"])
    entry = json.loads((tmp_path / "refused" / "package.json").read_text())["onnx"]
    assert refused.onnx.file is None and entry["file"] is None and not (tmp_path / "refused" / "model.onnx").exists()
    assert entry["reason"].startswith("the export failed its check: ONNX Runtime's answers differ") and \
        entry["gate"]["passed"] is False and entry["gate"]["failed_images"]
    assert entry["reason"] in (tmp_path / "refused" / "README.md").read_text()
    assert not list((tmp_path / "refused").glob("*.tmp"))
    assert _answers(tmp_path / "refused", images[:1], "auto")[0] == "pytorch"

    # An exporter that cannot write the graph: the package names the model and the error.
    def exporter_fails(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'torchvision::nms' to ONNX opset version 17 is not supported")

    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", exporter_fails)
        failed = export_module.package_model(out / "outputs", tmp_path / "unexported", validation_data=tiny["val"])
    assert failed.onnx.file is None and failed.onnx.reason == (
        "torch.onnx.export failed for fasterrcnn_resnet18_fpn: RuntimeError: Exporting the operator "
        "'torchvision::nms' to ONNX opset version 17 is not supported; served with PyTorch")
    assert not (tmp_path / "unexported" / "model.onnx").exists()


def test_maskrcnn_trains_and_serves_polygons(tiny, tmp_path):
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_instance_segmentation", "--training_data", str(tiny["seg_train"]),
            "--validation_data", str(tiny["seg_val"]), "--model_name", "maskrcnn_resnet18_fpn", *TORCHVISION_SMALL,
            "--validation_metric_type", "coco_voc", "--output-dir", str(out))
    check_trial(p, out, {"box_mean_average_precision", "coco_mask_map", "coco_map"})
    from automl_vision.models.detection import load_detector, predict_images
    from automl_vision.spec.tasks import ImageTask

    package = load_detector(out / "outputs")
    assert package.task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    _, images = _images(tiny["seg_val"])
    responses = predict_images(package.model, images, package.settings, package.classes, task=package.task)
    dets = [d for r in responses for d in r["boxes"]]
    assert dets, "a score threshold of 0.01 leaves some detections"
    assert all("polygon" in d and all(len(ring) % 2 == 0 for ring in d["polygon"]) for d in dets)
    assert all(sum(len(ring) for ring in d["polygon"]) // 2 <= 100 for d in dets)

    packaged = _packaged_with_onnx(out / "outputs", tmp_path / "package", tiny["seg_val"])
    runtime, onnx_answers = _answers(packaged, images, "auto")
    assert runtime == "onnx" and _same_answers(onnx_answers, _answers(packaged, images, "pytorch")[1]) > 0


def test_retinanet_trains(tiny, tmp_path):
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_object_detection", "--training_data", str(tiny["train"]),
            "--validation_data", str(tiny["val"]), "--model_name", "retinanet_resnet50_fpn", *TORCHVISION_SMALL,
            "--optimizer", "adamw", "--learning_rate", "0.0001", "--layers_to_freeze", "2", "--output-dir", str(out))
    check_trial(p, out, set())
    _packaged_with_onnx(out / "outputs", tmp_path / "package", tiny["val"])


def test_yolov5_trains_through_ultralytics_and_reports_through_ours(tiny, tmp_path):
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_object_detection", "--training_data", str(tiny["train"]),
            "--validation_data", str(tiny["val"]), "--model_name", "yolov5", "--model_size", "small",
            "--pretrained", "0", "--img_size", "64", "--number_of_epochs", "2", "--training_batch_size", "3",
            "--validation_batch_size", "3", "--validation_metric_type", "coco_voc", "--output-dir", str(out))
    rows = check_trial(p, out, {"coco_map"})
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # ultralytics wrote only inside the trial folder, and no pickled checkpoint
    assert (out / "ultralytics_config" / "Ultralytics" / "settings.json").is_file()
    assert not list(out.rglob("*.pt"))
    config = json.loads((out / "outputs" / "config.json").read_text())
    assert config["model_settings"] == {"img_size": 64, "model_size": "small", "box_score_thresh": 0.1,
                                        "box_iou_thresh": 0.5, "max_detections": 300}

    from automl_vision.models.yolo import load_yolo, predict_images

    package = load_yolo(out / "outputs", overrides={"box_score_thresh": 0.0})
    _, images = _images(tiny["val"])
    responses = predict_images(package.model, images, package.settings, package.classes)
    assert len(responses) == 3 and all(d["label"] in ("blue", "red") for r in responses for d in r["boxes"])

    # The ONNX export takes any batch: three images at once answer as each alone, and as PyTorch does.
    packaged = _packaged_with_onnx(out / "outputs", tmp_path / "package", tiny["val"])
    runtime, together = _answers(packaged, images, "auto", box_score_thresh=0.0)
    assert runtime == "onnx"
    alone = [_answers(packaged, [im], "onnx", box_score_thresh=0.0)[1][0] for im in images]
    pytorch = _answers(packaged, images, "pytorch", box_score_thresh=0.0)[1]
    assert _same_answers(together, alone, above=0.002) == _same_answers(together, pytorch, above=0.002) > 0
    openvino = _answers(packaged, images, "openvino", box_score_thresh=0.0)[1]
    assert _same_answers(openvino, pytorch, above=0.002) > 0


def test_bccd_short_run_gives_finite_loss_and_a_metric(tmp_path):
    train = bccd_jsonl(tmp_path, "train", limit=6)
    val = bccd_jsonl(tmp_path, "val", limit=3)
    out = tmp_path / "trial"
    p = cli("train", "--task", "image_object_detection", "--training_data", str(train), "--validation_data",
            str(val), "--model_name", "fasterrcnn_resnet18_fpn", "--pretrained", "0", "--min_size", "160",
            "--max_size", "214", "--number_of_epochs", "1", "--box_score_thresh", "0.01", "--output-dir", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(float(row["train_loss"])) and 0 <= float(row["mean_average_precision"]) <= 1
    assert json.loads((out / "outputs" / "labels.json").read_text()) == ["Platelets", "RBC", "WBC"]


# --- evaluate --------------------------------------------------------------------------------------

def _perfect(jsonl: Path, segmentation: bool) -> list[dict]:
    out = []
    for row in (json.loads(x) for x in jsonl.read_text().splitlines()):
        boxes = []
        for o in row["label"]:
            det = {"box": {k: float(o[k]) for k in ("topX", "topY", "bottomX", "bottomY")}, "label": o["label"],
                   "score": 0.9}
            if segmentation:
                det["polygon"] = o["polygon"]
            boxes.append(det)
        out.append({"image_url": row["image_url"], "boxes": boxes})
    return out


@pytest.mark.parametrize("task, key", [("image_object_detection", "train"), ("image_instance_segmentation", "seg_train")])
def test_evaluate_perfect_predictions_score_one(tiny, tmp_path, task, key):
    data = tiny[key]
    preds = tmp_path / "pred.jsonl"
    preds.write_text("".join(json.dumps(x) + "\n" for x in _perfect(data, "seg" in key)))
    p = cli("evaluate", "--task", task, "--data", str(data), "--predictions", str(preds))
    assert p.returncode == 0, p.stderr
    scores = json.loads(p.stdout)
    assert scores["mean_average_precision"] == 1.0 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert scores["coco_map_50"] == pytest.approx(1.0)
    if "seg" in key:
        assert scores["coco_mask_map_50"] == pytest.approx(1.0) and scores["box_mean_average_precision"] == 1.0
    assert set(scores["per_label"]) == {"blue", "red"}


def test_evaluate_hand_made_case(tmp_path):
    # one image, two cells; a duplicate and a miss -> VOC AP (1 + 2/3) / 2 as in the unit tests
    from PIL import Image

    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    cell = lambda x1, y1, x2, y2: {"label": "cell", "topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2}  # noqa: E731
    (tmp_path / "gt.jsonl").write_text(json.dumps({"image_url": "a.png", "label": [cell(0, 0, .1, .1),
                                                                                     cell(.2, .2, .3, .3)]}) + "\n")
    det = lambda box, s: {"box": dict(zip(("topX", "topY", "bottomX", "bottomY"), box)), "label": "cell",  # noqa: E731
                          "score": s}
    (tmp_path / "p.jsonl").write_text(json.dumps({"image_url": "a.png", "boxes": [
        det((0, 0, .1, .1), .9), det((0, 0, .1, .09), .8), det((.2, .2, .3, .3), .7)]}) + "\n")
    p = cli("evaluate", "--task", "image_object_detection", "--data", "gt.jsonl", "--predictions", "p.jsonl",
            "--validation_metric_type", "voc", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    scores = json.loads(p.stdout)
    assert scores["mean_average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert "coco_map" not in scores
    assert scores["per_label"]["cell"]["false_positives"] == 1


@pytest.mark.parametrize("lines, fragments", [
    (['{"image_url": "images/img_0_000.png", "boxes": []}'],
     ["no predictions for 5 labelled image(s)", "an image without detections needs a line"]),
    (['{"image_url": "nowhere.png", "boxes": []}'], ["pred.jsonl:1: image_url='nowhere.png' is not an image of"]),
    (['not json'], ["pred.jsonl:1: not valid JSON"]),
    (['{"image_url": "images/img_0_000.png", "boxes": [{"box": {"topX": 0.1}, "label": "red", "score": 1}]}'],
     ["pred.jsonl:1: boxes[0]: missing or non-numeric"]),
    (['{"image_url": "images/img_0_000.png", "boxes": []}', '{"image_url": "images/img_0_000.png", "boxes": []}'],
     ["pred.jsonl:2: image_url='images/img_0_000.png' repeats line 1"]),
])
def test_evaluate_errors_name_the_line(tiny, tmp_path, lines, fragments):
    data = tiny["train"]
    preds = data.parent / "pred.jsonl"
    preds.write_text("\n".join(lines) + "\n")
    p = cli("evaluate", "--task", "image_object_detection", "--data", str(data), "--predictions", str(preds))
    assert p.returncode == 2, p.stderr
    for fragment in fragments:
        assert fragment in p.stderr


def test_evaluate_segmentation_needs_polygons(tiny, tmp_path):
    rows = _perfect(tiny["seg_val"], segmentation=False)
    preds = tmp_path / "pred.jsonl"
    preds.write_text("".join(json.dumps(x) + "\n" for x in rows))
    p = cli("evaluate", "--task", "image_instance_segmentation", "--data", str(tiny["seg_val"]),
            "--predictions", str(preds))
    assert p.returncode == 2 and "instance segmentation predictions need a 'polygon'" in p.stderr

