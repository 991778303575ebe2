"""The local scheduler with real ``automl-vision train`` trials on tiny images: early termination
stops a real trial, concurrent trials share the cores, a failed trial does not stop the sweep,
and a sweep killed mid-way resumes to the same leaderboard. The commands run in this process
(``cli_main``) except the sweep that is killed, which needs a process of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from automl_vision.spec.job import parse_job
from automl_vision.models.device import available_cpus
from automl_vision.sweep.local import run_sweep
from automl_vision.sweep.sampling import sample_trials

pytestmark = pytest.mark.slow

SMALL = {"pretrained": False, "train_crop_size": 16, "valid_resize_size": 16, "valid_crop_size": 16,
         "training_batch_size": 8, "validation_batch_size": 16, "early_stopping": False,
         "warmup_cosine_lr_warmup_epochs": 0, "optimizer": "sgd"}


@pytest.fixture
def data(tmp_path, make_dataset):
    # three colours, 20 images each: resnet18 with sgd 0.01 separates them within three epochs (0.05
    # blows up first and recovers only with some data orders); learning_rate 0 never changes the
    # model, so it stays at chance
    return make_dataset(tmp_path / "data", n_per_class=20, classes=("red", "green", "blue"), size=16)


def _job(data: Path, lrs, *, epochs, seed, policy=None, concurrent=1, **extra) -> dict:
    job = {"task": "image_classification", "training_data": str(data),
           "limits": {"max_trials": len(lrs), "max_concurrent_trials": concurrent},
           "sweep": {"sampling_algorithm": "grid", "seed": seed, "early_termination": policy},
           "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]},
                             "learning_rate": {"type": "choice", "values": list(lrs)}}],
           "training_parameters": {**SMALL, "number_of_epochs": epochs}}
    job.update(extra)
    return job


def test_bandit_stops_a_hopeless_trial(tmp_path, data):
    policy = {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 1, "delay_evaluation": 3}
    job = parse_job(_job(data, [0.01, 0.0], epochs=4, seed=1, policy=policy))
    assert [t["learning_rate"] for t in sample_trials(job)] == [0.01, 0.0]  # the good trial runs first
    echoed: list[str] = []
    result = run_sweep(job, tmp_path / "run", device="cpu", echo=echoed.append)

    good, hopeless = result.trials
    assert (good.status, good.epochs_completed) == ("completed", 4)
    assert good.best_value >= 0.6  # it learned; the other never changes its random weights
    # at interval 3 its best (about chance) is below the good trial's best over intervals 1..3
    # divided by 1.2: stopped there, before it reported epoch 4
    best3 = max(good.values[:3])
    assert max(hopeless.values) < best3 / 1.2
    assert hopeless.status == "terminated"
    assert hopeless.reason.startswith("terminated by bandit at interval 3 (epoch 3): bandit: best ")
    assert hopeless.reason.endswith(f"/ (1 + 0.2) = {best3 / 1.2:.4g} at interval 3 -> terminate")
    assert hopeless.epochs_completed == 3
    folder = tmp_path / "run" / "trials" / hopeless.trial_id
    console = (folder / "console.log").read_text()
    assert " epoch=3 " in console and " epoch=4 " not in console
    assert json.loads((folder / "result.json").read_text())["status"] == "terminated"
    assert any(line.startswith(f"[{hopeless.trial_id}] terminated by bandit") for line in echoed)

    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert sweep["status"] == "finished" and sweep["best_trial"] == good.trial_id
    assert sweep["compute"]["trial_epochs"] == 7
    assert sweep["compute"]["trial_epochs_without_early_termination"] == 8
    assert sweep["compute"]["saved_share"] == 0.125
    by_id = {t["trial_id"]: t for t in sweep["trials"]}
    assert [h["epoch"] for h in by_id[hopeless.trial_id]["history"]] == [1, 2, 3]
    assert by_id[hopeless.trial_id]["parameters"] == {"model_name": "resnet18", "learning_rate": 0.0}
    assert json.loads((tmp_path / "run" / "best_model" / "trial.json").read_text())["trial_id"] == good.trial_id


def test_concurrent_trials_and_a_failure(tmp_path, data):
    # one trial diverges (adam, learning rate 1, beta2 0); the sweep goes on
    job = _job(data, [0.05], epochs=2, seed=0, concurrent=2)
    job["limits"]["max_trials"] = 3
    job["training_parameters"] = {k: v for k, v in job["training_parameters"].items() if k != "optimizer"}
    job["search_space"] = [
        {"model_name": {"type": "choice", "values": ["resnet18"]},
         "learning_rate": {"type": "choice", "values": [0.05, 0.02]}},
        {"model_name": {"type": "choice", "values": ["resnet18"]}, "optimizer": {"type": "choice", "values": ["adam"]},
         "learning_rate": {"type": "choice", "values": [1.0]}, "beta2": {"type": "choice", "values": [0.0]}},
    ]
    result = run_sweep(parse_job(job), tmp_path / "run", device="cpu", echo=lambda s: None)
    statuses = sorted(t.status for t in result.trials)
    assert statuses == ["completed", "completed", "diverged"]
    diverged = next(t for t in result.trials if t.status == "diverged")
    assert diverged.parameters["optimizer"] == "adam" and "training diverged" in diverged.reason
    assert result.best is not None and result.best.status == "completed"
    # two at once, the cores divided between them
    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert sweep["max_concurrent_trials"] == 2
    assert all(t["threads"] == max(1, available_cpus() // 2) for t in sweep["trials"])
    first, second = sorted(sweep["trials"], key=lambda t: t["index"])[:2]
    assert second["started_at"] <= first["ended_at"]  # the second started before the first ended


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "automl_vision", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _board(run: Path) -> list[tuple]:
    board = json.loads((run / "leaderboard.json").read_text())
    return [(t["rank"], t["trial_id"], t["status"], t["best_value"], t["best_epoch"], t["epochs_completed"],
             json.dumps(t["parameters"], sort_keys=True)) for t in board["trials"]]


def _processes_using(folder: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(folder) in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def test_killed_sweep_resumes_to_the_same_leaderboard(tmp_path, data, cli_main):
    policy = {"type": "bandit", "slack_factor": 0.2, "delay_evaluation": 2}
    job = _job(data, [0.05, 0.0, 0.02], epochs=3, seed=1, policy=policy)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))

    reference = tmp_path / "reference"
    # --engine library: the sweep alone (the default runs it inside the local Kubeflow pipeline)
    # (the reports explain nothing: resuming is what this test is about)
    p = cli_main("run", str(job_file), "--engine", "library", "--output-dir", str(reference), "--explain-images", "0")
    assert p.returncode == 0, p.stdout + p.stderr

    run = tmp_path / "run"
    p = _cli("run", str(job_file), "--engine", "library", "--output-dir", str(run), "--explain-images", "0")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # kill it while its second trial is training
            try:
                trials = json.loads((run / "sweep.json").read_text())["trials"]
            except (OSError, ValueError):
                trials = []
            if len(trials) >= 2 and trials[1]["status"] == "running" and trials[1]["history"]:
                break
            assert p.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        p.send_signal(signal.SIGKILL)  # a crash: no clean-up at all
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    first = run / "trials" / "trial-0000"
    first_result = (first / "result.json").read_text()
    first_mtime = (first / "result.json").stat().st_mtime_ns
    killed = json.loads((run / "sweep.json").read_text())
    assert killed["status"] == "running" and killed["trials"][1]["status"] == "running"

    # a plain run into the folder is refused; --resume continues it
    again = cli_main("run", str(job_file), "--engine", "library", "--output-dir", str(run), "--explain-images", "0")
    out = again.stdout + again.stderr
    assert again.returncode == 2 and "holds an unfinished sweep" in out and f"--resume {run}" in out
    resumed = cli_main("run", str(job_file), "--resume", str(run), "--explain-images", "0")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert "1 finished trial(s) kept, 1 to run again" in out

    assert _board(run) == _board(reference)
    # the finished trial was not run again; the interrupted one was, and nothing is left of its first run
    assert (first / "result.json").stat().st_mtime_ns == first_mtime
    assert (first / "result.json").read_text() == first_result
    assert "starting" not in "".join(ln for ln in out.splitlines() if ln.startswith("[trial-0000]"))
    assert _processes_using(run / "trials" / "trial-0001") == []
    assert json.loads((run / "sweep.json").read_text())["status"] == "finished"

    shown = cli_main("leaderboard", str(run))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split()[:3] == ["1", _board(reference)[0][1], "completed"]
    assert "sweep finished" in shown.stdout

