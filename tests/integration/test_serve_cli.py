"""predict, evaluate and run close the loop: a run ends with a packaged best model, predict scores
with it, evaluate scores the model or its predictions file; the ONNX export agrees with PyTorch.
predict and evaluate run in this process (``cli_main``); serve, which would start a server, runs in a
process of its own; the run is the session's shared library-engine run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_classification_dataset
from det_testdata import make_detection_dataset
from PIL import Image
from safetensors.torch import load_file, save_file
from serve_testdata import make_package

from automl_vision.serving.engine import load_engine
from automl_vision.serving.export import package_model
from automl_vision.serving.package import load_package
from automl_vision.spec.tasks import ImageTask

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # predict and evaluate run in this process

MC, OD = ImageTask.IMAGE_CLASSIFICATION, ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg"), MC, "resnet18", onnx=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_classification_dataset(tmp_path_factory.mktemp("data"), n_per_class=4,
                                                classes=("blue", "red"), size=36)


def test_onnx_export_agrees_with_pytorch(package, data):
    manifest = json.loads((package / "package.json").read_text())["onnx"]
    assert manifest["file"] == "model.onnx"
    assert manifest["checked_against_pytorch"]["max_abs_diff"] <= manifest["checked_against_pytorch"]["tolerance"]
    pkg = load_package(package)
    images = [Image.open(p).convert("RGB") for p in sorted((data.parent / "images").glob("*.png"))]
    answers = {}
    for runtime in ("onnx", "openvino", "pytorch"):
        engine = load_engine(pkg, pkg.settings(("test", {"runtime": runtime})))
        assert engine.runtime == runtime
        answers[runtime] = np.array([a["probs"] for a in engine.infer([engine.preparer(im) for im in images])])
    assert np.abs(answers["onnx"] - answers["pytorch"]).max() < 1e-4
    assert np.abs(answers["openvino"] - answers["pytorch"]).max() < 1e-4
    # the gate ran on synthetic images: this package was made without validation data
    assert manifest["gate"]["passed"] and manifest["gate"]["data"] is None and manifest["gate"]["images"] == 4


def test_packaging_a_package_again_keeps_its_checked_export(package, tmp_path):
    t0 = time.monotonic()
    again = package_model(package, tmp_path / "again")
    assert time.monotonic() - t0 < 10  # no second export
    old, new = (json.loads((p / "package.json").read_text()) for p in (package, again.path))
    assert new["onnx"] == old["onnx"] and new["weights_sha256"] == old["weights_sha256"]
    assert (again.path / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()


def test_predict_scores_a_folder_and_a_jsonl_file(package, data, tmp_path, cli_main):
    p = cli_main("predict", str(data.parent / "images"), "--model", str(package), "--out", str(tmp_path / "f.jsonl"))
    assert p.returncode == 0, p.stderr
    assert "scored 8/8 images (100%)" in p.stderr and "scored 8 images" in p.stdout
    rows = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    names = sorted(q.name for q in (data.parent / "images").iterdir())
    assert [Path(r["image_url"]).name for r in rows] == names
    assert all((tmp_path / r["image_url"]).resolve().is_file() for r in rows)  # relative to the output file
    assert all(set(r) == {"image_url", "probs", "labels"} for r in rows)
    p = cli_main("predict", str(data), "--model", str(package), "--out", str(tmp_path / "j.jsonl"), "--batch-size", "3")
    assert p.returncode == 0, p.stderr
    urls = [json.loads(x)["image_url"] for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert urls == [json.loads(x)["image_url"] for x in data.read_text().splitlines()]


def test_predict_explains_each_image_into_its_folder(package, data, tmp_path, cli_main):
    out = tmp_path / "e.jsonl"
    p = cli_main("predict", str(data), "--model", str(package), "--out", str(out), "--explain", "integrated_gradients",
                 "--xai-parameters", '{"n_steps": 8}')
    assert p.returncode == 0, p.stderr
    assert "scored and explained 8 images" in p.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    folder = tmp_path / "e_explanations"
    assert json.loads((folder / "parameters.json").read_text())["n_steps"] == 8
    for row in rows:
        (e,) = row["explanations"]  # the predicted class
        assert e["label"] == row["labels"][int(np.argmax(row["probs"]))]
        with Image.open(tmp_path / e["visualization"]) as picture:
            assert picture.format == "PNG" and picture.size == (448, 448)
        assert np.load(tmp_path / e["attributions"]).shape == (3, 32, 32)
    assert len(list(folder.glob("*.png"))) == len(list(folder.glob("*.npy"))) == 8
    # the method's parameters are checked before any image is scored; nothing is written
    bad = cli_main("predict", str(data), "--model", str(package), "--out", str(tmp_path / "b.jsonl"), "--explain",
                   "guided_backprop", "--xai-parameters", '{"n_steps": 8}')
    assert bad.returncode == 2
    assert "--xai-parameters.n_steps: not a parameter of guided_backprop" in bad.stderr
    assert not (tmp_path / "b.jsonl").exists() and not (tmp_path / "b_explanations").exists()
    alone = cli_main("predict", str(data), "--model", str(package), "--out", str(tmp_path / "c.jsonl"),
                     "--xai-parameters", "{}")
    assert alone.returncode == 2 and "--xai-parameters and --explain-dir go with --explain METHOD" in alone.stderr


def test_predict_reports_every_unreadable_image(package, data, tmp_path, cli_main):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((data.parent / "images").glob("*.png"))[:2]
    for g in good:
        (folder / g.name).write_bytes(g.read_bytes())
    (folder / "broken.png").write_bytes(good[0].read_bytes()[:100])
    (folder / "text.jpg").write_bytes(b"not a jpeg")
    p = cli_main("predict", str(folder), "--model", str(package), "--out", str(tmp_path / "p.jsonl"))
    assert p.returncode == 2
    assert "2 of 4 images could not be scored" in p.stderr
    assert "broken.png: the png image is truncated" in p.stderr and "text.jpg: not an image" in p.stderr
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert sum("error" in r for r in rows) == 2 and sum("probs" in r for r in rows) == 2


def test_evaluate_the_model_then_its_predictions(package, data, tmp_path, cli_main):
    out = tmp_path / "eval"
    p = cli_main("evaluate", "--model", str(package), "--data", str(data), "--output-dir", str(out))
    assert p.returncode == 0, p.stderr
    for name in ("metrics.json", "predictions.jsonl", "per_class.csv", "per_class.png", "confusion_matrix.png",
                 "roc_pr_curves.png", "samples.png", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 8 and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["per_class"]) == {"blue", "red"} and np.asarray(metrics["confusion_matrix"]).sum() == 8
    printed = json.loads(p.stdout)
    assert printed["accuracy"] == metrics["accuracy"]
    again = cli_main("evaluate", "--task", "image_classification", "--data", str(data), "--predictions",
                     str(out / "predictions.jsonl"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accuracy"] == metrics["accuracy"]
    html = (out / "report.html").read_text()
    assert "Confusion matrix" in html and "data:image/png;base64," in html
    # four of the images explained (the most confident right and wrong answers) with XRAI
    index = json.loads((out / "explanations" / "explanations.json").read_text())
    assert index["parameters"]["xai_algorithm"] == "xrai" and len(index["explanations"]) == 4
    truth = {r["image_url"]: r["label"] for r in map(json.loads, data.read_text().splitlines())}
    answers = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    wrong = sum(a["labels"][int(np.argmax(a["probs"]))] != truth[a["image_url"]] for a in answers)
    right = len(answers) - wrong
    n_right = min(right, 4 - min(wrong, 2))  # half each, one kind filling in for the other
    assert sum(e["correct"] for e in index["explanations"]) == n_right
    assert all(e["correct"] == (e["predicted"] == [truth[e["image_url"]]]) for e in index["explanations"])


def test_a_multilabel_answer_with_no_label_is_explained_by_its_most_probable(tmp_path, cli_main):
    # a multi-label model whose head says no to every label (bias -10): the report still shows why
    data = make_classification_dataset(tmp_path / "data", n_per_class=2, classes=("blue", "red"), size=32,
                                       multilabel=True)
    package = make_package(tmp_path, ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, "mobilenetv2")
    state = load_file(str(package / "model.safetensors"))
    state["classifier.1.bias"] = torch.full_like(state["classifier.1.bias"], -10.0)
    state["classifier.1.bias"][1] = -9.0  # "red" the most probable, far under 0.5
    save_file(state, str(package / "model.safetensors"))
    (package / "package.json").unlink()  # the weights changed: no manifest to check them against
    out = tmp_path / "eval"
    p = cli_main("evaluate", "--model", str(package), "--data", str(data), "--output-dir", str(out),
                 "--explain-images", "2", "--xai-parameters", '{"xai_algorithm": "guided_gradcam"}')
    assert p.returncode == 0, p.stderr
    index = json.loads((out / "explanations" / "explanations.json").read_text())
    assert [(e["predicted"], e["explained"], e["correct"]) for e in index["explanations"]] == [([], "red", False)] * 2
    assert "0 right, 2 wrong" in index["summary"]


@pytest.mark.parametrize("args, message", [
    (["--model", "{pkg}", "--data", "{data}"], "--output-dir is needed with --model"),
    (["--predictions", "p.jsonl", "--data", "{data}"], "--task is needed with --predictions"),
    (["--model", "{tmp}/none", "--data", "{data}", "--output-dir", "{tmp}/o"], "model folder not found"),
    (["--task", "image_classification", "--predictions", "{tmp}/partial.jsonl", "--data", "{data}"],
     "no predictions for 7 labelled image(s)"),
    (["--model", "{pkg}", "--data", "{tmp}/green.jsonl", "--output-dir", "{tmp}/o"],
     "classes the model does not know: green"),
])
def test_evaluate_errors(package, data, tmp_path, cli_main, args, message):
    line = json.loads(data.read_text().splitlines()[0])
    (tmp_path / "partial.jsonl").write_text(json.dumps({**line, "probs": [0.5, 0.5], "labels": ["blue", "red"]})
                                            + "\n")
    (tmp_path / "green.jsonl").write_text(json.dumps({"image_url": str(data.parent / line["image_url"]),
                                                      "label": "green"}) + "\n")
    subs = {"{pkg}": str(package), "{data}": str(data), "{tmp}": str(tmp_path)}
    p = cli_main("evaluate", *[_sub(a, subs) for a in args])
    assert p.returncode == 2, p.stderr
    assert message in p.stderr


def _sub(text: str, subs: dict) -> str:
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


@pytest.mark.parametrize("task, model_name", [(OD, "fasterrcnn_resnet18_fpn"), (IS, "maskrcnn_resnet18_fpn")])
def test_evaluate_a_detection_model_draws_pr_curves_and_samples(tmp_path, cli_main, task, model_name):
    data = make_detection_dataset(tmp_path / "data", n=4, segmentation=task is IS)
    package = make_package(tmp_path, task, model_name)
    (tmp_path / "low.json").write_text(json.dumps({"box_score_thresh": 0.0}))
    # detection: one image explained, with few masks (a random-weights R-CNN at threshold 0 answers 100 boxes per
    # masked image); segmentation's D-RISE is the segmentation server test's
    explain = ["1", '{"num_masks": 4, "mask_grid_size": 4}'] if task is OD else ["0", "{}"]
    p = cli_main("evaluate", "--model", str(package), "--data", str(data), "--output-dir", str(tmp_path / "eval"),
                 "--settings", str(tmp_path / "low.json"), "--validation_metric_type", "voc", "--explain-images",
                 explain[0], "--xai-parameters", explain[1])
    assert p.returncode == 0, p.stderr
    if task is OD:
        index = json.loads((tmp_path / "eval" / "explanations" / "explanations.json").read_text())
        assert index["parameters"]["xai_algorithm"] == "d_rise" and index["parameters"]["num_masks"] == 4
        (explained,) = index["explanations"]
        assert explained["predicted"] == [explained["explained"]] and isinstance(explained["correct"], bool)
        with Image.open(tmp_path / "eval" / "explanations" / explained["picture"]) as picture:
            assert picture.format == "PNG" and picture.width > picture.height  # the image beside its map
    else:
        assert not (tmp_path / "eval" / "explanations").exists()
    for name in ("metrics.json", "predictions.jsonl", "per_class.csv", "pr_curves.png", "ap_per_label.png",
                 "samples.png", "report.html"):
        assert (tmp_path / "eval" / name).is_file(), name
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["mean_average_precision"] <= 1 and set(metrics["per_label"]) == {"blue", "red"}
    if task is IS:
        assert "box_mean_average_precision" in metrics  # masks scored, boxes too
        assert all("polygon" in d for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
                   for d in json.loads(x)["boxes"])


def test_run_ends_with_a_packaged_best_model(reference_library_run, data):
    # the session's `automl-vision run job.yaml --engine library` of one resnet18 trial at 32 px on a copy
    # of this module's data (reference_runs.LIBRARY_JOB), read only
    p = reference_library_run
    assert p.data.read_text() == data.read_text()
    assert yaml.safe_load(p.job_file.read_text()) == {
        "task": "image_classification", "training_data": str(p.data), "limits": {"max_trials": 1},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]}}],
        "training_parameters": {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 32,
                                "valid_resize_size": 32, "valid_crop_size": 32, "training_batch_size": 4},
    }
    assert p.returncode == 0, p.stdout + p.stderr
    best = p.run / "best_model"
    for name in ("model.safetensors", "config.json", "labels.json", "metrics.json", "settings.json", "package.json",
                 "README.md", "trial.json"):
        assert (best / name).is_file(), name
    assert (best / "model.onnx").is_file(), json.loads((best / "package.json").read_text())["onnx"]
    assert "torch.onnx" not in p.stdout  # the exporter's chatter stays out of the run's output
    pkg = load_package(best)
    engine = load_engine(pkg, pkg.settings())
    assert engine.runtime == "onnx"  # runtime auto on the CPU with model.onnx in the package
    (answer,) = engine.infer([engine.preparer(Image.new("RGB", (40, 40), "red"))])
    assert answer["labels"] == ["blue", "red"]


def _other_weights(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, str(folder / "model.safetensors"))


def _without_manifest(folder: Path) -> None:
    (folder / "package.json").unlink()  # a trial's outputs: nothing to check the files against


@pytest.mark.parametrize("damage, settings, message", [
    # The weights changed after packaging: without the check, ONNX Runtime would serve the old model.
    (_other_weights, {}, "model.safetensors has changed since the package was made"),
    (lambda d: (d / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * 40), {},
     "model.onnx has changed since the package was made"),
    (lambda d: (_without_manifest(d), (d / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * 40)), {},
     "model.onnx: ONNX Runtime cannot load it"),
    (lambda d: (_without_manifest(d), (d / "model.safetensors").write_bytes(b"\x00" * 64)), {"runtime": "pytorch"},
     "model.safetensors: not a readable safetensors file"),
], ids=["changed weights", "changed onnx", "corrupt onnx", "corrupt safetensors"])
def test_serve_refuses_a_changed_or_corrupt_package_with_exit_2(package, tmp_path, damage, settings, message):
    folder = Path(shutil.copytree(package, tmp_path / "pkg"))
    damage(folder)
    (tmp_path / "s.json").write_text(json.dumps(settings))
    p = subprocess.run([sys.executable, "-m", "automl_vision", "serve", "--model", str(folder), "--port", "1",
                        "--settings", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
