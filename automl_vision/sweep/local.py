"""Running a sweep on this machine: each trial is the same ``automl-vision train`` command a
Katib trial pod runs, started as a subprocess, up to ``max_concurrent_trials`` at once.

The run folder:

    RUN_DIR/job.yaml              the job as given, every default filled in
    RUN_DIR/resolved_job.json     the same plus each candidate model's full hyperparameter set
    RUN_DIR/sweep.json            every trial: parameters, status, metric history, why it ended;
                                  the compute used against the compute without early termination
    RUN_DIR/leaderboard.csv|json  trials ranked by the primary metric (kept current while it runs)
    RUN_DIR/best_model/           the best trial's model package
    RUN_DIR/trials/trial-0000/    command.json, config.json, metrics.jsonl, train.log, console.log,
                                  result.json, outputs/

Resources: the CPU cores are divided among the concurrent trials (``OMP_NUM_THREADS`` and the
DataLoader workers of each trial); where GPUs exist each trial gets one of its own
(``CUDA_VISIBLE_DEVICES``), and no more trials run at once than there are GPUs.
A killed sweep continues with ``run_sweep(..., resume=True)``: finished trials are kept, trials
that were running are run again from the start with the same parameters.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from automl_vision.errors import EXIT_DIVERGED, EXIT_OK, ConfigError
from automl_vision.models.device import available_cpus
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.automode import AUTOMODE_MIN_SEARCH_SHARE, AUTOMODE_REFIT_SHARE, MAX_TRIALS
from automl_vision.spec.job import JobSpec, resolved
from automl_vision.spec.termination import rungs, trial_bracket
from automl_vision.sweep.automode import (
    AutoModeJob,
    WarmStart,
    fingerprint_of,
    fits_space,
    prepare_automode,
    warm_start_seeds,
)
from automl_vision.sweep.command import format_argument, trial_arguments
from automl_vision.sweep.core import FAILED, FINISHED, RANKED, RERUN, SweepState, TrialRecord, trial_id
from automl_vision.sweep.sampling import Observation, make_sampler
from automl_vision.training.reporter import KATIB_METRIC_RE, parse_katib_line
from automl_vision.training.runfolder import OUTPUTS_DIR, RESULT_FILE, SWEEP_FILE, RunFolder, replace_folder
from automl_vision.training.trial import TrialResult, default_num_workers

log = logging.getLogger(__name__)

LOCK_FILE = ".sweep.lock"
#: How long a sweep waits for the lock of a run folder a killed sweep may still hold.
LOCK_WAIT_S = 10.0
SWEEP_FORMAT = 1
#: Seconds a terminated trial gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
#: Least seconds between two rewrites of the live files while metrics arrive.
WRITE_INTERVAL_S = 1.0
#: Job keys a resumed sweep may change (more trials or time; cluster settings local runs ignore).
MAY_CHANGE_ON_RESUME = frozenset({"limits", "name", "compute"})

__all__ = ["SweepResult", "TrialRecord", "format_leaderboard", "load_sweep", "run_sweep"]


@dataclass
class SweepResult:
    run_dir: Path
    primary_metric: str
    maximize: bool
    trials: list[TrialRecord]
    status: str = "finished"
    stopped_because: str = ""
    compute: dict[str, Any] = field(default_factory=dict)

    def _state(self) -> SweepState:
        return SweepState(self.primary_metric, self.maximize, None, self.trials)

    def ranked(self) -> list[TrialRecord]:
        """Trials with a metric, best first (ties: the earlier trial), then the others in order."""
        return self._state().ranked()

    @property
    def best(self) -> TrialRecord | None:
        return self._state().best


# --- the trial command ---------------------------------------------------------------------------

def visible_gpus(device: str) -> list[str]:
    """GPUs to hand out one per trial: none for ``cpu`` or an explicit ``cuda:N`` (every trial uses
    that one), else those in ``CUDA_VISIBLE_DEVICES`` or all that torch sees."""
    if device == "cpu" or device.startswith("cuda:"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and not g.strip().startswith("-")]
    return [str(i) for i in range(torch.cuda.device_count())]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


def _show_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {f'{v:.4g}' if isinstance(v, float) else format_argument(v)}"
                     for k, v in params.items()) or "defaults"


def _last_error(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    for ln in reversed(lines):
        if "error" in ln.lower() or "diverged" in ln.lower():
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


# --- a running trial -----------------------------------------------------------------------------

@dataclass
class _Running:
    rec: TrialRecord
    proc: subprocess.Popen
    console: IO[str]
    trial_dir: Path
    started: float
    eof: bool = False
    kill_at: float | None = None  # SIGKILL after this time (set when asked to stop)
    stop_asked: float | None = None


def _read_lines(tid: str, stream: IO[str], events: queue.Queue) -> None:
    for line in stream:
        events.put((tid, line))
    events.put((tid, None))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the trial and the processes it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- the sweep -----------------------------------------------------------------------------------

class _Sweep:
    def __init__(self, job: JobSpec, run_dir: Path, device: str, echo: Callable[[str], None], resume: bool,
                 onnx: bool = True, automode: AutoModeJob | None = None):
        self.automode = automode or AutoModeJob(job)
        job = self.automode.job
        self.job, self.run_dir, self.device, self.echo, self.resume = job, run_dir, device, echo, resume
        self.warm = WarmStart()
        self.suggested: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # index -> a suggestion not yet started
        self.budget_s = job.limits.budget * 3600 if job.limits.budget is not None else None
        self.refit_started = False
        self.onnx = onnx
        self.task = job.task
        self.primary = job.task.primary_metric
        self.policy = job.sweep.early_termination
        self.sampler = make_sampler(job)
        self.state = SweepState(self.primary, job.task.maximize, self.policy)
        self.elapsed_before = 0.0
        self.status = "running"
        self.stopped_because = ""
        self.events: queue.Queue = queue.Queue()
        self.running: dict[str, _Running] = {}
        self.last_write = 0.0
        self.best_copied: str | None = None
        self.rerun: dict[int, dict[str, Any]] = {}  # index -> record of a trial to run again (resume)

        gpus = visible_gpus(device)
        wanted = job.limits.max_concurrent_trials
        self.concurrency = min(wanted, len(gpus)) if gpus else wanted
        self.free_gpus = list(gpus)
        self.threads = max(1, available_cpus() // self.concurrency)
        self.cores = max(1, available_cpus())
        self.budget_unit = "GPU-hours" if gpus else f"CPU-hours (hours of this machine's {self.cores} core(s))"
        # the rule `train` applies on a machine of its own, applied to this trial's share of the cores
        self.workers = default_num_workers(processes=self.concurrency)
        self.resources = (f"{self.concurrency} at once" + (f" (one GPU each, {len(gpus)} GPU(s))" if gpus else "")
                          + f", {self.threads} CPU thread(s) each")
        if gpus and wanted > len(gpus):
            self.resources += f"; max_concurrent_trials={wanted} lowered to the number of GPUs"

    # -- start, resume ---------------------------------------------------------------------------

    def prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        sweep_file = self.run_dir / SWEEP_FILE
        if self.resume:
            if not sweep_file.is_file():
                inner = next(iter(sorted(self.run_dir.glob(f"*/**/{SWEEP_FILE}"))), None)
                hint = f"; the sweep of this run is in {inner.parent}: resume that folder" if inner else ""
                raise ConfigError(f"{self.run_dir} holds no {SWEEP_FILE}: there is no sweep to resume there{hint}")
            self._load(RunFolder(self.run_dir).sweep())
        elif sweep_file.is_file():
            previous = RunFolder(self.run_dir).sweep()
            if previous.get("status") != "finished":
                done = sum(1 for t in previous.get("trials", []) if t.get("status") in FINISHED)
                raise ConfigError(
                    f"{self.run_dir} holds an unfinished sweep ({done} trial(s) finished); continue it with "
                    f"--resume {self.run_dir}, or choose another --output-dir")
            self.echo(f"sweep: {self.run_dir} held a finished sweep; starting a new one there")
            for name in ("trials", "best_model", "leaderboard.csv", "leaderboard.json", SWEEP_FILE):
                path = self.run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        (self.run_dir / "job.yaml").write_text(self.job.to_yaml())
        (self.run_dir / "resolved_job.json").write_text(json.dumps(resolved(self.job), indent=2))

    def _load(self, doc: dict[str, Any]) -> None:
        before = doc.get("job", {})
        now = self.job.model_dump(mode="json")
        differ = sorted(k for k in set(before) | set(now)
                        if k not in MAY_CHANGE_ON_RESUME and before.get(k) != now.get(k))
        if differ:
            raise ConfigError(f"the job differs from the one {self.run_dir} was started with in "
                              f"{', '.join(differ)}; a resumed sweep may change only "
                              f"{', '.join(sorted(MAY_CHANGE_ON_RESUME))}")
        self.elapsed_before = float(doc.get("elapsed_s", 0.0))
        # The trial whose model best_model/ holds, as best_model/ itself says: sweep.json names the best trial
        # even while it runs (a killed sweep runs it again), or before its copy was done.
        self.best_copied = RunFolder(self.run_dir).best_model_trial()
        kept = rerun = 0
        for d in doc.get("trials", []):
            rec = TrialRecord.from_json(d, self.primary)
            if rec.status in RERUN:
                self._stop_orphan(rec)
                rerun += 1
                continue  # run again from the start, with the same parameters (below)
            self.state.add(rec)
            kept += 1
        self.rerun = {d["index"]: d for d in doc.get("trials", []) if d.get("status") in RERUN}
        self.echo(f"sweep: resuming {self.run_dir}: {kept} finished trial(s) kept, {rerun} to run again, "
                  f"{self.elapsed_before / 60:.1f} min already spent")

    def _stop_orphan(self, rec: TrialRecord) -> None:
        """A trial still running from the killed sweep would write into the folder we reuse: stop it."""
        if not rec.pid:
            return
        folder = str(self.run_dir / "trials" / rec.trial_id)

        def alive() -> bool:
            try:
                return folder in Path(f"/proc/{rec.pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                return False

        if not alive():
            return
        try:
            os.killpg(rec.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        self.echo(f"sweep: stopped {rec.trial_id}'s process {rec.pid}, left running by the killed sweep")
        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        limits = self.job.limits
        total = self.sampler.total
        policy = "no early termination" if self.policy is None else \
            f"{self.policy.type} early termination ({_policy_settings(self.policy)})"
        trials = f"{total} trial(s)"
        if self.budget_s is not None:
            trials = (f"a budget of {limits.budget:g} {self.budget_unit}"
                      + (f", at most {total} trial(s)" if total < MAX_TRIALS else ""))
        if self.warm.seeds:
            trials += f", the first {len(self.warm.seeds)} warm started"
        elif self.automode.plan is not None and self.first_trials():
            trials += ", the first at AutoMode's starting point"
        self.echo(f"sweep: {trials}, {self.sampler.description}, {policy}; {self.resources}; "
                  f"primary metric {self.primary} ({'max' if self.task.maximize else 'min'}); "
                  f"run folder {self.run_dir}")
        self.t0 = time.monotonic()
        deadline = self.t0 + limits.timeout_minutes * 60 - self.elapsed_before
        trial_timeout = limits.trial_timeout_minutes * 60 if limits.trial_timeout_minutes else None
        todo = [i for i in range(total) if trial_id(i) not in self.state.trials]
        failures = sum(1 for t in self.state.trials.values() if t.status in FAILED)
        self._write(force=True)
        try:
            while True:
                now = time.monotonic()
                if now >= deadline and not self.stopped_because:
                    self.stopped_because = f"timeout_minutes={limits.timeout_minutes} reached"
                    for r in list(self.running.values()):
                        self._stop(r, "canceled", f"canceled: the sweep's {self.stopped_because}")
                if (limits.max_failed_trials is not None and failures > limits.max_failed_trials
                        and not self.stopped_because):
                    self.stopped_because = (f"{failures} trial(s) failed, more than "
                                            f"max_failed_trials={limits.max_failed_trials}")
                while todo and not self.stopped_because and len(self.running) < self.concurrency:
                    if not self._budget_allows(todo[0]):
                        break
                    failures += self._start(todo.pop(0), total)
                    if limits.max_failed_trials is not None and failures > limits.max_failed_trials:
                        break
                self._check_budget()
                if not self.running and (not todo or self.stopped_because):
                    break
                self._pump(timeout=0.5)
                now = time.monotonic()
                for r in list(self.running.values()):
                    if r.kill_at is not None and now >= r.kill_at and r.proc.poll() is None:
                        _signal_group(r.proc, signal.SIGKILL)
                    if (trial_timeout is not None and r.kill_at is None
                            and now - r.started > trial_timeout):
                        self._stop(r, "timeout", f"stopped after its trial_timeout_minutes="
                                                 f"{limits.trial_timeout_minutes}")
                    if r.eof and r.proc.poll() is not None:
                        self._finish(r, total)
                        failures += r.rec.status in FAILED
        except BaseException:
            for r in list(self.running.values()):
                _signal_group(r.proc, signal.SIGKILL)
                r.rec.status, r.rec.reason = "interrupted", "the sweep was interrupted; a resumed sweep runs it again"
                r.proc.wait()
                self._finish(r, total, quiet=True)
            self.status = "interrupted"
            self._write(force=True)
            self.echo(f"sweep: interrupted; finished trials are kept in {self.run_dir}: continue with "
                      f"automl-vision run JOB.yaml --resume {self.run_dir}")
            raise
        if self.stopped_because and todo:
            not_started = (f"{len(todo)} trial(s) not started" if self.sampler.total < MAX_TRIALS
                           else "no further trial started")
            self.echo(f"sweep: stopped, {self.stopped_because}; {not_started}")
        self.status = "finished"
        self._write(force=True)
        best = self.result().best
        if self.onnx and best is not None:
            # once, for the final best: exporting on every change of the best would hold the scheduler up
            _write_best_model(self.result(), best, onnx=True, validation_data=self._gate_data(best))

    def _gate_data(self, best: TrialRecord) -> str | None:
        """The labelled JSONL the final ONNX export is checked on: the job's validation data, else the best
        trial's own validation split (rebuilt from JSONL training data; None for other sources)."""
        if self.job.validation_data:
            return str(self.job.validation_data)
        training = str(self.job.training_data)
        config = self.run_dir / "trials" / best.trial_id / OUTPUTS_DIR / "config.json"
        if not training.endswith(".jsonl") or not config.is_file():
            return None
        from automl_vision.data.load import split_jsonl  # reads and validates the data: only here

        hp = json.loads(config.read_text()).get("hyperparameters", {})
        return str(split_jsonl(training, self.task, self.run_dir / "export_check",
                               ratio=hp.get("split_ratio", 0.2), seed=hp.get("seed", 0)).validation)

    def _suggest(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Trial ``index``'s parameters (and the sampler's): a trial run again keeps its own, the first
        trials of a warm-started sweep are the seeds, the others come from the sampler. Kept until the
        trial starts, so that the budget check and the start see the same trial."""
        if index in self.suggested:
            return self.suggested[index]
        previous = self.rerun.get(index)
        first = self.first_trials()
        if previous is not None:
            out = previous["parameters"], previous.get("sampler_params", {})
        elif index < len(first):
            out = dict(first[index][0]), dict(first[index][1])
        else:
            observations = [self._observation(t) for t in sorted(self.state.trials.values(), key=lambda t: t.index)]
            suggestion = self.sampler.suggest(index - len(first), observations)
            out = suggestion.parameters, suggestion.sampler_params
        self.suggested[index] = out
        return out

    def first_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The trials before the sampler's: the warm start's seeds, then AutoMode's starting point (unless a
        seed is the same point), each with what the sweep records as its sampler's parameters."""
        out = [(dict(seed.parameters), {"warm_start": seed.source}) for seed in self.warm.seeds]
        start = self.automode.plan.start if self.automode.plan is not None else None
        if start is not None and all(start != params for params, _ in out) and fits_space(start, self.job):
            out.append((dict(start), {"automode_start": True}))
        return out[:self.sampler.total]

    def _start(self, index: int, total: int) -> int:
        """Start trial ``index``; returns 1 when it failed before starting (an invalid sample), else 0."""
        tid = trial_id(index)
        params, sampler_params = self._suggest(index)
        self.suggested.pop(index, None)
        rec = self.state.add(TrialRecord(tid, index, dict(params), dict(sampler_params)))
        try:
            values = hps.resolve(self.task, {**self.job.training_parameters, **params})
        except ValueError as e:
            rec.status, rec.reason = "failed", f"invalid sample: {'; '.join(str(e).splitlines())}"
            rec.started_at = rec.ended_at = _now()
            self.echo(f"[{tid}] failed before start: {rec.reason}")
            self._write(force=True)
            return 1
        rec.model = values.get("model_name")
        rec.exempt = "automode_refit" in sampler_params  # the best settings again, longer: not judged
        rec.planned_epochs = values["number_of_epochs"]
        rec.planned_intervals = math.ceil(values["number_of_epochs"] / values["evaluation_frequency"])
        trial_dir = self.run_dir / "trials" / tid
        if trial_dir.exists():
            shutil.rmtree(trial_dir)  # a trial run again after a crash starts from nothing
        trial_dir.mkdir(parents=True)
        args = trial_arguments(self.job, params, str(trial_dir)) + ["--device", self.device]
        (trial_dir / "command.json").write_text(json.dumps(["automl-vision", *args]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(self.threads),
                   MKL_NUM_THREADS=str(self.threads))
        rec.gpu = self.free_gpus.pop(0) if self.free_gpus else None
        if rec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = rec.gpu
        rec.threads = self.threads
        rec.device_share = 1.0 if rec.gpu is not None else round(self.threads / self.cores, 4)
        cmd = [sys.executable, "-m", "automl_vision", *args, "--num_workers", str(self.workers)]
        console = (trial_dir / "console.log").open("w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env, start_new_session=True)
        rec.status, rec.pid, rec.started_at = "running", proc.pid, _now()
        r = _Running(rec, proc, console, trial_dir, time.monotonic())
        self.running[tid] = r
        threading.Thread(target=_read_lines, args=(tid, proc.stdout, self.events), daemon=True).start()
        place = f"{index + 1}" if self.budget_s is not None and total >= MAX_TRIALS else f"{index + 1}/{total}"
        warm = (" (warm start)" if "warm_start" in sampler_params else
                " (AutoMode's starting point)" if "automode_start" in sampler_params else
                f" (AutoMode's final training: {sampler_params['automode_refit']}'s settings for the rest of "
                "the budget)" if "automode_refit" in sampler_params else "")
        self.echo(f"[{tid}] {place} starting{warm}: {_show_params(params)}")
        self._write(force=True)
        return 0

    # -- the compute budget ----------------------------------------------------------------------

    def _used_s(self) -> float:
        """Device-seconds used so far: every trial's wall time times the share of the devices it holds."""
        now = time.monotonic()
        used = 0.0
        for t in self.state.trials.values():
            r = self.running.get(t.trial_id)
            seconds = now - r.started if r is not None else t.duration_s
            used += seconds * (t.device_share if t.device_share is not None else 1.0)
        return used

    def _cost_model(self, params: Mapping[str, Any]) -> tuple[float, float] | None:
        """(start-up seconds, seconds an epoch) of a trial like ``params`` on this machine, from the report
        times of the trials so far with the same model and sizes (else of any trial): the median epoch
        time between reports and the median time to the first report less its epochs. None before any
        trial has reported."""
        like: list[TrialRecord] = []
        other: list[TrialRecord] = []
        key = _cost_key(params, self.job)
        for t in self.state.trials.values():
            if t.report_s and t.epochs:
                (like if _cost_key(t.parameters, self.job) == key else other).append(t)
        trials = like or other
        if not trials:
            return None
        rates = [(t.report_s[-1] - t.report_s[0]) / (t.epochs[-1] - t.epochs[0])
                 for t in trials if len(t.report_s) > 1 and t.epochs[-1] > t.epochs[0]]
        if not rates:  # one report each: all of it counts as epochs (an estimate on the high side)
            rates = [t.report_s[0] / t.epochs[0] for t in trials]
            return 0.0, _median(rates)
        rate = _median(rates)
        return _median([max(t.report_s[0] - t.epochs[0] * rate, 0.0) for t in trials]), rate

    def _plan(self, params: Mapping[str, Any]) -> tuple[int, int] | None:
        """(planned epochs, epochs per reported value) of a trial; None for an invalid sample (it fails
        at once and costs nothing)."""
        try:
            values = hps.resolve(self.task, {**self.job.training_parameters, **params})
        except ValueError:
            return None
        return int(values["number_of_epochs"]), int(values["evaluation_frequency"])

    def _new_trial_share(self) -> float:
        """The share of the devices the next trial will hold: a GPU of its own, else its threads' cores."""
        return 1.0 if self.free_gpus else self.threads / self.cores

    def _stage_end(self, trial_id: str, reported: int, planned: int, every: int) -> int:
        """The epoch a trial's current stage ends at: with ASHA or Hyperband its next rung (a trial is
        judged there, and most end there), else its planned last epoch."""
        policy = self.policy
        if policy is not None and policy.type in ("asha", "hyperband"):
            bracket = trial_bracket(policy, trial_id)
            nxt = [r for r in rungs(policy, bracket, up_to=math.ceil(planned / every)) if r > reported]
            if nxt:
                return min(nxt[0] * every, planned)
        return planned

    def _committed_s(self, skip: str | None = None) -> float:
        """Device-seconds used plus what the running trials (but ``skip``) are expected to use until the
        end of their current stage."""
        total = self._used_s()
        now = time.monotonic()
        for r in self.running.values():
            t = r.rec
            if t.trial_id == skip or not t.planned_epochs or r.kill_at is not None:
                continue
            model = self._cost_model(t.parameters)
            if model is None:
                continue
            startup, rate = model
            end = t.planned_epochs if t.exempt else self._stage_end(t.trial_id, len(t.values), t.planned_epochs,
                                                                    _epochs_per_report(t))
            expected = startup + end * rate
            total += max(expected - (now - r.started), 0.0) * (t.device_share or 1.0)
        return total

    def _budget_allows(self, index: int) -> bool:
        """Whether trial ``index`` can start within the budget: what is used and committed to the running
        trials, plus this trial's estimated cost to the end of its first stage (its first rung under ASHA
        or Hyperband, else all its planned epochs), must fit. With no estimate yet (no trial has
        reported), it starts while the budget is not spent."""
        if self.budget_s is None:
            return True
        params, _ = self._suggest(index)
        committed = self._committed_s()
        model, plan = self._cost_model(params), self._plan(params)
        share = self._new_trial_share()
        estimate = 0.0
        if model is not None and plan is not None:
            planned, every = plan
            estimate = (model[0] + self._stage_end(trial_id(index), 0, planned, every) * model[1]) * share
        refit = self._refit_pending()
        limit = self._search_limit() if refit else self.budget_s
        if committed + estimate <= limit and committed < limit:
            return True
        if refit and not self.running:
            self.refit_started = True
            params = self._refit_params(committed)
            if params is not None:
                self.suggested[index] = params, {"automode_refit": self.state.best.trial_id}
                self.echo(f"sweep: the search has used {committed / 3600:.4f} of {self.job.limits.budget:g} "
                          f"{self.budget_unit}; AutoMode's final training: {self.state.best.trial_id}'s settings "
                          f"for {params['number_of_epochs']} epoch(s)")
                return True
            self.echo(f"sweep: no final training (the rest of the budget would not train "
                      f"{self.state.best.trial_id if self.state.best else 'a trial'} longer than it was); "
                      "the search goes on with the whole budget")
            return self._budget_allows(index)
        if not self.running and not self.stopped_because:
            self.stopped_because = (
                f"the budget of {self.job.limits.budget:g} {self.budget_unit} is spent: {committed / 3600:.4f} used"
                + (f"; the next trial would need about {estimate / 3600:.4f} more" if estimate else ""))
        return False

    def _refit_pending(self) -> bool:
        """AutoMode with a budget keeps its last share for training its best settings longer."""
        return (self.automode.plan is not None and self.budget_s is not None and not self.refit_started
                and "number_of_epochs" not in self.job.training_parameters)

    def _search_limit(self) -> float:
        """The device-seconds AutoMode's search may use before its final training: 70% of a budget that pays
        for at least 7 trials like the starting point (measured once it has ended), else 10% for each such
        trial it pays for, and at least 30%: the smaller the budget, the more of it goes into one model."""
        share = 1 - AUTOMODE_REFIT_SHARE
        start = next((t for t in self.state.trials.values()
                      if "automode_start" in t.sampler_params and t.status in FINISHED and t.duration_s > 0), None)
        if start is not None:
            cost = start.duration_s * (start.device_share or 1.0)
            share = min(share, max(AUTOMODE_MIN_SEARCH_SHARE, 0.1 * self.budget_s / cost))
        return self.budget_s * share

    def _refit_params(self, committed: float) -> dict[str, Any] | None:
        """The best trial's settings with as many epochs as the rest of the budget pays for at the
        measured start-up and epoch times; None when that is no more than it had (or nothing is measured)."""
        best = self.state.best
        if best is None:
            return None
        model, plan = self._cost_model(best.parameters), self._plan(best.parameters)
        if model is None or plan is None:
            return None
        startup, rate = model
        share = self._new_trial_share()
        # 10% kept back: a final training stopped by the budget before its schedule ends loses its last epochs
        epochs = int(0.9 * ((self.budget_s - committed) / share - startup) / rate)
        if epochs <= plan[0]:
            return None
        params = {**best.parameters, "number_of_epochs": epochs}
        if "early_stopping" not in self.job.training_parameters:
            # a long schedule's first epochs, at a high learning rate, are not a plateau to stop on
            params["early_stopping"] = False
        return params

    def _budget_allows_going_on(self, r: _Running) -> bool:
        """Whether a trial the policy just let go on can pay for its next stage (to its next rung, or its
        end), next to what the other running trials are committed to."""
        if self.budget_s is None:
            return True
        t = r.rec
        if "automode_start" in t.sampler_params:
            # the model a small budget relies on trains until its end or the budget's, whichever comes first
            return True
        model = self._cost_model(t.parameters)
        if model is None or not t.planned_epochs:
            return True
        end = self._stage_end(t.trial_id, len(t.values), t.planned_epochs, _epochs_per_report(t))
        left = max(model[0] + end * model[1] - (time.monotonic() - r.started), 0.0) * (t.device_share or 1.0)
        # while AutoMode's final training is still to come, the search keeps to its share
        limit = self._search_limit() if self._refit_pending() else self.budget_s
        return self._committed_s(skip=t.trial_id) + left <= limit

    def _check_budget(self) -> None:
        """Running trials past the budget (they took longer than estimated) are stopped, keeping their best epoch."""
        if self.budget_s is None or not self.running or self._used_s() < self.budget_s:
            return
        if not self.stopped_because:
            self.stopped_because = f"the budget of {self.job.limits.budget:g} {self.budget_unit} is spent"
        for r in list(self.running.values()):
            if r.kill_at is None:
                self._stop(r, "terminated", f"stopped: the sweep's budget of {self.job.limits.budget:g} "
                                            f"{self.budget_unit} is spent")

    def budget_json(self) -> dict[str, Any] | None:
        if self.budget_s is None:
            return None
        used = self._used_s()
        return {"budget": self.job.limits.budget, "unit": self.budget_unit, "used": round(used / 3600, 5),
                "left": round(max(self.budget_s - used, 0.0) / 3600, 5)}

    def _observation(self, t: TrialRecord) -> Observation:
        if t.status == "running":
            return Observation(t.sampler_params, "running")
        if t.status in RANKED and t.best_value is not None:
            return Observation(t.sampler_params, "complete", t.best_value)
        return Observation(t.sampler_params, "failed")

    def _pump(self, timeout: float) -> None:
        """Handle the lines the trials printed, waiting up to ``timeout`` for the first."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            tid, line = item
            r = self.running.get(tid)
            if r is not None:
                if line is None:
                    r.eof = True
                else:
                    self._line(r, line)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
        self._write()

    def _line(self, r: _Running, line: str) -> None:
        r.console.write(line)
        r.console.flush()
        if not (line[:4].isdigit() and KATIB_METRIC_RE.search(line)):
            return
        metrics = parse_katib_line(line)
        value = metrics.get(self.primary)
        if value is None or r.rec.status != "running":
            return
        epoch = metrics.get("epoch")
        r.rec.report_s.append(round(time.monotonic() - r.started, 2))
        decision = self.state.report(r.rec.trial_id, int(epoch) if epoch is not None else None, value,
                                     metrics.get("loss"))
        shown = [k for k in ("epoch", self.primary, "loss") if k in metrics]
        self.echo(f"[{r.rec.trial_id}] " + "  ".join(f"{k} {_fmt(metrics[k])}" for k in shown))
        if decision is not None and decision.terminate:
            self.state.terminate(r.rec.trial_id, decision)
            self.echo(f"[{r.rec.trial_id}] {r.rec.reason}")
            self._kill(r)
        elif decision is not None and not self._budget_allows_going_on(r):
            self._stop(r, "terminated", f"stopped at interval {len(r.rec.values)} (epoch {r.rec.epochs[-1]}): "
                                        f"{decision.rule}, but the budget of {self.job.limits.budget:g} "
                                        f"{self.budget_unit} cannot pay for its next stage")

    def _kill(self, r: _Running) -> None:
        _signal_group(r.proc, signal.SIGTERM)
        r.stop_asked = time.monotonic()
        r.kill_at = r.stop_asked + KILL_GRACE_S

    def _stop(self, r: _Running, status: str, reason: str) -> None:
        r.rec.status, r.rec.reason = status, reason
        self.echo(f"[{r.rec.trial_id}] {reason}")
        self._kill(r)

    def _finish(self, r: _Running, total: int, quiet: bool = False) -> None:
        rec = r.rec
        r.console.close()
        self.running.pop(rec.trial_id, None)
        if rec.gpu is not None:
            self.free_gpus.append(rec.gpu)
        rec.exit_code = r.proc.returncode
        rec.duration_s = round(time.monotonic() - r.started, 2)
        if r.stop_asked is not None:
            rec.stop_s = round(time.monotonic() - r.stop_asked, 2)
        rec.ended_at = _now()
        outcome = TrialResult.read(r.trial_dir)
        if outcome is not None and outcome.status in ("completed", "early_stopped"):
            rec.epochs_completed = outcome.epochs_completed
            if outcome.best_value is not None:  # the value of the model it saved
                rec.best_value, rec.best_epoch = outcome.best_value, outcome.best_epoch
        if rec.status == "running":  # it ended on its own
            if rec.exit_code == EXIT_OK and outcome is not None:
                rec.status = outcome.status
                rec.reason = (f"completed its {rec.epochs_completed} epoch(s)" if outcome.status == "completed" else
                              f"stopped by its own early stopping after {rec.epochs_completed} epoch(s): "
                              f"{self.primary} stopped improving")
            else:
                rec.status = "diverged" if rec.exit_code == EXIT_DIVERGED else "failed"
                rec.reason = _last_error(r.trial_dir / "console.log")
        elif not (r.trial_dir / RESULT_FILE).is_file():
            # stopped by the sweep: the folder says so too
            TrialResult(status=rec.status, primary_metric=self.primary, best_value=rec.best_value,
                        best_epoch=rec.best_epoch, epochs_completed=rec.epochs_completed,
                        duration_s=rec.duration_s, message=rec.reason).write(r.trial_dir)
        if quiet:
            return
        value = "-" if rec.best_value is None else f"{rec.best_value:.4f}"
        self.echo(f"[{rec.trial_id}] {rec.status}: best {self.primary} {value} after {rec.epochs_completed} "
                  f"epoch(s), {rec.duration_s:.1f} s" + (f" ({rec.reason})" if rec.status in FAILED else ""))
        self._write(force=True)
        done = sum(1 for t in self.state.trials.values() if t.status in FINISHED)
        best = self.state.best
        self.echo(f"sweep: {done}/{total} trial(s) done, {len(self.running)} running; best so far "
                  + (f"{best.trial_id} {self.primary} {best.best_value:.4f}" if best else "none"))

    # -- outputs ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - getattr(self, "t0", time.monotonic()))

    def result(self) -> SweepResult:
        trials = sorted(self.state.trials.values(), key=lambda t: t.index)
        return SweepResult(self.run_dir, self.primary, self.task.maximize, trials, self.status,
                           self.stopped_because, self.state.compute())

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < WRITE_INTERVAL_S:
            return
        self.last_write = now
        result = self.result()
        best = result.best
        doc = {
            "format": SWEEP_FORMAT,
            "status": self.status,
            "stopped_because": self.stopped_because,
            "primary_metric": self.primary,
            "goal": "maximize" if self.task.maximize else "minimize",
            "sampling": self.sampler.description,
            "early_termination": None if self.policy is None else self.policy.model_dump(mode="json"),
            "trials_planned": self.sampler.total,
            "max_concurrent_trials": self.concurrency,
            "threads_per_trial": self.threads,
            "elapsed_s": round(self.elapsed(), 1),
            "best_trial": best.trial_id if best else None,
            "counts": self.state.counts(),
            "compute": result.compute,
            "budget": self.budget_json(),
            "dataset_fingerprint": (self.automode.fingerprint.to_json()
                                    if self.automode.fingerprint is not None else None),
            "automode": self.automode.to_json(),
            "warm_start": self.warm.to_json() if self.job.sweep.warm_start else None,
            "job": self.job.model_dump(mode="json"),
            "trials": [t.to_json(self.primary) for t in result.trials],
        }
        _atomic_write(self.run_dir / SWEEP_FILE, json.dumps(doc, indent=1))
        write_leaderboard(result)
        if best is not None and best.trial_id != self.best_copied and best.trial_id not in self.running:
            if _write_best_model(result, best):
                self.best_copied = best.trial_id


#: The hyperparameters that set a trial's cost per epoch, besides its model.
_COST_KEYS = ("train_crop_size", "img_size", "min_size", "max_size", "model_size", "training_batch_size",
              "tile_grid_size")


def _epochs_per_report(t: TrialRecord) -> int:
    return max(1, round(t.planned_epochs / t.planned_intervals)) if t.planned_intervals else 1


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _cost_key(params: Mapping[str, Any], job: JobSpec) -> tuple:
    merged = {**job.training_parameters, **params}
    return (merged.get("model_name"),) + tuple(merged.get(k) for k in _COST_KEYS)


def _policy_settings(policy) -> str:
    return ", ".join(f"{k} {v}" for k, v in policy.model_dump().items() if k != "type" and v is not None)


def run_sweep(job: JobSpec, run_dir: str | os.PathLike, *, device: str = "auto",
              echo: Callable[[str], None] = print, resume: bool = False, onnx: bool = True) -> SweepResult:
    """Run every trial of ``job`` into ``run_dir`` and write the leaderboard, ``sweep.json`` and the
    best model; with ``resume``, continue the sweep a killed run left in ``run_dir``.

    ``best_model/`` follows the best trial while the sweep runs; with ``onnx``, the final best model is
    packaged with its ONNX export once the sweep has finished (the pipeline leaves that to its package
    step)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _Lock(run_dir / LOCK_FILE):
        automode = prepare_automode(job, fingerprint_of(job))
        if automode.plan is not None:
            echo(f"sweep: {automode.plan.summary()}")
        sweep = _Sweep(job, run_dir, device, echo, resume, onnx, automode)
        sweep.prepare()
        if sweep.job.sweep.warm_start:
            sweep.warm = warm_start_seeds(sweep.job, automode.fingerprint, sweep.sampler.total, echo)
        sweep.run()
        result = sweep.result()
        compute = result.compute
        if job.sweep.early_termination is not None:
            echo(f"sweep: compute {compute['trial_epochs']} trial-epoch(s), {compute['trial_seconds']:.0f} s; "
                 f"without early termination {compute['trial_epochs_without_early_termination']} trial-epoch(s), "
                 f"about {compute['trial_seconds_without_early_termination']:.0f} s "
                 f"({compute['saved_share']:.0%} saved)")
        return result


class _Lock:
    """One sweep at a time per run folder (released by the OS if the process dies).

    A sweep killed a moment ago may hold the lock until the kernel has torn its process down (seconds
    for a large one), so a resume started right after the kill waits up to ``wait_s`` for it."""

    def __init__(self, path: Path, wait_s: float = LOCK_WAIT_S):
        self.path, self.wait_s = path, wait_s

    def __enter__(self):
        import fcntl  # POSIX only

        self.f = self.path.open("a+")
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                self.f.seek(0)
                holder = self.f.read().strip() or "?"
                self.f.close()
                raise ConfigError(f"{self.path.parent} is in use by another sweep (process {holder}, still "
                                  f"running after {self.wait_s:g} s)") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


# --- reading a run folder ------------------------------------------------------------------------

def load_sweep(run_dir: str | os.PathLike) -> SweepResult:
    """The sweep recorded in ``run_dir/sweep.json`` (finished, running or killed)."""
    run_dir = Path(run_dir)
    doc = RunFolder(run_dir).sweep()
    primary = doc["primary_metric"]
    trials = [TrialRecord.from_json(d, primary) for d in doc["trials"]]
    return SweepResult(run_dir, primary, doc["goal"] == "maximize", trials, doc.get("status", ""),
                       doc.get("stopped_because", ""), doc.get("compute", {}))


# --- leaderboard and best model ------------------------------------------------------------------

LEADERBOARD_COLUMNS = ("rank", "trial_id", "status", "model_name", "best_value", "best_epoch",
                       "epochs_completed", "duration_s", "parameters", "reason")


def _leaderboard_rows(result: SweepResult) -> list[dict[str, Any]]:
    rows = []
    rank = 0
    for t in result.ranked():
        ranked = t.status in RANKED and t.best_value is not None
        rank += ranked
        rows.append({
            "rank": rank if ranked else None,
            "trial_id": t.trial_id,
            "status": t.status,
            "model_name": t.model_name or "",
            "best_value": t.best_value,
            "best_epoch": t.best_epoch,
            "epochs_completed": t.epochs_completed,
            "duration_s": t.duration_s,
            "parameters": t.parameters,
            "reason": t.reason,
        })
    return rows


def write_leaderboard(result: SweepResult) -> None:
    """``leaderboard.json`` (with each trial's metric history) and ``leaderboard.csv``."""
    rows = _leaderboard_rows(result)
    doc = {"primary_metric": result.primary_metric, "goal": "maximize" if result.maximize else "minimize",
           "status": result.status, "compute": result.compute, "trials": rows,
           "history": {t.trial_id: t.values for t in result.trials}}
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


def _write_best_model(result: SweepResult, best: TrialRecord, *, onnx: bool = False,
                      validation_data: str | None = None) -> bool:
    """Copy the best trial's model package to ``best_model/`` (with ``onnx``, its ONNX export, gated on
    ``validation_data``); False when it left none."""
    source = result.run_dir / "trials" / best.trial_id / OUTPUTS_DIR
    if not (source / "model.safetensors").is_file():
        log.warning("%s has the best %s but left no model in %s", best.trial_id, result.primary_metric, source)
        return False
    target = result.run_dir / "best_model"
    tmp = result.run_dir / "best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    from automl_vision.serving.export import package_model  # settings.json, ONNX export, README

    package_model(source, tmp, onnx=onnx, validation_data=validation_data)
    (tmp / "trial.json").write_text(json.dumps(best.to_json(result.primary_metric), indent=2))
    replace_folder(tmp, target)
    return True


def format_leaderboard(result: SweepResult, limit: int = 20) -> str:
    """The leaderboard as a text table for the terminal."""
    rows = _leaderboard_rows(result)
    hidden = len(rows) - limit
    rows = rows[:limit]
    head = ["rank", "trial", "status", "model", result.primary_metric, "epoch", "epochs", "time s", "parameters"]
    body = []
    for r in rows:
        params = ", ".join(f"{k} {format_argument(v) if not isinstance(v, float) else f'{v:.4g}'}"
                           for k, v in r["parameters"].items() if k != "model_name")
        body.append([
            str(r["rank"] or "-"), r["trial_id"], r["status"], r["model_name"] or "-",
            "-" if r["best_value"] is None or math.isnan(r["best_value"]) else f"{r['best_value']:.4f}",
            str(r["best_epoch"] or "-"), str(r["epochs_completed"]), f"{r['duration_s']:.1f}", params,
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    if hidden > 0:
        lines.append(f"... {hidden} more trial(s) in {result.run_dir / 'leaderboard.csv'}")
    return "\n".join(line.rstrip() for line in lines)
