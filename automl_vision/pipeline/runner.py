"""Running a whole job on this machine: the pipeline on kfp's local runner (the default), or the sweep
alone (the library engine, and every resumed run); then the leaderboard, and the report when no
report step wrote one.

    run = run_job(job, Path("runs/my-run"))
    run.result.best       # the best trial (None: no trial produced a model)
    write_run_report("runs/my-run")   # the report, the best model scored on its validation split
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from automl_vision.errors import EXIT_BAD_INPUT
from automl_vision.pipeline.evaluate import evaluate_model
from automl_vision.pipeline.local import LocalRun, resume_run, run_pipeline_locally
from automl_vision.report import write_report
from automl_vision.spec.job import JobSpec
from automl_vision.sweep.local import SweepResult, format_leaderboard, run_sweep


def write_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     explain_images: int = -1) -> Path:
    """Write the run's ``report.html`` with the best model scored again on its validation split, and
    ``explain_images`` of its images explained (-1: the task's default, 0: none)."""
    score = functools.partial(evaluate_model, explain_images=None if explain_images < 0 else explain_images)
    return write_report(run_dir, out, score_model=score)


def default_run_dir(job: JobSpec) -> Path:
    """``runs/<job name>``, else ``runs/run-<time>``."""
    return Path("runs") / (job.name or datetime.now().strftime("run-%Y%m%d-%H%M%S"))


@dataclass
class JobRun:
    """A local run that got as far as its sweep's result."""

    job: JobSpec
    run_dir: Path
    result: SweepResult
    pipeline: LocalRun | None  # None: the library engine, or a resumed run
    started: float = field(default_factory=time.monotonic)

    @property
    def every_trial_refused(self) -> bool:
        """Every trial refused its data or settings (exit 2): the user's input, not an internal failure."""
        trials = self.result.trials
        return bool(trials) and all(t.exit_code == EXIT_BAD_INPUT for t in trials)

    def summary(self) -> str:
        """The lines that end a run with a model: the best trial and where the files are."""
        best = self.result.best
        model = (best.model_name or self.job.training_parameters.get("model_name")
                 or self.job.task.default_model)
        return (f"\nbest trial: {best.trial_id} ({model}), "
                f"{self.job.task.primary_metric} {best.best_value:.4f}\n"
                f"best model: {self.run_dir / 'best_model'}\n"
                f"run files:  {self.run_dir} (leaderboard.csv, leaderboard.json, sweep.json, trials/)\n"
                f"total time: {time.monotonic() - self.started:.0f} s")


def run_job(job: JobSpec, run_dir: Path, device: str = "auto", resume: bool = False, engine: str = "pipeline",
            echo: Callable[[str], None] = print, registry: str | None = None, registered_model: str = "",
            promotion_margin: float = 0.0, explain_images: int = -1) -> JobRun:
    """Run (or with ``resume``, continue) ``job`` into ``run_dir``; echo the leaderboard and the report's
    path. A step before the sweep that failed raises its error; one after it is left to the caller
    (``JobRun.pipeline.raise_for_failure``), which first says what the sweep produced. ``registry``,
    ``registered_model``, ``promotion_margin``: the pipeline's register step (``run_pipeline_locally``);
    ``explain_images``: the validation images explained for the report (-1: the task's default, 0: none)."""
    started = time.monotonic()
    pipeline = None
    if engine == "pipeline" and not resume:
        pipeline = run_pipeline_locally(job, run_dir, device=device, registry=registry,
                                        registered_model=registered_model, promotion_margin=promotion_margin,
                                        explain_images=explain_images, echo=echo)
        result = pipeline.sweep_result()
        if result is None:  # a step before the sweep failed
            pipeline.raise_for_failure()
    elif resume:  # with the library engine, also a pipeline run's sweep (in its step's folder, on its data)
        result = resume_run(job, run_dir, device=device, echo=echo)
    else:
        result = run_sweep(job, run_dir, device=device, echo=echo)
    echo("\nleaderboard:\n" + format_leaderboard(result))
    if pipeline is None or pipeline.step("report") is None:
        # the library engine and --resume; and a pipeline run that stopped before its report step (a sweep
        # without a model fails the sweep step), so that every local run still has its report
        echo(f"report: {write_run_report(run_dir, explain_images=explain_images)}")
    elif pipeline.report_file is not None:  # the report step's page (None: the step failed; raised later)
        echo(f"report: {pipeline.report_file}")
    return JobRun(job, run_dir, result, pipeline, started)
