"""The lines that end a run name the model the best trial trained."""

from __future__ import annotations

from pathlib import Path

from automl_vision.pipeline.runner import JobRun
from automl_vision.spec.job import parse_job
from automl_vision.sweep.core import TrialRecord
from automl_vision.sweep.local import SweepResult


def _summary(job: dict, parameters: dict) -> str:
    trial = TrialRecord("trial-0000", 0, parameters, status="completed", best_value=0.5, best_epoch=1)
    result = SweepResult(Path("run"), "mean_average_precision", True, [trial])
    return JobRun(parse_job(job), Path("run"), result, None).summary()


def test_summary_names_the_model_of_the_training_parameters():
    job = {"task": "image_object_detection", "training_data": "train.jsonl",
           "training_parameters": {"model_name": "fasterrcnn_resnet18_fpn"}}
    assert "best trial: trial-0000 (fasterrcnn_resnet18_fpn), mean_average_precision 0.5000" in _summary(job, {})


def test_summary_names_the_searched_model_else_the_tasks_default():
    job = {"task": "image_object_detection", "training_data": "train.jsonl"}
    assert "(retinanet_resnet50_fpn)" in _summary(job, {"model_name": "retinanet_resnet50_fpn"})
    assert "(yolov5)" in _summary(job, {})
