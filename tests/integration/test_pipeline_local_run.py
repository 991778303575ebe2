"""``automl-vision run`` runs the Kubeflow pipeline on kfp's local runner by default: every step on tiny
data, our progress on the terminal (never the runner's executor JSON), the usual run folder (its
report.html the report step's page), and a bad input still exits 2 naming the line; ``--engine library``
keeps the direct path with the same folder. Runs that only are read come from the session's shared runs;
the commands run in this process except the run that is killed and its resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

STEPS = ("ingest", "preview", "sweep", "evaluate", "package", "register", "report")
RUN_FILES = {"job.yaml", "resolved_job.json", "leaderboard.csv", "leaderboard.json", "sweep.json", "best_model",
             "trials", "report.html"}


def _job(data: Path) -> dict:
    return {
        "task": "image_classification", "name": "shapes", "training_data": str(data), "limits": {"max_trials": 1},
        "sweep": {"sampling_algorithm": "grid"},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]}}],
        "training_parameters": {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 24,
                                "valid_resize_size": 24, "valid_crop_size": 24, "training_batch_size": 4},
    }


def test_run_goes_through_every_pipeline_step(reference_pipeline_run):
    # the session's `automl-vision run job.yaml --output-dir run` (the default engine) of a two-trial job
    # on make_dataset(n_per_class=6), read only; the same run is test_cli_end_to_end's whole job
    p = reference_pipeline_run
    data, run = p.data, p.run
    job = yaml.safe_load(p.job_file.read_text())
    assert job == {**_job(data), "limits": {"max_trials": 2},
                   "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]}}]}
    assert p.returncode == 0, p.stdout + p.stderr

    out = p.stdout
    for step in STEPS:
        assert f": {step} started" in out and f": {step} succeeded in " in out, step
    assert "[pipeline] step 7/7:" in out
    assert "[trial-0000] epoch 1" in out  # the sweep's own progress comes through
    for noise in ("executor_input", "KFP Executor", '"outputFile"', "Streamed logs", "DockerRunner"):
        assert noise not in out + p.stderr, noise
    assert "leaderboard:" in out and "best model:" in out
    assert "evaluation:" in out and "package:" in out
    # the preview ran before the sweep, on the job's own model, and its page is in the run folder as a .html file
    assert out.index(": preview succeeded in ") < out.index(": sweep started")
    assert "preview of 16 augmented samples from 4 images (resnet18)" in out
    assert f"preview:    {run / 'preview.html'}\n" in out
    assert "Augmentation preview" in (run / "preview.html").read_text()

    assert RUN_FILES | {"registration.json"} <= {x.name for x in run.iterdir()}  # the library engine registers nothing
    assert yaml.safe_load((run / "job.yaml").read_text())["training_data"] == str(data)  # the job as given
    summary = json.loads((run / "pipeline_run.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(STEPS, "succeeded")
    assert steps["sweep"]["outputs"]["run"]["uri"] == str(run)  # moved up into the run folder
    assert steps["ingest"]["outputs"]["statistics"]["metadata"]["images"] == 12
    assert steps["evaluate"]["outputs"]["metrics"]["metadata"]["images"] == 2
    report = Path(steps["evaluate"]["outputs"]["report"]["uri"])
    assert "data:image/png;base64," in report.read_text()
    # the run folder's report is the report step's page, which shows the evaluate step's files
    assert f"report: {run / 'report.html'}\n" in out
    page, written = (run / "report.html").read_text(), Path(steps["report"]["outputs"]["report"]["uri"]).read_text()
    moved_from = re.search(r"its package is (\S+)/best_model\.", written).group(1)
    assert moved_from.endswith("/sweep/run") and page == written.replace(moved_from, str(run))  # where it is now
    assert 'id="leaderboard-table"' in page and "learning curves of every trial" in page
    assert "<title>AutoML run report: shapes</title>" in page  # the job's name, and its data as the user gave it
    assert f"Training data: {data}</h3>" in page and f"{data} (ingested into " in page
    assert str(Path(steps["evaluate"]["outputs"]["evaluation"]["uri"])) in page
    assert not (run / "evaluation").exists()  # the best model was not scored a second time
    # the evaluate step explained its validation images (both: fewer than 4), and the report shows them
    evaluation = Path(steps["evaluate"]["outputs"]["evaluation"]["uri"])
    index = json.loads((evaluation / "explanations" / "explanations.json").read_text())
    assert index["parameters"] == {"xai_algorithm": "xrai", "visualizations": True, "attributions": False,
                                   "n_steps": 50, "xrai_fast": True, "confidence_score_threshold_multilabel": 0.5}
    assert len(index["explanations"]) == 2
    for e in index["explanations"]:
        assert (evaluation / "explanations" / e["picture"]).is_file()
        assert e["correct"] == (e["predicted"] == e["truth"]) and e["explained"] == e["predicted"][0]
    assert 'id="explanations"' in page and "XRAI (n_steps 50, xrai_fast True" in page
    assert page.count('alt="XRAI explanation"') == 2
    model = Path(steps["package"]["outputs"]["model"]["uri"])
    best = json.loads((run / "leaderboard.json").read_text())["trials"][0]
    assert best["model_name"] in ("resnet18", "mobilenetv2")
    assert json.loads((model / "package.json").read_text())["model_name"] == best["model_name"]
    assert "Got executor_input" in (run / "pipeline.log").read_text()


def test_bad_data_fails_at_ingest_with_the_line_and_exit_2(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    with data.open("a") as f:
        f.write('{"image_url": "images/missing.png", "label": "red"}\n')
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job(data)))
    p = cli_main("run", str(job_file), "--output-dir", str(tmp_path / "run"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "ingest failed" in p.stdout
    assert f"{data}:7" in p.stderr and "images/missing.png" in p.stderr
    assert "Traceback" not in p.stdout + p.stderr


def test_the_library_engine_leaves_the_same_run_folder(reference_library_run):
    # the session's `automl-vision run job.yaml --output-dir run --engine library` (one trial), read only;
    # test_serve_cli checks its packaged best model
    p = reference_library_run
    run = p.run
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[pipeline]" not in p.stdout and "best model:" in p.stdout
    assert RUN_FILES <= {x.name for x in run.iterdir()}
    assert not (run / "pipeline").exists()
    # the report scored the best model itself, and explained its validation images
    assert (run / "evaluation" / "explanations" / "explanations.json").is_file()
    assert 'id="explanations"' in (run / "report.html").read_text()


def test_a_sweep_without_a_model_stops_the_pipeline_and_still_leaves_a_report(tmp_path, make_dataset, cli_main):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    job = _job(data)
    # the one trial diverges (adam, learning rate 1, beta2 0): the sweep step fails, so the report step never runs
    job["search_space"] = [{"model_name": {"type": "choice", "values": ["resnet18"]},
                            "optimizer": {"type": "choice", "values": ["adam"]},
                            "learning_rate": {"type": "choice", "values": [1.0]},
                            "beta2": {"type": "choice", "values": [0.0]}}]
    job["training_parameters"]["number_of_epochs"] = 2
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run = tmp_path / "run"
    p = cli_main("run", str(job_file), "--output-dir", str(run), "--device", "cpu")
    assert p.returncode == 1, p.stdout + p.stderr
    assert ": sweep failed in " in p.stdout and ": report started" not in p.stdout
    assert f"report: {run / 'report.html'}\n" in p.stdout and "no trial produced a model" in p.stdout
    page = (run / "report.html").read_text()
    assert "No trial produced a model, so there is nothing to evaluate." in page and "diverged" in page


def test_a_killed_pipeline_run_resumes_with_the_library_engine_and_finishes(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    job = _job(data)
    job["limits"] = {"max_trials": 2, "max_concurrent_trials": 1}
    job["search_space"] = [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]}}]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run = tmp_path / "run"
    # the default (pipeline) engine, killed as a closed terminal or an OOM kill would: once one trial is done
    p = subprocess.Popen([sys.executable, "-m", "automl_vision", "run", str(job_file), "--output-dir", str(run),
                          "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    seen, deadline = [], time.monotonic() + 600
    for line in p.stdout:
        seen.append(line)
        if line.startswith("sweep: 1/2 trial(s) done") or time.monotonic() > deadline:
            break
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    assert seen and seen[-1].startswith("sweep: 1/2 trial(s) done"), "".join(seen)
    assert not (run / "sweep.json").exists()  # the sweep's folder is still the sweep step's own
    inner = next((run / "pipeline").glob("*/sweep/run"))
    # and killed while best_model/ was being replaced: it is gone
    shutil.rmtree(inner / "best_model", ignore_errors=True)

    # in a process of its own, as a user would: the killed run's sweep step (a process of the runner's own)
    # can hold the sweep's lock for a moment after the kill
    r = subprocess.run([sys.executable, "-m", "automl_vision", "run", str(job_file), "--resume", str(run), "--device",
                        "cpu", "--explain-images", "0"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"resuming the sweep of the pipeline run {run}" in r.stdout
    assert ": 1 finished trial(s) kept, " in r.stdout  # the other was running (run again) or not yet started
    assert f"report: {run / 'report.html'}\n" in r.stdout and "best model:" in r.stdout
    doc = json.loads((run / "sweep.json").read_text())
    assert doc["status"] == "finished" and [t["status"] for t in doc["trials"]] == ["completed", "completed"]
    best = doc["best_trial"]
    assert json.loads((run / "best_model" / "trial.json").read_text())["trial_id"] == best
    assert (run / "best_model" / "model.safetensors").is_file()
    assert not inner.exists()  # moved up into the run folder, as a finished pipeline run's is
    assert yaml.safe_load((run / "job.yaml").read_text())["training_data"] == str(data)  # the job as given
    page = (run / "report.html").read_text()
    assert 'id="leaderboard-table"' in page and "mobilenetv2" in page
