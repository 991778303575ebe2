"""The training-side components called directly (``component.python_func``) with real artifacts on
tiny data: sweep (one real trial), then evaluate, report, package and preview on what it left."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_classification_dataset
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model

from automl_vision.errors import AutoMLError
from automl_vision.pipeline.components import evaluate, ingest, package, preview, report, sweep

pytestmark = pytest.mark.slow

SMALL = {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 24, "valid_resize_size": 24,
         "valid_crop_size": 24, "training_batch_size": 4, "validation_batch_size": 8}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    data = make_classification_dataset(root / "data", n_per_class=6)
    out = root / "outputs"
    dataset, validation = Dataset(uri=str(out / "dataset")), Dataset(uri=str(out / "validation"))
    ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                       validation=validation, statistics=Metrics(uri=str(out / "statistics")),
                       training_parameters=SMALL)
    run, leaderboard = Artifact(uri=str(out / "run")), Metrics(uri=str(out / "leaderboard"))
    # AutoMode (two trials, no search space): the step sizes it by the ingested data
    sweep.python_func(task="image_classification", training_data=dataset, limits={"max_trials": 2.0}, sweep={},
                      search_space=[], training_parameters=SMALL, run=run, leaderboard=leaderboard, device="cpu")
    return {"root": root, "data": data, "dataset": dataset, "validation": validation, "run": run,
            "leaderboard": leaderboard}


def test_sweep_leaves_the_run_folder_and_its_metrics(swept):
    run = Path(swept["run"].path)
    for name in ("job.yaml", "leaderboard.json", "sweep.json", "best_model/model.safetensors",
                 "trials/trial-0000/metrics.jsonl"):
        assert (run / name).exists(), name
    meta = swept["leaderboard"].metadata
    assert meta["trials"] == 2 and meta["trials_completed"] == 2
    assert 0.0 <= meta["best_accuracy"] <= 1.0
    board = json.loads((run / "leaderboard.json").read_text())
    assert board["trials"][0]["best_value"] == meta["best_accuracy"]
    # AutoMode from the ingested manifest's fingerprint: its space, then its starting point first
    doc = json.loads((run / "sweep.json").read_text())
    assert doc["automode"]["summary"].startswith("AutoMode: 2 search-space entries over resnet18, resnet34")
    assert doc["dataset_fingerprint"]["images"] == 12
    assert doc["trials"][0]["sampler_params"] == {"automode_start": True}
    # the trial trained on the ingested manifest, not on the JSONL file
    command = json.loads((run / "trials" / "trial-0000" / "command.json").read_text())
    assert command[command.index("--training_data") + 1] == swept["dataset"].path


def _evaluated(swept, folder: Path) -> dict:
    out = {"metrics": Metrics(uri=str(folder / "metrics")),
           "classification_metrics": ClassificationMetrics(uri=str(folder / "cm")),
           "report": HTML(uri=str(folder / "report")), "evaluation": Artifact(uri=str(folder / "evaluation"))}
    evaluate.python_func(run=swept["run"], validation_split=swept["validation"], **out)
    return out


@pytest.fixture(scope="module")
def evaluated(swept):
    return _evaluated(swept, swept["root"] / "evaluated")


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r'<section id="([\w-]+)" data-section="[\w-]+">', page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_evaluate_writes_metrics_the_confusion_matrix_and_the_report(swept, tmp_path):
    out = _evaluated(swept, tmp_path)
    metrics = out["metrics"].metadata
    assert metrics["images"] == 2  # the held-out 20% of 12 images, stratified
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "f1_score_macro" in metrics
    matrix = out["classification_metrics"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == ["green", "red"]
    assert sum(sum(r["row"]) for r in matrix["rows"]) == 2
    # the ROC curve the Pipelines UI draws: micro-averaged one-vs-rest over 2 images x 2 classes
    roc = out["classification_metrics"].metadata["confidenceMetrics"]
    assert 2 <= len(roc) <= 5
    fpr, tpr = [p["falsePositiveRate"] for p in roc], [p["recall"] for p in roc]
    assert fpr == sorted(fpr) and tpr == sorted(tpr) and (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert all(0.0 <= p["confidenceThreshold"] <= 1.0 for p in roc)
    json.dumps(out["classification_metrics"].metadata, allow_nan=False)  # what the executor writes
    page = Path(out["report"].path).read_text()
    assert page.startswith("<!doctype html>") or page.lower().startswith("<!doctype html")
    assert "data:image/png;base64," in page  # the plots are inline: the Pipelines UI shows the page alone
    assert (Path(out["evaluation"].path) / "confusion_matrix.png").is_file()


def test_report_shows_the_leaderboard_the_curves_and_the_evaluate_steps_pictures(swept, evaluated, tmp_path):
    page = HTML(uri=str(tmp_path / "report"))
    report.python_func(run=swept["run"], dataset=swept["dataset"], evaluation=evaluated["evaluation"],
                       validation_split=swept["validation"], report=page)
    text = Path(page.path).read_text()
    sections = _sections(text)
    assert tuple(sections) == ("summary", "data", "leaderboard", "curves", "hyperparameters", "evaluation",
                               "predictions", "explanations")  # the evaluate step's explanations, shown
    assert (Path(evaluated["evaluation"].path) / "explanations" / "explanations.json").is_file()
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # self-contained: the Pipelines UI shows it alone
    board = json.loads((Path(swept["run"].path) / "leaderboard.json").read_text())
    row = board["trials"][0]
    shown = re.findall(r'<tr class="best"><td class="num" data-v="1">1</td><td class="nowrap">(trial-\d+)</td>'
                       r'<td[^>]*>(\w+)</td><td[^>]*>(\w+)</td>', sections["leaderboard"])
    assert shown == [(row["trial_id"], row["status"], row["model_name"])]
    # the summary says what AutoMode searched and what the sweep used
    assert "AutoMode: 2 search-space entries over resnet18, resnet34" in sections["summary"]
    assert "trial-epoch(s)" in sections["summary"]
    assert 'id="leaderboard-table"' in sections["leaderboard"]
    assert "learning curves of every trial" in sections["curves"] and "data:image/png;base64," in sections["curves"]
    assert "Every trial ran to its last epoch" in sections["curves"]
    # the data is the ingested dataset (both splits), the evaluation the evaluate step's: not scored again
    assert '<div class="k">images</div><div class="v">12</div>' in sections["data"]
    assert swept["dataset"].path in sections["data"]
    evaluation = Path(evaluated["evaluation"].path)
    assert (f"Scored by the pipeline's evaluate step on the 2 validation images of {swept['validation'].path}/"
            f"validation.jsonl; all files are in {evaluation}.") in html.unescape(sections["evaluation"])
    assert "confusion matrix" in sections["evaluation"] and "Per class" in sections["evaluation"]
    assert re.search(r"\d of the \d validation images the model gets wrong", sections["predictions"])
    assert not (Path(swept["run"].path) / "evaluation").exists()


def test_report_of_a_sweep_without_a_model_says_so(tmp_path, make_dataset):
    # a real sweep whose one trial fails: its images are gone after ingest
    data = make_dataset(tmp_path / "data", n_per_class=4)
    dataset, validation = Dataset(uri=str(tmp_path / "dataset")), Dataset(uri=str(tmp_path / "validation"))
    ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                       validation=validation, statistics=Metrics(uri=str(tmp_path / "statistics")),
                       training_parameters=SMALL)
    shutil.rmtree(tmp_path / "data" / "images")
    run = Artifact(uri=str(tmp_path / "run"))
    with pytest.raises(AutoMLError, match="no trial produced a model"):
        sweep.python_func(task="image_classification", training_data=dataset, limits={"max_trials": 1.0},
                          sweep={"sampling_algorithm": "grid"},
                          search_space=[{"model_name": {"type": "choice", "values": ["resnet18"]}}],
                          training_parameters=SMALL, run=run, leaderboard=Metrics(uri=str(tmp_path / "lb")),
                          device="cpu")
    page = HTML(uri=str(tmp_path / "report"))
    report.python_func(run=run, dataset=dataset, evaluation=Artifact(uri=str(tmp_path / "never-evaluated")),
                       validation_split=validation, report=page)
    sections = _sections(Path(page.path).read_text())
    assert "no trial produced a model" in sections["summary"]
    assert re.search(r'<td class="nowrap">trial-0000</td><td class="bad">failed</td>', sections["leaderboard"])
    assert "No trial produced a model, so there is nothing to evaluate." in sections["evaluation"]


def test_package_writes_a_servable_model(swept, tmp_path):
    model = Model(uri=str(tmp_path / "model"))
    package.python_func(run=swept["run"], validation_split=swept["validation"], model=model)
    folder = Path(model.path)
    manifest = json.loads((folder / "package.json").read_text())
    assert manifest["task"] == "image_classification" and manifest["model_name"] == "resnet18"
    assert (folder / "model.safetensors").is_file() and (folder / "labels.json").is_file()
    # the ONNX export was gated on the ingest step's validation split
    gate = manifest["onnx"]["gate"]
    assert gate["data"] == str(Path(swept["validation"].path) / "validation.jsonl") and gate["metric"] == "accuracy"
    assert model.metadata == {"task": "image_classification", "model_name": "resnet18",
                              "onnx": manifest["files"]["onnx"] is not None, "onnx_check": gate["reason"]}


def test_preview_writes_a_self_contained_page(swept, tmp_path):
    page = HTML(uri=str(tmp_path / "preview"))
    preview.python_func(task="image_classification", training_data=str(swept["data"]), preview=page,
                        training_parameters=SMALL, count=4)
    text = Path(page.path).read_text()
    assert "data:image/png;base64," in text and "Augmentation preview" in text
