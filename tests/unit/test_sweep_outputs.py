"""The local runner's files and refusals, without training: leaderboard CSV/JSON, ``sweep.json``
round trip, resume errors, the run-folder lock, resources per trial."""

from __future__ import annotations

import csv
import json
import os
import threading
import time

import pytest

from automl_vision.errors import ConfigError
from automl_vision.spec.job import parse_job
from automl_vision.sweep.command import trial_arguments
from automl_vision.sweep.core import TrialRecord
from automl_vision.sweep.local import (
    LOCK_FILE,
    SweepResult,
    _Lock,
    _Sweep,
    format_leaderboard,
    load_sweep,
    run_sweep,
    visible_gpus,
    write_leaderboard,
)
from automl_vision.training.trial import default_num_workers

JOB = {"task": "image_classification", "training_data": "/data/train.jsonl",
       "limits": {"max_trials": 3},
       "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                         "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}],
       "training_parameters": {"number_of_epochs": 2, "pretrained": False}}


def _result(tmp_path):
    trials = [
        TrialRecord("trial-0000", 0, {"model_name": "resnet18", "learning_rate": 0.01}, status="completed",
                    best_value=0.8, best_epoch=2, epochs_completed=2, duration_s=10.0, values=[0.7, 0.8],
                    epochs=[1, 2], losses=[0.5, 0.4], reason="completed its 2 epoch(s)"),
        TrialRecord("trial-0001", 1, {"model_name": "mobilenetv2", "learning_rate": 0.05}, status="terminated",
                    best_value=0.3, best_epoch=1, epochs_completed=1, planned_epochs=2, duration_s=4.0,
                    values=[0.3], epochs=[1], losses=[1.2], reason="terminated by bandit at interval 1"),
        TrialRecord("trial-0002", 2, {"model_name": "resnet18", "learning_rate": 0.09}, status="completed",
                    best_value=0.8, best_epoch=1, epochs_completed=2, duration_s=9.0, values=[0.8, 0.75],
                    epochs=[1, 2], losses=[0.4, 0.45]),
        TrialRecord("trial-0003", 3, {"model_name": "resnet18", "learning_rate": 0.5}, status="diverged",
                    reason="training diverged: training loss nan"),
    ]
    return SweepResult(tmp_path, "accuracy", True, trials)


def test_leaderboard_files(tmp_path):
    write_leaderboard(_result(tmp_path))
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert board["primary_metric"] == "accuracy" and board["goal"] == "maximize"
    # ties on 0.8: the earlier trial first; the diverged trial has no rank
    assert [(t["rank"], t["trial_id"]) for t in board["trials"]] == [
        (1, "trial-0000"), (2, "trial-0002"), (3, "trial-0001"), (None, "trial-0003")]
    assert board["history"]["trial-0000"] == [0.7, 0.8]
    with (tmp_path / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "trial_id", "status", "model_name", "accuracy", "best_epoch",
                             "epochs_completed", "duration_s", "parameters", "reason"]
    assert rows[2]["reason"] == "terminated by bandit at interval 1"
    assert json.loads(rows[0]["parameters"]) == {"learning_rate": 0.01, "model_name": "resnet18"}


def test_format_leaderboard(tmp_path):
    text = format_leaderboard(_result(tmp_path), limit=3)
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "trial", "status", "model", "accuracy", "epoch", "epochs", "time", "s",
                                "parameters"]
    assert lines[1].split()[:5] == ["1", "trial-0000", "completed", "resnet18", "0.8000"]
    assert lines[3].split()[:3] == ["3", "trial-0001", "terminated"]
    assert lines[-1] == f"... 1 more trial(s) in {tmp_path / 'leaderboard.csv'}"


def test_load_sweep_reads_what_the_runner_writes(tmp_path):
    result = _result(tmp_path)
    doc = {"status": "finished", "primary_metric": "accuracy", "goal": "maximize", "compute": {"trial_epochs": 5},
           "trials": [t.to_json("accuracy") for t in result.trials]}
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    loaded = load_sweep(tmp_path)
    assert loaded.trials == result.trials
    assert loaded.best.trial_id == "trial-0000" and loaded.compute == {"trial_epochs": 5}


def _sweep_json(run_dir, job, status="running", trials=()):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep.json").write_text(json.dumps({
        "status": status, "primary_metric": "accuracy", "goal": "maximize",
        "job": job.model_dump(mode="json"), "trials": list(trials), "elapsed_s": 12.0}))


@pytest.mark.parametrize("setup, resume, message", [
    ("none", True, "holds no sweep.json: there is no sweep to resume there"),
    ("unfinished", False, "holds an unfinished sweep (1 trial(s) finished); continue it with --resume"),
    ("other-space", True, "the job differs from the one RUN was started with in search_space; a resumed sweep may "
                          "change only compute, limits, name"),
    ("other-data", True, "the job differs from the one RUN was started with in training_data, training_parameters"),
])
def test_resume_refusals(tmp_path, setup, resume, message):
    run_dir = tmp_path / "run"
    job = parse_job(JOB)
    done = {"trial_id": "trial-0000", "index": 0, "parameters": {}, "status": "completed"}
    if setup == "unfinished":
        _sweep_json(run_dir, job, trials=[done])
    elif setup == "other-space":
        _sweep_json(run_dir, parse_job({**JOB, "search_space": [{"model_name": "resnet18"}]}))
    elif setup == "other-data":
        _sweep_json(run_dir, parse_job({**JOB, "training_data": "/other.jsonl",
                                        "training_parameters": {"number_of_epochs": 3}}))
    with pytest.raises(ConfigError) as e:
        run_sweep(job, run_dir, device="cpu", echo=lambda s: None, resume=resume)
    assert message.replace("RUN", str(run_dir)) in str(e.value)


