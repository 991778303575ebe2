"""``automl-vision run`` runs the Kubeflow pipeline on kfp's local runner by default: every step on tiny
data, our progress on the terminal (never the runner's executor JSON), the usual run folder, and a bad
input still exits 2 naming the line; ``--engine library`` keeps the direct path with the same folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

RUN_FILES = {"job.yaml", "resolved_job.json", "leaderboard.csv", "leaderboard.json", "sweep.json", "best_model",
             "trials", "report.html"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def _job(data: Path) -> dict:
    return {
        "task": "image_classification", "training_data": str(data), "limits": {"max_trials": 1},
        "sweep": {"sampling_algorithm": "grid"},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]}}],
        "training_parameters": {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 24,
                                "valid_resize_size": 24, "valid_crop_size": 24, "training_batch_size": 4},
    }


def test_run_goes_through_every_pipeline_step(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job(data)))
    run = tmp_path / "run"
    p = cli("run", str(job_file), "--output-dir", str(run), "--device", "cpu")
    assert p.returncode == 0, p.stdout + p.stderr

    out = p.stdout
    for step in ("ingest", "preview", "sweep", "evaluate", "package"):
        assert f": {step} started" in out and f": {step} succeeded in " in out, step
    assert "[pipeline] step 5/5:" in out
    assert "[trial-0000] epoch 1" in out  # the sweep's own progress comes through
    for noise in ("executor_input", "KFP Executor", '"outputFile"', "Streamed logs", "DockerRunner"):
        assert noise not in out + p.stderr, noise
    assert "leaderboard:" in out and "best model:" in out
    assert "evaluation:" in out and "package:" in out

    assert RUN_FILES <= {x.name for x in run.iterdir()}
    assert yaml.safe_load((run / "job.yaml").read_text())["training_data"] == str(data)  # the job as given
    summary = json.loads((run / "pipeline_run.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(
        ["ingest", "preview", "sweep", "evaluate", "package"], "succeeded")
    assert steps["sweep"]["outputs"]["run"]["uri"] == str(run)  # moved up into the run folder
    assert steps["ingest"]["outputs"]["statistics"]["metadata"]["images"] == 12
    assert steps["evaluate"]["outputs"]["metrics"]["metadata"]["images"] == 2
    report = Path(steps["evaluate"]["outputs"]["report"]["uri"])
    assert "data:image/png;base64," in report.read_text()
    model = Path(steps["package"]["outputs"]["model"]["uri"])
    assert json.loads((model / "package.json").read_text())["model_name"] == "resnet18"
    assert "Got executor_input" in (run / "pipeline.log").read_text()


def test_bad_data_fails_at_ingest_with_the_line_and_exit_2(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    with data.open("a") as f:
        f.write('{"image_url": "images/missing.png", "label": "red"}\n')
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job(data)))
    p = cli("run", str(job_file), "--output-dir", str(tmp_path / "run"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "ingest failed" in p.stdout
    assert f"{data}:7" in p.stderr and "images/missing.png" in p.stderr
    assert "Traceback" not in p.stdout + p.stderr


def test_the_library_engine_leaves_the_same_run_folder(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job(data)))
    run = tmp_path / "run"
    p = cli("run", str(job_file), "--output-dir", str(run), "--engine", "library")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[pipeline]" not in p.stdout and "best model:" in p.stdout
    assert RUN_FILES <= {x.name for x in run.iterdir()}
    assert not (run / "pipeline").exists()
