"""Scheduled retraining against the local registry: the session's real local pipeline run registered its best
model as version 1, the champion (the registry folder beside its run folder, what ``automl-vision run`` uses
without ``--registry``); then two more runs of the gated steps (evaluate -> register -> report, the
components' own functions with real artifacts): a worse model is registered but not promoted, a better one
is promoted, and the report says which and why, with both metrics.

Which model is better is made certain, not left to a one-epoch training: the second model is the first with
its classifier's rows rolled (it always answers another class), and each run's validation data is labelled
by one of the two models' own predictions, so the model that labelled it scores 1 and the other 0."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model
from safetensors.torch import load_file, save_file

from automl_vision.errors import ConfigError
from automl_vision.pipeline.components import evaluate, register, report
from automl_vision.pipeline.registration import score_champion
from automl_vision.registry.store import LocalRegistry
from automl_vision.serving.batch import predict_batch

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rolled(package: Path, out: Path) -> Path:
    """A copy of ``package`` whose classifier answers class i+1 where the original answers i (no ONNX file)."""
    shutil.copytree(package, out)
    manifest = json.loads((out / "package.json").read_text())
    weights = load_file(out / "model.safetensors")
    classes = manifest["num_classes"]
    head = [k for k, t in weights.items() if k.endswith(".weight") and t.dim() == 2 and t.shape[0] == classes][-1]
    bias = head[:-len("weight")] + "bias"
    for key in (head, bias):
        weights[key] = weights[key].roll(1, dims=0).contiguous()
    save_file(weights, out / "model.safetensors")
    (out / "model.onnx").unlink(missing_ok=True)
    manifest["weights_sha256"] = _sha256(out / "model.safetensors")
    manifest["sha256"] = {name: _sha256(out / name) for name in manifest["sha256"] if (out / name).is_file()}
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k != "onnx"}
    manifest.pop("onnx", None)
    (out / "package.json").write_text(json.dumps(manifest, indent=2))
    return out


def _labelled_by(package: Path, data: Path, out: Path) -> Path:
    """``data``'s images labelled with ``package``'s own top answer."""
    predict_batch(package, data, out.with_suffix(".predictions.jsonl"))
    lines = []
    for row in map(json.loads, out.with_suffix(".predictions.jsonl").read_text().splitlines()):
        best = max(range(len(row["probs"])), key=row["probs"].__getitem__)
        image = data.parent / row["image_url"]  # as the line gave it: relative to the JSONL file
        lines.append(json.dumps({"image_url": str(image), "label": row["labels"][best]}))
    out.write_text("\n".join(lines) + "\n")
    return out


def _gated_run(folder: Path, candidate: Path, data: Path, registry: Path, pipeline_run, run_id: str) -> dict:
    """The evaluate, register and report steps of a run whose sweep's best model is ``candidate``."""
    run = folder / "run"
    shutil.copytree(pipeline_run.run, run, ignore=shutil.ignore_patterns("best_model", "pipeline", "trials"))
    shutil.copytree(candidate, run / "best_model")
    steps = {s["name"]: s for s in json.loads((pipeline_run.run / "pipeline_run.json").read_text())["steps"]}
    dataset = Dataset(uri=steps["ingest"]["outputs"]["dataset"]["uri"])
    validation = Dataset(uri=steps["ingest"]["outputs"]["validation"]["uri"])
    scored = {"metrics": Metrics(uri=str(folder / "metrics")), "evaluation": Artifact(uri=str(folder / "evaluation")),
              "classification_metrics": ClassificationMetrics(uri=str(folder / "cm")),
              "report": HTML(uri=str(folder / "evaluation-report"))}
    evaluate.python_func(run=Artifact(uri=str(run)), validation_split=validation, validation_data=str(data),
                         registry=str(registry), job_name="shapes", **scored)
    registration = Artifact(uri=str(folder / "registration"))
    outputs = register.python_func(model=Model(uri=str(candidate)), evaluation=scored["evaluation"], dataset=dataset,
                                   run=Artifact(uri=str(run)), registration=registration, registry=str(registry),
                                   job_name="shapes", task="image_classification", training_data=str(pipeline_run.data),
                                   validation_data=str(data), run_id=run_id, image="automl-vision-cpu:test")
    page = HTML(uri=str(folder / "report.html"))
    report.python_func(run=Artifact(uri=str(run)), dataset=dataset, evaluation=scored["evaluation"],
                       validation_split=validation, validation_data=str(data), report=page, job_name="shapes",
                       registration=registration)
    return {"outputs": outputs, "metrics": scored["metrics"].metadata, "registration": registration.metadata,
            "page": Path(page.path).read_text()}


