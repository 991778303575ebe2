"""Running a sweep on this machine: each trial is the same ``automl-vision train`` command a
Katib trial pod runs, started as a subprocess, one after another.

The run folder:

    RUN_DIR/job.yaml              the job as given, every default filled in
    RUN_DIR/resolved_job.json     the same plus each candidate model's full hyperparameter set
    RUN_DIR/trials/trial-0000/    config.json, metrics.jsonl, train.log, console.log, result.json, outputs/
    RUN_DIR/leaderboard.csv|json  trials ranked by the primary metric
    RUN_DIR/best_model/           the best trial's model package
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.job import JobSpec, resolved
from automl_vision.sweep.sampling import sample_trials
from automl_vision.training.reporter import KATIB_METRIC_RE, parse_katib_line
from automl_vision.training.trial import OUTPUTS_DIR, TrialResult

log = logging.getLogger(__name__)

EXIT_DIVERGED = 3


@dataclass
class TrialRecord:
    trial_id: str
    parameters: dict[str, Any]
    status: str = "pending"
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_completed: int = 0
    duration_s: float = 0.0
    exit_code: int | None = None
    message: str = ""
    history: list[float] = field(default_factory=list)


@dataclass
class SweepResult:
    run_dir: Path
    primary_metric: str
    maximize: bool
    trials: list[TrialRecord]

    def ranked(self) -> list[TrialRecord]:
        """Trials with a metric, best first (ties: the earlier trial), then the others in order."""
        scored = [t for t in self.trials if t.best_value is not None]
        sign = -1 if self.maximize else 1
        scored.sort(key=lambda t: (sign * t.best_value, t.trial_id))
        return scored + [t for t in self.trials if t.best_value is None]

    @property
    def best(self) -> TrialRecord | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].best_value is not None else None


def trial_arguments(job: JobSpec, parameters: Mapping[str, Any], output_dir: str) -> list[str]:
    """The arguments of ``automl-vision`` for one trial (the Katib trial template's command)."""
    args = ["train", "--task", job.task.value, "--training_data", job.training_data]
    if job.validation_data:
        args += ["--validation_data", job.validation_data]
    values = {**job.training_parameters, **parameters}
    for name in hps.BY_NAME:  # table order, so commands read the same every time
        if name in values and values[name] is not None:
            args += [f"--{name}", format_argument(values[name])]
    args += ["--output-dir", output_dir]
    return args


def format_argument(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _trial_id(i: int) -> str:
    return f"trial-{i:04d}"


def run_sweep(job: JobSpec, run_dir: str | os.PathLike, *, device: str = "auto",
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run every trial of ``job`` into ``run_dir`` and write the leaderboard and the best model."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yaml").write_text(job.to_yaml())
    (run_dir / "resolved_job.json").write_text(json.dumps(resolved(job), indent=2))

    task = job.task
    result = SweepResult(run_dir, task.primary_metric, task.maximize, [])
    deadline = time.monotonic() + job.limits.timeout_minutes * 60
    trial_timeout = job.limits.trial_timeout_minutes * 60 if job.limits.trial_timeout_minutes else None
    samples = sample_trials(job)
    echo(f"sweep: {len(samples)} trial(s), {job.sweep.sampling_algorithm} sampling, primary metric "
         f"{task.primary_metric} ({'max' if task.maximize else 'min'}), run folder {run_dir}")
    failures = 0
    for i, params in enumerate(samples):
        rec = TrialRecord(_trial_id(i), dict(params))
        result.trials.append(rec)
        if time.monotonic() >= deadline:
            rec.status, rec.message = "skipped", "sweep timeout reached before the trial started"
            continue
        if job.limits.max_failed_trials is not None and failures > job.limits.max_failed_trials:
            rec.status, rec.message = "skipped", f"more than max_failed_trials={job.limits.max_failed_trials} failed"
            continue
        try:
            hps.resolve(task, {**job.training_parameters, **params})
        except ValueError as e:
            rec.status, rec.message = "failed", f"invalid sample: {e}"
            failures += 1
            echo(f"[{rec.trial_id}] failed before start: {e}")
            continue
        shown = ", ".join(f"{k} {format_argument(v)}" for k, v in params.items())
        echo(f"[{rec.trial_id}] {i + 1}/{len(samples)} starting: {shown or 'defaults'}")
        timeout = min(x for x in (deadline - time.monotonic(), trial_timeout) if x is not None)
        _run_trial(job, rec, run_dir / "trials" / rec.trial_id, device, timeout, echo)
        if rec.status in ("failed", "diverged", "timeout"):
            failures += 1
        value = "-" if rec.best_value is None else f"{rec.best_value:.4f}"
        echo(f"[{rec.trial_id}] {rec.status}: best {task.primary_metric} {value} "
             f"after {rec.epochs_completed} epoch(s), {rec.duration_s:.1f} s"
             + (f" ({rec.message})" if rec.message else ""))
        _write_leaderboard(result)  # kept current while the sweep runs
    _write_leaderboard(result)
    _write_best_model(result)
    return result


def _run_trial(job: JobSpec, rec: TrialRecord, trial_dir: Path, device: str, timeout: float,
               echo: Callable[[str], None]) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    args = trial_arguments(job, rec.parameters, str(trial_dir)) + ["--device", device]
    cmd = [sys.executable, "-m", "automl_vision", *args]
    (trial_dir / "command.json").write_text(json.dumps(["automl-vision", *args]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    with (trial_dir / "console.log").open("w") as console:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                console.write(line)
                if KATIB_METRIC_RE.search(line) and line[:4].isdigit():
                    metrics = parse_katib_line(line)
                    value = metrics.get(job.task.primary_metric)
                    if value is not None:
                        rec.history.append(value)
                    shown = [k for k in ("epoch", job.task.primary_metric, "loss") if k in metrics]
                    echo(f"[{rec.trial_id}] " + "  ".join(f"{k} {_fmt(metrics[k])}" for k in shown))
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    rec.status, rec.message = "timeout", f"stopped after {timeout / 60:.1f} min"
                    break
            rec.exit_code = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)) + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rec.exit_code = proc.wait()
            rec.status, rec.message = "timeout", f"stopped after {timeout / 60:.1f} min"
    rec.duration_s = round(time.monotonic() - t0, 2)
    outcome = TrialResult.read(trial_dir)
    if outcome is not None:
        rec.best_value, rec.best_epoch = outcome.best_value, outcome.best_epoch
        rec.epochs_completed = outcome.epochs_completed
    if rec.status == "timeout":
        return
    if rec.exit_code == 0 and outcome is not None:
        rec.status = outcome.status
    else:
        rec.status = "diverged" if rec.exit_code == EXIT_DIVERGED else "failed"
        rec.message = _last_error(trial_dir / "console.log")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


def _last_error(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "diverged" in ln.lower():
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


LEADERBOARD_COLUMNS = ("rank", "trial_id", "status", "model_name", "best_value", "best_epoch",
                       "epochs_completed", "duration_s", "parameters", "message")


def _leaderboard_rows(result: SweepResult) -> list[dict[str, Any]]:
    rows = []
    for rank, t in enumerate(result.ranked(), start=1):
        rows.append({
            "rank": rank if t.best_value is not None else None,
            "trial_id": t.trial_id,
            "status": t.status,
            "model_name": t.parameters.get("model_name", ""),
            "best_value": t.best_value,
            "best_epoch": t.best_epoch,
            "epochs_completed": t.epochs_completed,
            "duration_s": t.duration_s,
            "parameters": t.parameters,
            "message": t.message,
        })
    return rows


def _write_leaderboard(result: SweepResult) -> None:
    rows = _leaderboard_rows(result)
    doc = {"primary_metric": result.primary_metric, "goal": "maximize" if result.maximize else "minimize",
           "trials": rows, "history": {t.trial_id: t.history for t in result.trials}}
    _atomic_write(result.run_dir / "leaderboard.json", json.dumps(doc, indent=2))
    tmp = result.run_dir / "leaderboard.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c if c != "best_value" else result.primary_metric
                                          for c in LEADERBOARD_COLUMNS])
        w.writeheader()
        for r in rows:
            r = dict(r, parameters=json.dumps(r["parameters"], sort_keys=True))
            r[result.primary_metric] = r.pop("best_value")
            w.writerow(r)
    tmp.replace(result.run_dir / "leaderboard.csv")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_best_model(result: SweepResult) -> None:
    best = result.best
    target = result.run_dir / "best_model"
    if best is None:
        return
    source = result.run_dir / "trials" / best.trial_id / OUTPUTS_DIR
    if not source.is_dir():
        raise ConfigError(f"{best.trial_id} reported a metric but left no model in {source}")
    tmp = result.run_dir / "best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    (tmp / "trial.json").write_text(json.dumps(asdict(best), indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def format_leaderboard(result: SweepResult, limit: int = 20) -> str:
    """The leaderboard as a text table for the terminal."""
    rows = _leaderboard_rows(result)[:limit]
    head = ["rank", "trial", "status", "model", result.primary_metric, "epoch", "time s", "parameters"]
    body = []
    for r in rows:
        params = ", ".join(f"{k} {format_argument(v) if not isinstance(v, float) else f'{v:.4g}'}"
                           for k, v in r["parameters"].items() if k != "model_name")
        body.append([
            str(r["rank"] or "-"), r["trial_id"], r["status"], r["model_name"] or "-",
            "-" if r["best_value"] is None or math.isnan(r["best_value"]) else f"{r['best_value']:.4f}",
            str(r["best_epoch"] or "-"), f"{r['duration_s']:.1f}", params,
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(line.rstrip() for line in lines)
