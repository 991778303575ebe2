"""AutoMode end to end with real ``automl-vision train`` trials on tiny images: a job with only data, task
and a budget gets AutoMode's space, its starting point and ASHA, keeps to its budget and records it; a
second run warm starts from the first."""

from __future__ import annotations

import json

import pytest

from automl_vision.models.device import available_cpus
from automl_vision.spec.job import parse_job
from automl_vision.sweep.local import run_sweep

pytestmark = pytest.mark.slow

SMALL = {"pretrained": False, "train_crop_size": 16, "valid_resize_size": 16, "valid_crop_size": 16,
         "validation_batch_size": 16, "early_stopping": False, "warmup_cosine_lr_warmup_epochs": 0}


@pytest.fixture
def data(tmp_path, make_dataset):
    return make_dataset(tmp_path / "data", n_per_class=20, classes=("red", "green", "blue"), size=16)


def test_automode_keeps_to_its_budget_and_warm_starts_the_next_run(tmp_path, data):
    """A job with only data, task and a budget (the tiny images fixed): AutoMode's space and ASHA, trials
    until the budget would be passed, the compute in sweep.json; a second run warm starts from the first."""
    fixed = SMALL
    job = {"task": "image_classification", "training_data": str(data), "limits": {"budget": 0.004},  # 14.4 s
           "training_parameters": {**fixed, "number_of_epochs": 3}}
    echoed: list[str] = []
    first = run_sweep(parse_job(job), tmp_path / "first", device="cpu", echo=echoed.append, onnx=False)
    doc = json.loads((tmp_path / "first" / "sweep.json").read_text())
    # the sizes are fixed, so one entry per optimizer
    assert doc["automode"]["summary"].startswith("AutoMode: 2 search-space entries over resnet18, resnet34")
    assert doc["early_termination"]["type"] == "asha" and doc["dataset_fingerprint"]["images"] == 60
    start = first.trials[0]  # AutoMode's starting point, then the sampler's trials
    assert start.sampler_params == {"automode_start": True}
    assert (start.parameters["model_name"], start.parameters["optimizer"], start.parameters["learning_rate"],
            start.parameters["augmentation"]) == ("resnet18", "sgd", 0.02, "light")
    assert doc["stopped_because"].startswith("the budget of 0.004 CPU-hours")
    assert all(t["device_share"] == round(t["threads"] / available_cpus(), 4) for t in doc["trials"])
    used = sum(t["duration_s"] * t["device_share"] for t in doc["trials"]) / 3600
    assert doc["budget"]["used"] == pytest.approx(used, abs=1e-4)
    assert doc["compute"]["device_hours"] == pytest.approx(used, abs=1e-4)
    # no trial started that was expected to end past the budget; one that ran over was stopped at it
    assert used <= 0.004 + 10 / 3600
    assert all(t.status in ("completed", "terminated", "early_stopped") for t in first.trials)
    assert first.best is not None

    job["sweep"] = {"seed": 1, "warm_start": [str(tmp_path / "first")]}
    echoed.clear()
    second = run_sweep(parse_job(job), tmp_path / "second", device="cpu", echo=echoed.append, onnx=False)
    seeded = second.trials[0]
    assert seeded.parameters == first.best.parameters
    assert seeded.sampler_params["warm_start"].endswith(f"first {first.best.trial_id}")
    assert any("(warm start)" in line for line in echoed)
    warm = json.loads((tmp_path / "second" / "sweep.json").read_text())["warm_start"]
    assert warm["runs_read"] == 1 and warm["runs_used"] == 1