def _registry_section(page: str) -> str:
    found = re.search(r'<section id="registry".*?</section>', page, re.S)
    assert found, "the report has no registry section"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(0)))


def test_the_pipeline_run_registered_its_model_as_the_first_champion(reference_pipeline_run):
    p = reference_pipeline_run
    registered = json.loads((p.run / "registration.json").read_text())
    registry = p.run.parent / "model_registry"
    assert registered["registry"] == str(registry)
    assert (registered["registered_model"], registered["version"], registered["champion"]) == ("shapes", "1", True)
    assert registered["decision"]["reason"] == "no champion yet: the first version is promoted"
    (version,) = LocalRegistry(registry).versions("shapes")
    assert version.champion and version.uri == str(registry / "models" / "shapes" / "1")
    assert (Path(version.uri) / "package.json").read_text() == (p.run / "best_model" / "package.json").read_text()
    assert version.metadata["task"] == "image_classification" and version.metadata["job_name"] == "shapes"
    assert version.metadata["data_manifest_sha256"] and version.metadata["run_id"] == version.metadata[
        "pipeline_run_id"]
    assert "registry:   shapes version 1 in " in p.stdout and "; champion: no champion yet" in p.stdout
    section = _registry_section((p.run / "report.html").read_text())
    assert "version 1" in section and "promoted to champion" in section


def test_retraining_promotes_only_a_better_model(reference_pipeline_run, tmp_path):
    p = reference_pipeline_run
    registry = tmp_path / "model_registry"
    shutil.copytree(p.run.parent / "model_registry", registry)  # the shared run's registry stays as it was
    first = Path(LocalRegistry(registry).champion("shapes").uri)
    other = _rolled(first, tmp_path / "other")

    # run 2: data the champion labelled; the new model scores 0 against its 1: registered, not promoted
    data = _labelled_by(first, p.data, tmp_path / "labelled-by-champion.jsonl")
    worse = _gated_run(tmp_path / "run-2", other, data, registry, p, "run-2")
    assert worse["metrics"]["accuracy"] == 0.0 and worse["metrics"]["champion_accuracy"] == 1.0
    assert tuple(worse["outputs"]) == (False, "2", "shapes")
    assert worse["registration"]["gate"].startswith("accuracy 0.0000 against the champion's (version 1) 1.0000")
    section = _registry_section(worse["page"])
    assert "not promoted" in section and "-100.00 points" in section and "version 1" in section

    # run 3: data the new model labelled (the data changed); now it scores 1 against the champion's 0: promoted
    data = _labelled_by(other, p.data, tmp_path / "labelled-by-other.jsonl")
    better = _gated_run(tmp_path / "run-3", other, data, registry, p, "run-3")
    assert tuple(better["outputs"]) == (True, "3", "shapes")
    assert "+100.00 points" in _registry_section(better["page"])

    versions = LocalRegistry(registry).versions("shapes")
    assert [(v.version, v.champion, v.metadata["gate_decision"]) for v in versions] == [
        ("1", False, "promoted"), ("2", False, "not promoted"), ("3", True, "promoted")]
    assert versions[2].metadata["validation_data"] == str(data)
    # the step retried (same run id): no new version, the same decision
    again = register.python_func(model=Model(uri=str(other)), evaluation=Artifact(uri=str(tmp_path / "run-3" /
                                                                                              "evaluation")),
                                 dataset=Dataset(uri=str(tmp_path)), run=Artifact(uri=str(tmp_path / "run-3" / "run")),
                                 registration=Artifact(uri=str(tmp_path / "retry")), registry=str(registry),
                                 job_name="shapes", task="image_classification", run_id="run-3")
    assert tuple(again) == (True, "3", "shapes") and len(LocalRegistry(registry).versions("shapes")) == 3


def test_a_champion_of_another_task_is_not_compared(reference_pipeline_run, tmp_path):
    # the job's name reused for a detection job: its evaluate step refuses to score a classifier as its champion
    registry = reference_pipeline_run.run.parent / "model_registry"
    with pytest.raises(ConfigError, match="is a model for image_classification, this run's is for "
                                          "image_object_detection: register this job under another name"):
        score_champion(str(registry), "shapes", reference_pipeline_run.data, tmp_path,
                       task="image_object_detection")
    assert not (tmp_path / "champion.json").exists()
