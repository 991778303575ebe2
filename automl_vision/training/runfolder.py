"""Reading a run folder back: the one place that knows where a sweep's files are and how to read them.

The sweep writes the folder; the sweep when it resumes, the ``leaderboard`` command and the run report
read it here:

    RUN_DIR/job.yaml                  the job as given, every default filled in
    RUN_DIR/sweep.json                every trial: parameters, status, metric history, why it ended
    RUN_DIR/leaderboard.json          trials ranked by the primary metric
    RUN_DIR/best_model/trial.json     the trial whose model ``best_model/`` holds
    RUN_DIR/trials/<id>/              result.json, config.json, metrics.jsonl of each trial

It lives with training, the lowest layer whose files it reads (a trial's result, config and metrics;
the names of a trial's files are defined here and used by ``training.trial``), and imports no torch:
the sweep, the report, the pipeline and the command line above it all read through it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automl_vision.errors import ConfigError
from automl_vision.spec.tasks import ImageTask, parse_task
from automl_vision.training.reporter import read_metrics

#: What a trial writes into its folder (``training.trial``).
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
OUTPUTS_DIR = "outputs"

JOB_FILE = "job.yaml"
SWEEP_FILE = "sweep.json"
LEADERBOARD_FILE = "leaderboard.json"
TRIALS_DIR = "trials"
BEST_MODEL_DIR = "best_model"
#: In ``best_model/``: the record of the trial the model comes from.
BEST_TRIAL_FILE = "trial.json"

#: The status of a trial the sweep's early-termination rule stopped.
POLICY_STATUSES = frozenset({"terminated"})
#: The trial's own early stopping (its primary metric stopped improving).
EARLY_STOPPED = "early_stopped"


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON document at ``path``; ``default`` when there is no such file."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


class RunFolder:
    """The files of one run folder, read on demand (a running sweep keeps rewriting them)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    def job(self) -> dict[str, Any]:
        """``job.yaml`` as a mapping (a run folder always has one)."""
        job_file = self.path / JOB_FILE
        if not job_file.is_file():
            raise ConfigError(f"{self.path}: no {JOB_FILE}; is this a run folder (automl-vision run --output-dir)?")
        return yaml.safe_load(job_file.read_text()) or {}

    def task(self, job: dict[str, Any]) -> ImageTask:
        try:
            return parse_task(job.get("task"))
        except ValueError as e:
            raise ConfigError(str(e), str(self.path / JOB_FILE)) from None

    def sweep(self) -> dict[str, Any]:
        """``sweep.json``, which must be there (the sweep of this folder)."""
        try:
            text = self.sweep_file.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {self.sweep_file}: {e.strerror}") from None
        return json.loads(text)

    def sweep_if_any(self) -> dict[str, Any]:
        """``sweep.json`` when the sweep wrote one, else ``{}``."""
        doc = read_json(self.sweep_file, {}) or {}
        return doc if isinstance(doc, dict) else {}

    def leaderboard(self) -> dict[str, Any]:
        """``leaderboard.json``; ``{}`` before the sweep wrote its first one."""
        return read_json(self.path / LEADERBOARD_FILE, {}) or {}

    def trial_dir(self, trial_id: str) -> Path:
        return self.path / TRIALS_DIR / trial_id

    def trial_ids(self) -> list[str]:
        """The trial folders there are, in order."""
        return [p.name for p in sorted((self.path / TRIALS_DIR).glob("*")) if p.is_dir()]

    def trial_result(self, trial_id: str) -> dict[str, Any]:
        return read_json(self.trial_dir(trial_id) / RESULT_FILE, {}) or {}

    def trial_config(self, trial_id: str) -> dict[str, Any]:
        return read_json(self.trial_dir(trial_id) / CONFIG_FILE, {}) or {}

    def trial_metrics(self, trial_id: str) -> list[dict[str, Any]]:
        return read_metrics(self.trial_dir(trial_id) / METRICS_FILE)

    def best_model_trial(self) -> str | None:
        """The trial whose model ``best_model/`` holds (None: no complete best_model/ there)."""
        try:
            return json.loads((self.path / BEST_MODEL_DIR / BEST_TRIAL_FILE).read_text()).get("trial_id")
        except (OSError, ValueError, AttributeError):
            return None