def test_resume_of_a_finished_sweep_with_more_trials_allowed(tmp_path):
    # limits may change: nothing to run when the kept trials already fill max_trials
    run_dir = tmp_path / "run"
    job = parse_job(JOB)
    trials = [{"trial_id": f"trial-{i:04d}", "index": i, "parameters": {"model_name": "resnet18"},
               "status": "failed", "reason": "invalid sample"} for i in range(3)]
    _sweep_json(run_dir, parse_job({**JOB, "limits": {"max_trials": 2}}), status="finished", trials=trials)
    lines = []
    result = run_sweep(job, run_dir, device="cpu", echo=lines.append, resume=True)
    assert [t.status for t in result.trials] == ["failed"] * 3
    assert "resuming" in lines[0] and "3 finished trial(s) kept, 0 to run again" in lines[0]
    assert json.loads((run_dir / "sweep.json").read_text())["status"] == "finished"


def test_invalid_samples_fail_and_max_failed_trials_stops_the_sweep(tmp_path):
    # learning_rate normal(-1, 0.01) is always negative: every trial fails before it starts
    job = parse_job({**JOB, "limits": {"max_trials": 10, "max_failed_trials": 2},
                     "search_space": [{"model_name": "resnet18",
                                       "learning_rate": {"type": "normal", "mu": -1, "sigma": 0.01}}]})
    lines = []
    result = run_sweep(job, tmp_path / "run", device="cpu", echo=lines.append)
    assert [t.status for t in result.trials] == ["failed"] * 3
    assert result.trials[0].reason.startswith("invalid sample: learning_rate=-")
    assert result.stopped_because == "3 trial(s) failed, more than max_failed_trials=2"
    assert "sweep: stopped, 3 trial(s) failed, more than max_failed_trials=2; 7 trial(s) not started" in lines
    assert result.best is None


def test_one_sweep_per_run_folder(tmp_path):
    with _Lock(tmp_path / LOCK_FILE):
        with pytest.raises(ConfigError, match=r"is in use by another sweep \(process \d+, still running after 0.3 s\)"):
            with _Lock(tmp_path / LOCK_FILE, wait_s=0.3):
                pass
    with _Lock(tmp_path / LOCK_FILE):  # released
        pass


def test_a_resume_waits_for_the_lock_of_a_sweep_that_is_going_away(tmp_path):
    # a killed sweep's process holds the lock until the kernel has torn it down
    held = _Lock(tmp_path / LOCK_FILE).__enter__()
    timer = threading.Timer(0.5, held.__exit__, (None, None, None))
    timer.start()
    t0 = time.monotonic()
    with _Lock(tmp_path / LOCK_FILE, wait_s=10):
        waited = time.monotonic() - t0
    timer.join()
    assert 0.4 < waited < 5


@pytest.mark.parametrize("cores, concurrent", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 4), (8, 1), (16, 2), (32, 1)])
def test_trials_get_the_workers_train_would_on_their_cores(monkeypatch, tmp_path, cores, concurrent):
    """A trial's DataLoader workers are those ``train`` picks by itself on a machine of the trial's share of cores."""
    job = parse_job({**JOB, "limits": {"max_trials": 8, "max_concurrent_trials": concurrent}})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    sweep = _Sweep(job, tmp_path, "cpu", print, False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(sweep.threads)), raising=False)
    assert sweep.workers == default_num_workers()
    if (cores, concurrent) == (2, 1):
        assert sweep.workers == 1  # one worker decodes while the model computes, as in `train`


@pytest.mark.parametrize("device, env, gpus", [
    ("cpu", "0,1", []),
    ("cuda:1", "0,1", []),
    ("auto", "0,1", ["0", "1"]),
    ("cuda", "3, 5", ["3", "5"]),
    ("auto", "", []),
    ("auto", "-1", []),
])
def test_visible_gpus(monkeypatch, device, env, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus(device) == gpus


def test_trial_arguments_are_the_katib_command():
    job = parse_job(JOB)
    args = trial_arguments(job, {"model_name": "mobilenetv2", "learning_rate": 0.02}, "/out")
    assert args == ["train", "--task", "image_classification", "--training_data", "/data/train.jsonl",
                    "--model_name", "mobilenetv2", "--number_of_epochs", "2", "--learning_rate", "0.02",
                    "--pretrained", "0", "--output-dir", "/out"]


def test_the_leaderboard_names_a_model_set_in_training_parameters(tmp_path):
    # the model is not a sampled parameter here: the record keeps the one the trial was given
    job = parse_job({**JOB, "training_data": str(tmp_path / "missing.jsonl"), "limits": {"max_trials": 1},
                     "search_space": [{"learning_rate": {"type": "choice", "values": [0.01]}}],
                     "training_parameters": {"number_of_epochs": 1, "model_name": "mobilenetv2"}})
    result = run_sweep(job, tmp_path / "run", device="cpu", echo=lambda s: None)
    (trial,) = result.trials
    assert trial.status == "failed" and trial.parameters == {"learning_rate": 0.01}
    assert trial.model_name == "mobilenetv2"
    assert load_sweep(tmp_path / "run").trials[0].model_name == "mobilenetv2"  # kept in sweep.json
    board = json.loads((tmp_path / "run" / "leaderboard.json").read_text())
    assert board["trials"][0]["model_name"] == "mobilenetv2"
    assert format_leaderboard(result).splitlines()[1].split()[:4] == ["-", "trial-0000", "failed", "mobilenetv2"]
