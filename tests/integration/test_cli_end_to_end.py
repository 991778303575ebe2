"""The CLI run for real on tiny data: one trial, a whole job, job validation, exit codes. The commands
run in this process (``cli_main``); the whole job is the session's shared pipeline run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from automl_vision.training.reporter import KATIB_METRIC_RE

pytestmark = pytest.mark.usefixtures("one_thread")  # the trials train in this process

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
SMALL = ["--pretrained", "0", "--train_crop_size", "24", "--valid_resize_size", "24", "--valid_crop_size", "24",
         "--training_batch_size", "4", "--validation_batch_size", "8"]


@pytest.mark.slow
def test_train_reports_metrics_only_through_the_reporter(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    out = tmp_path / "trial"
    p = cli_main("train", "--task", "image_classification", "--training_data", str(data), "--model_name", "resnet18",
                 "--number_of_epochs", "2", *SMALL, "--output-dir", str(out))
    assert p.returncode == 0, p.stderr
    # Katib's StdOut collector reads stdout and stderr: only timestamped reporter lines may hold name=value.
    lines = (p.stdout + p.stderr).splitlines()
    metric_lines = [ln for ln in lines if KATIB_METRIC_RE.search(ln)]
    assert len(metric_lines) == 2
    assert all(TIMESTAMP.match(ln) for ln in metric_lines), metric_lines
    assert [re.search(r"epoch=(\d+)", ln).group(1) for ln in metric_lines] == ["1", "2"]
    assert all(re.search(r" accuracy=[0-9.]+", ln) and re.search(r" loss=[0-9.]", ln) for ln in metric_lines)

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(isinstance(v, str) for row in rows for v in row.values())
    assert {"timestamp", "epoch", "accuracy", "loss"} <= set(rows[0])

    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_completed"] == 2
    assert result["best_value"] == max(float(r["accuracy"]) for r in rows)
    for name in ("model.safetensors", "labels.json", "config.json", "metrics.json"):
        assert (out / "outputs" / name).is_file(), name
    assert json.loads((out / "outputs" / "labels.json").read_text()) == ["green", "red"]
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["number_of_epochs"] == 2
    assert config["hyperparameters"]["learning_rate"] == 0.01  # the multi-class default for resnet18
    assert (out / "train.log").read_text().strip()


@pytest.mark.slow
def test_train_multilabel(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=6, multilabel=True)
    out = tmp_path / "trial"
    p = cli_main("train", "--task", "image_classification_multilabel", "--training_data", str(data),
                 "--model_name", "mobilenetv2", "--number_of_epochs", "1", *SMALL, "--output-dir", str(out))
    assert p.returncode == 0, p.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= float(row["iou"]) <= 1.0
    assert json.loads((out / "result.json").read_text())["primary_metric"] == "iou"


@pytest.mark.parametrize("extra, expected", [
    (["--learning_rate", "2"], ["learning_rate=2 out of range; expected float in [0, 1]"]),
    (["--min_size", "800"], ["min_size does not apply to task image_classification"]),
    (["--model_name", "yolov5"], ["model_name='yolov5' is not a model for image_classification"]),
    (["--learning_rate", "2", "--optimizer", "sgdd"],
     ["learning_rate=2 out of range", "optimizer='sgdd' is not allowed", "did you mean 'sgd'?"]),
])
def test_train_bad_hyperparameters_exit_2(tmp_path, make_dataset, cli_main, extra, expected):
    data = make_dataset(tmp_path / "data", n_per_class=2)
    p = cli_main("train", "--task", "image_classification", "--training_data", str(data), *extra,
                 "--output-dir", str(tmp_path / "out"))
    assert p.returncode == 2
    for text in expected:
        assert text in p.stderr


def test_train_bad_data_exit_2(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    with data.open("a") as f:
        f.write('{"image_url": "images/missing.png", "label": "red"}\n{"label": "red"\n')
    p = cli_main("train", "--task", "image_classification", "--training_data", str(data), "--output-dir",
                 str(tmp_path / "out"))
    assert p.returncode == 2
    assert f"{data}:7: image_url='images/missing.png': image not found" in p.stderr
    assert f"{data}:8: not valid JSON" in p.stderr


@pytest.mark.slow
def test_train_divergence_exit_3(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=8)
    out = tmp_path / "out"
    # Adam with beta2 0 and a learning rate of 1 sends the weights to NaN within the first epoch.
    p = cli_main("train", "--task", "image_classification", "--training_data", str(data), "--model_name", "resnet18",
                 "--number_of_epochs", "2", *SMALL, "--optimizer", "adam", "--learning_rate", "1", "--beta2", "0",
                 "--output-dir", str(out))
    assert p.returncode == 3, p.stderr
    assert "training diverged" in p.stderr and "global step" in p.stderr
    assert json.loads((out / "result.json").read_text())["status"] == "diverged"


def _job(data: Path, **changes) -> dict:
    job = {
        "task": "image_classification",
        "training_data": str(data),
        "limits": {"max_trials": 2},
        "sweep": {"sampling_algorithm": "grid"},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]}}],
        "training_parameters": {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 24,
                                "valid_resize_size": 24, "valid_crop_size": 24, "training_batch_size": 4},
    }
    job.update(changes)
    return job


@pytest.mark.slow
def test_run_whole_job(reference_pipeline_run):
    # the session's `automl-vision run job.yaml --output-dir run` of _job(data) (named "shapes"), read only
    p = reference_pipeline_run
    run = p.run
    assert yaml.safe_load(p.job_file.read_text()) == {**_job(p.data), "name": "shapes"}
    assert p.returncode == 0, p.stdout + p.stderr
    assert "leaderboard:" in p.stdout and "best model:" in p.stdout

    board = json.loads((run / "leaderboard.json").read_text())
    assert board["primary_metric"] == "accuracy"
    trials = board["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert {t["model_name"] for t in trials} == {"resnet18", "mobilenetv2"}
    values = [t["best_value"] for t in trials]
    assert values == sorted(values, reverse=True)
    with (run / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in trials]

    best = trials[0]["trial_id"]
    assert json.loads((run / "best_model" / "trial.json").read_text())["trial_id"] == best
    assert (run / "best_model" / "model.safetensors").read_bytes() == \
        (run / "trials" / best / "outputs" / "model.safetensors").read_bytes()
    for t in trials:
        folder = run / "trials" / t["trial_id"]
        for name in ("config.json", "metrics.jsonl", "train.log", "console.log", "result.json", "command.json"):
            assert (folder / name).is_file(), (t["trial_id"], name)
        command = json.loads((folder / "command.json").read_text())
        assert command[:2] == ["automl-vision", "train"] and "--model_name" in command
    assert yaml.safe_load((run / "job.yaml").read_text())["task"] == "image_classification"


def test_validate_job_names_every_mistake(tmp_path, cli_main):
    job = _job(Path("train.jsonl"), primary_metric="iou", limts={"max_trials": 2})
    job["training_parameters"] = {"number_of_epochs": 0, "min_size": 600, "learning_rat": 0.1}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    p = cli_main("validate-job", str(job_file))
    assert p.returncode == 2
    for text in ("unknown key 'limts' (did you mean 'limits'?)",
                 "number_of_epochs=0: out of range; expected int >= 1",
                 "min_size does not apply to task image_classification",
                 "unknown hyperparameter 'learning_rat' (did you mean 'learning_rate'?)",
                 "primary_metric='iou'"):
        assert text in p.stderr, text
    assert p.stderr.startswith(f"error: {job_file}: 5 problems:")


def test_validate_job_prints_every_default(tmp_path, cli_main):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job(Path("train.jsonl"))))
    p = cli_main("validate-job", str(job_file))
    assert p.returncode == 0, p.stderr
    view = yaml.safe_load(p.stdout)
    assert view["primary_metric"] == "accuracy"
    assert view["training_data"] == str(tmp_path / "train.jsonl")
    assert view["limits"]["timeout_minutes"] == 7 * 24 * 60
    vit_free = view["hyperparameters_by_model"]
    assert set(vit_free) == {"resnet18", "mobilenetv2"}
    assert vit_free["resnet18"]["number_of_epochs"] == 1
    assert vit_free["resnet18"]["training_batch_size"] == 4
    assert vit_free["mobilenetv2"]["validation_batch_size"] == 78
    assert vit_free["mobilenetv2"]["optimizer"] == "sgd"


@pytest.mark.slow
def test_a_run_whose_every_trial_refuses_its_data_exits_2(tmp_path, make_dataset, cli_main):
    """Validation data with a class the training data lacks: each trial exits 2 naming the lines, and the
    run says so with exit 2 (bad input), not 1 (an internal error)."""
    train = make_dataset(tmp_path / "d", n_per_class=3, classes=("red", "green"), size=16)
    val = make_dataset(tmp_path / "d", n_per_class=2, classes=("red", "blue"), size=16, seed=1, name="val.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "image_classification", "training_data": str(train),
                                   "validation_data": str(val), "limits": {"max_trials": 1},
                                   "training_parameters": {"number_of_epochs": 1, "pretrained": 0,
                                                           "model_name": "resnet18"}}))
    p = cli_main("run", str(job), "--output-dir", str(tmp_path / "run"), "--engine", "library")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "every trial refused its input (exit 2)" in p.stdout
    console = (tmp_path / "run" / "trials" / "trial-0000" / "console.log").read_text()
    assert f'{val}:3: label="blue" is not a class of the training data' in console