# --- the whole run, as the report shows it ------------------------------------------------------

@dataclass
class TrialView:
    """One trial as the run folder records it."""

    trial_id: str
    status: str
    model_name: str
    parameters: dict[str, Any]
    best_value: float | None
    best_epoch: int | None
    epochs_completed: int
    duration_s: float
    message: str
    rank: int | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: Why the sweep's rule stopped the trial, as sweep.json says (policy-stopped trials only).
    stop_reason: str = ""

    @property
    def ended(self) -> str:
        if self.status in POLICY_STATUSES:
            return "policy"
        if self.status == EARLY_STOPPED:
            return "early_stopping"
        return ""


@dataclass
class RunData:
    run_dir: Path
    job: dict[str, Any]
    task: ImageTask
    primary: str
    maximize: bool
    trials: list[TrialView]
    sweep_info: dict[str, Any]

    @property
    def best(self) -> TrialView | None:
        ranked = [t for t in self.trials if t.rank == 1]
        return ranked[0] if ranked else None


def _sweep_trials(sweep_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """trial id -> its entry in ``sweep.json`` (status, ``reason``: why it ended, ``history``)."""
    if not isinstance(sweep_info.get("trials"), list):
        return {}
    return {str(t["trial_id"]): t for t in sweep_info["trials"] if isinstance(t, dict) and t.get("trial_id")}


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Every trial of the run folder: the leaderboard's rows, completed by each trial's own files and,
    for a trial killed before it wrote its metrics, by the history sweep.json or the leaderboard kept."""
    folder = RunFolder(run_dir)
    job = folder.job()
    task = folder.task(job)
    board = folder.leaderboard()
    sweep_info = folder.sweep_if_any()
    recorded = _sweep_trials(sweep_info)
    primary = board.get("primary_metric", task.primary_metric)
    maximize = board.get("goal", "maximize" if task.maximize else "minimize") == "maximize"
    trials = []
    rows = board.get("trials") or []
    if not rows:  # a run cut short before its first leaderboard: list the trial folders
        rows = [{"trial_id": tid, "status": "unknown", "parameters": {}} for tid in folder.trial_ids()]
    for row in rows:
        tid = row["trial_id"]
        result = folder.trial_result(tid)
        config = folder.trial_config(tid)
        params = dict(row.get("parameters") or {})
        entry = recorded.get(tid, {})
        t = TrialView(
            trial_id=tid, status=row.get("status") or result.get("status", "unknown"),
            model_name=row.get("model_name") or params.get("model_name")
            or config.get("hyperparameters", {}).get("model_name", ""),
            parameters=params, best_value=row.get("best_value"), best_epoch=row.get("best_epoch"),
            epochs_completed=row.get("epochs_completed") or result.get("epochs_completed", 0),
            duration_s=float(row.get("duration_s") or result.get("duration_s") or 0.0),
            message=row.get("reason") or row.get("message") or result.get("message", ""), rank=row.get("rank"),
            evaluations=folder.trial_metrics(tid),
            hyperparameters=config.get("hyperparameters", {}),
            stop_reason=entry.get("reason") or "",
        )
        if not t.evaluations and entry.get("history"):  # a trial killed before it wrote its metrics file
            t.evaluations = [dict(h) for h in entry["history"]]
        if not t.evaluations and board.get("history", {}).get(tid):
            t.evaluations = [{"epoch": float(i + 1), primary: v} for i, v in enumerate(board["history"][tid])]
        trials.append(t)
    return RunData(folder.path, job, task, primary, maximize, trials, sweep_info)


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target``: the old one is renamed aside and deleted only once the
    new one is in place (two renames: a reader never finds a half-deleted or half-written folder, and a
    crash leaves the old one at ``target`` or beside it as ``*.old``, never neither)."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.replace(old)
    try:
        new.replace(target)
    except OSError:
        if old.exists() and not target.exists():
            old.replace(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
