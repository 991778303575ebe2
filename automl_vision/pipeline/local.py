"""Running the pipeline on this machine with kfp's local runner, the way ``automl-vision run`` does.

kfp's ``SubprocessRunner(use_venv=False)`` runs each step as a subprocess of this Python
environment and prints everything: its own log records, each step's full executor input JSON,
the step's output. Here that stream goes to ``RUN_DIR/pipeline.log`` in full; the terminal gets
our own progress (step n/N, its duration, the numbers of its Metrics outputs) and what the steps
themselves print (the sweep's trial progress), never the executor JSON.

After the run, the sweep step's run folder is moved up into ``RUN_DIR`` and the report step's page
copied to ``RUN_DIR/report.html`` (its paths into the sweep's folder pointing where it is now), so a
pipeline run leaves the same folder as the library path (see README, "The run folder"); every step's
other outputs stay in kfp's layout under ``RUN_DIR/pipeline/``, listed in ``RUN_DIR/pipeline_run.json``.
"""

from __future__ import annotations

import builtins
import contextlib
import html
import importlib
import io
import json
import logging
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automl_vision.errors import AutoMLError, ConfigError, DataError
from automl_vision.spec.job import JobSpec, load_job, resolved
from automl_vision.training.runfolder import replace_folder

log = logging.getLogger(__name__)

PIPELINE_ROOT = "pipeline"  # RUN_DIR/pipeline: kfp's local pipeline root
LOG_FILE = "pipeline.log"
SUMMARY_FILE = "pipeline_run.json"
SWEEP_STEP, SWEEP_RUN_OUTPUT = "sweep", "run"
PACKAGE_STEP, PACKAGE_OUTPUT = "package", "model"
REPORT_STEP, REPORT_OUTPUT, REPORT_FILE = "report", "report", "report.html"
PREVIEW_STEP, PREVIEW_OUTPUT, PREVIEW_FILE = "preview", "preview", "preview.html"
REGISTER_STEP, REGISTER_OUTPUT, REGISTRATION_FILE = "register", "registration", "registration.json"
#: Without a registry given, a local run keeps its versions in this folder beside the run folder, so the
#: next run of the job (into a new or the same run folder) finds the champion there.
LOCAL_REGISTRY_DIR = "model_registry"
#: (step, output, file in RUN_DIR): the steps' HTML pages copied into the run folder after the run (kfp names
#: an artifact's file after the output, without .html, which a browser may not open as a page)
RUN_FOLDER_OUTPUTS = ((REPORT_STEP, REPORT_OUTPUT, REPORT_FILE), (PREVIEW_STEP, PREVIEW_OUTPUT, PREVIEW_FILE))
#: (step, output, what it is) printed at the end of a run
SHOWN_OUTPUTS = (("ingest", "dataset", "data"), ("preview", "preview", "preview"),
                 ("evaluate", "report", "evaluation"), ("package", "model", "package"))

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp's local log records: "21:50:10.080 - INFO - message" (logging_utils.MillisecondFormatter)
_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - ([A-Z]+) - (.*)$")
_EXECUTING = re.compile(r"^Executing task '([^']+)'")
_FINISHED = re.compile(r"^Task '([^']+)' finished with status (SUCCESS|FAILURE)")
# what the kfp executor inside a step prints about itself: "[KFP Executor 2026-01-01 10:00:00,123 INFO]: ..."
_EXECUTOR = re.compile(r"^\[KFP Executor [^\]]*\]: (.*)$")


class PipelineStepFailed(AutoMLError):
    """A step of the local pipeline run failed with an error outside our error family."""


@dataclass
class StepRecord:
    """One step of a local run as this process saw it."""

    name: str
    status: str = "running"  # running | succeeded | failed
    duration_s: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)  # artifacts (uri, metadata) and parameters
    output_lines: list[str] = field(default_factory=list)  # what the step itself printed
    _t0: float = 0.0
    _executor_output: str | None = None


@dataclass
class LocalRun:
    """A finished local run: its steps in the order they ran, where its files are."""

    run_dir: Path
    steps: list[StepRecord]
    duration_s: float

    @property
    def failed_step(self) -> StepRecord | None:
        return next((s for s in self.steps if s.status != "succeeded"), None)

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def artifact_path(self, step: str, output: str) -> Path | None:
        """The local path of one output artifact of a step that ran (None when it did not)."""
        record = self.step(step)
        art = record.outputs.get(output) if record else None
        return Path(art["uri"]) if isinstance(art, dict) and "uri" in art else None

    @property
    def registration(self) -> dict[str, Any] | None:
        """What the register step recorded (``registration.json``; None when it did not run or failed)."""
        record, path = self.step(REGISTER_STEP), self.artifact_path(REGISTER_STEP, REGISTER_OUTPUT)
        if record is None or record.status != "succeeded" or path is None or not (path / REGISTRATION_FILE).is_file():
            return None
        return json.loads((path / REGISTRATION_FILE).read_text())

    @property
    def report_file(self) -> Path | None:
        """``RUN_DIR/report.html`` when the report step wrote it in this run (None when it failed or never ran)."""
        record, path = self.step(REPORT_STEP), self.run_dir / REPORT_FILE
        return path if record is not None and record.status == "succeeded" and path.is_file() else None

    def sweep_result(self):
        """The sweep's result read back from the run folder (None when the sweep left none)."""
        # The sweep's modules import torch (seconds): only once there is a sweep to read, here and below.
        from automl_vision.sweep.local import load_sweep
        from automl_vision.training.runfolder import SWEEP_FILE

        return load_sweep(self.run_dir) if (self.run_dir / SWEEP_FILE).is_file() else None

    def describe(self) -> str:
        """Where the other steps' outputs are, for the end of a run's output."""
        lines = [f"pipeline:   {len(self.steps)} step(s) in {self.duration_s:.0f} s; log {self.run_dir / LOG_FILE}, "
                 f"steps {self.run_dir / SUMMARY_FILE}"]
        copied = {(step, output): self.run_dir / name for step, output, name in RUN_FOLDER_OUTPUTS}
        for step, output, what in SHOWN_OUTPUTS:
            path = self.artifact_path(step, output)
            record = self.step(step)
            if (step, output) in copied and copied[step, output].is_file() and record and record.status == "succeeded":
                path = copied[step, output]  # the page's copy in the run folder, named .html
            if path is not None and path.exists():
                lines.append(f"{what + ':':11s} {path}")
        registered = self.registration
        if registered and registered.get("version"):
            decision = registered["decision"]
            lines.append(f"registry:   {registered['registered_model']} version {registered['version']} in "
                         f"{registered['registry']}; {'champion' if registered['champion'] else 'not promoted'}: "
                         f"{decision['reason']}")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """pipeline_run.json: each step's status, duration and outputs (paths, metrics)."""
        return {"pipeline_root": str(self.run_dir / PIPELINE_ROOT), "duration_s": self.duration_s,
                "steps": [{k: v for k, v in asdict(s).items() if not k.startswith("_") and k != "output_lines"}
                          for s in self.steps]}

    def raise_for_failure(self) -> None:
        """Raise the failed step's error as our own exception type (bad input stays bad input)."""
        failed = self.failed_step
        if failed is None:
            return
        raise step_error(failed, self.run_dir / LOG_FILE)


def run_pipeline_locally(job: JobSpec, run_dir: str | Path, *, device: str = "auto", registry: str | None = None,
                         registered_model: str = "", promotion_margin: float = 0.0, explain_images: int = -1,
                         echo: Callable[[str], None] = print) -> LocalRun:
    """Run the whole pipeline for ``job`` on kfp's local runner into ``run_dir``. ``registry``: a Kubeflow
    Model Registry URL or a local registry folder, '' none; None: ``LOCAL_REGISTRY_DIR`` beside ``run_dir``.

    Returns the run whether or not every step succeeded; ``LocalRun.raise_for_failure`` raises the
    failed step's error.
    """
    from automl_vision.pipeline.pipeline import (  # kfp and the pipeline (seconds): not for `run --resume`
        automl_vision_pipeline,
        pipeline_arguments,
    )

    if registry and "://" in registry:
        raise ConfigError(f"registry {registry}: a run on this machine leaves its package on this machine, which a "
                          "Kubeflow Model Registry cannot point a cluster at; run with a local registry folder (the "
                          "default) and then `automl-vision register RUN_DIR --registry URL --upload s3://...`, or "
                          "run the job on Kubeflow with --kubeflow")
    if registry is None:
        registry = str(default_registry(run_dir))
    elif registry:
        registry = str(Path(registry).absolute())  # the steps run in other folders
    arguments = pipeline_arguments(job, device=device, registry=registry, registered_model=registered_model,
                                   promotion_margin=promotion_margin, explain_images=explain_images)
    # the job as given, from the start: what `run --resume` checks a killed run's job against
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_job(job, Path(run_dir))
    run = run_locally(automl_vision_pipeline, arguments, run_dir, echo=echo)
    _collect(run, job)
    return run


def default_registry(run_dir: str | Path) -> Path:
    """The local registry of a run on this machine without a registry given: beside its run folder."""
    return Path(run_dir).absolute().parent / LOCAL_REGISTRY_DIR


def resume_run(job: JobSpec, run_dir: str | Path, *, device: str = "auto", echo: Callable[[str], None] = print):
    """Continue the sweep of a killed run in ``run_dir`` with the library engine and return its result.

    A pipeline run's sweep ran in the sweep step's own folder (under ``run_dir/pipeline/``) on the ingest
    step's copy of the data: it is continued there on that same copy (so ``job``, as the user gave it, may
    keep its own training_data), then moved up into ``run_dir`` as a finished pipeline run's is. A run of
    the library engine is continued in ``run_dir`` itself."""
    from automl_vision.sweep.local import load_sweep, run_sweep  # torch: see LocalRun.sweep_result
    from automl_vision.training.runfolder import SWEEP_FILE

    run_dir = Path(run_dir)
    if not (run_dir / PIPELINE_ROOT).is_dir():
        return run_sweep(job, run_dir, device=device, echo=echo, resume=True)
    sweep_dir = run_dir if (run_dir / SWEEP_FILE).is_file() else _killed_sweep(run_dir)
    started = run_dir / "job.yaml"
    if started.is_file():
        before = load_job(started)
        differ = [k for k in ("task", "training_data", "validation_data") if getattr(before, k) != getattr(job, k)]
        if differ:
            raise ConfigError(f"the job differs from the one {run_dir} was started with in {', '.join(differ)} "
                              f"({'; '.join(f'{k}: {getattr(before, k)} then, {getattr(job, k)} now' for k in differ)})"
                              "; resume with the job the run was started with")
    try:
        recorded = json.loads((sweep_dir / SWEEP_FILE).read_text()).get("job", {})
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {sweep_dir / SWEEP_FILE}: {e}") from None
    # the data the sweep's trials read: the ingest step's manifest (the job's data was checked and split there)
    swept = job.model_copy(update={"training_data": recorded.get("training_data", job.training_data),
                                   "validation_data": recorded.get("validation_data")})
    echo(f"resuming the sweep of the pipeline run {run_dir} with the library engine"
         + (f" (its folder {sweep_dir})" if sweep_dir != run_dir else ""))
    run_sweep(swept, sweep_dir, device=device, echo=echo, resume=True)
    if sweep_dir != run_dir:
        _move_up(sweep_dir, run_dir)
        echo(f"moved the sweep's folder up into {run_dir}")
    _write_job(job, run_dir)
    return load_sweep(run_dir)


def _killed_sweep(run_dir: Path) -> Path:
    """The folder of the sweep a killed pipeline run left under ``run_dir/pipeline/`` (the latest run's)."""
    from automl_vision.training.runfolder import SWEEP_FILE  # torch: see LocalRun.sweep_result

    found = sorted((run_dir / PIPELINE_ROOT).glob(f"*/{SWEEP_STEP}/{SWEEP_RUN_OUTPUT}/{SWEEP_FILE}"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"the pipeline run in {run_dir} stopped before its sweep started (no {SWEEP_FILE} under "
                          f"{run_dir / PIPELINE_ROOT}): there is nothing to resume; run the job again")
    return found[-1].parent


def _write_job(job: JobSpec, run_dir: Path) -> None:
    """``job.yaml`` (the job as the user gave it) and ``resolved_job.json`` in the run folder."""
    (run_dir / "job.yaml").write_text(job.to_yaml())
    (run_dir / "resolved_job.json").write_text(json.dumps(resolved(job), indent=2))


def _move_up(sweep_dir: Path, run_dir: Path) -> None:
    """Move the sweep step's run folder's entries into ``run_dir`` (replacing what is there) and remove it."""
    for entry in sorted(sweep_dir.iterdir()):
        target = run_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        entry.replace(target)
    sweep_dir.rmdir()


def _best_model_from_package(run: LocalRun) -> None:
    """``best_model/`` becomes the package step's model (with its checked ONNX export): the sweep step
    left the best trial's package without one. Kept as the sweep left it when the package step failed."""
    record, package = run.step(PACKAGE_STEP), run.artifact_path(PACKAGE_STEP, PACKAGE_OUTPUT)
    if record is None or record.status != "succeeded" or package is None or not package.is_dir():
        return
    target = run.run_dir / "best_model"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(package, tmp)
    replace_folder(tmp, target)


def run_locally(pipeline, arguments: dict[str, Any], run_dir: str | Path, *,
                echo: Callable[[str], None] = print) -> LocalRun:
    """Run any pipeline on kfp's local runner (``SubprocessRunner(use_venv=False)``: each step a
    subprocess of this Python environment), its pipeline root in ``run_dir/pipeline``, its full output
    in ``run_dir/pipeline.log``, our own progress through ``echo``."""
    from kfp import local  # kfp (about 1 s to import) only to run a pipeline: not for `run --resume`

    run_dir = Path(run_dir).absolute()
    root = run_dir / PIPELINE_ROOT
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with (run_dir / LOG_FILE).open("w") as log_file:
        stream = _RunnerOutput(log_file, _outside(echo), total=step_count(pipeline))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False)
        # kfp warns in this process (non-Python image names, accelerators it ignores): keep that in the log
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stream):
            warnings.simplefilter("always")
            pipeline(**arguments)
        stream.flush_line()
        for w in caught:
            log_file.write(f"warning: {w.category.__name__}: {w.message}\n")
    run = LocalRun(run_dir, stream.steps, round(time.monotonic() - t0, 2))
    (run.run_dir / SUMMARY_FILE).write_text(json.dumps(run.summary(), indent=2))
    return run


def step_count(pipeline) -> int:
    """The steps a local run executes: the container tasks of the pipeline's top level (steps inside
    a condition, such as deploy, are not run locally)."""
    root = pipeline.pipeline_spec.root.dag.tasks
    components = pipeline.pipeline_spec.components
    return sum(1 for t in root.values() if components[t.component_ref.name].WhichOneof("implementation") != "dag")


def _outside(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` run with the console it would see outside the runner: kfp replaces ``print`` (to indent
    a step's output) and the run replaces ``sys.stdout``, so an echo that prints would come back here."""
    console, console_print = sys.stdout, builtins.print

    def call(text: str) -> None:
        inside, inside_print = sys.stdout, builtins.print
        sys.stdout, builtins.print = console, console_print
        try:
            echo(text)
        finally:
            sys.stdout, builtins.print = inside, inside_print

    return call


def _collect(run: LocalRun, job: JobSpec) -> None:
    """Move the sweep's run folder up into RUN_DIR, copy RUN_FOLDER_OUTPUTS there and write the summary
    of the pipeline run."""
    sweep_dir = run.artifact_path(SWEEP_STEP, SWEEP_RUN_OUTPUT)
    moved = sweep_dir is not None and sweep_dir.is_dir()
    if moved:
        _move_up(sweep_dir, run.run_dir)
        run.step(SWEEP_STEP).outputs[SWEEP_RUN_OUTPUT]["uri"] = str(run.run_dir)
        # the sweep ran on the ingest step's split; job.yaml keeps the job as the user gave it
        _write_job(job, run.run_dir)
        _best_model_from_package(run)
    for step, output, name in RUN_FOLDER_OUTPUTS:
        record, path = run.step(step), run.artifact_path(step, output)
        if record is not None and record.status == "succeeded" and path is not None and path.is_file():
            text = path.read_text(encoding="utf-8")
            if moved:  # the page was written before the sweep's folder moved up: show where it is now
                text = text.replace(html.escape(str(sweep_dir)), html.escape(str(run.run_dir)))
            (run.run_dir / name).write_text(text, encoding="utf-8")
    if run.registration is not None:
        (run.run_dir / REGISTRATION_FILE).write_text(json.dumps(run.registration, indent=2))
    (run.run_dir / SUMMARY_FILE).write_text(json.dumps(run.summary(), indent=2))


class _RunnerOutput(io.TextIOBase):
    """Stands in for ``sys.stdout`` while kfp's local runner runs.

    Every line goes to the log file. Lines of kfp's own records drive the progress display; lines a
    step prints (kfp indents them by four spaces) are shown, except the kfp executor's own lines,
    its executor-input JSON block and tracebacks (those are kept for the error message).
    """

    def __init__(self, log_file, echo: Callable[[str], None], total: int):
        self._log, self._echo, self._total = log_file, echo, total
        self._buffer = ""
        self.steps: list[StepRecord] = []
        self._current: StepRecord | None = None
        self._json: list[str] | None = None  # lines of an executor-input block being read
        self._traceback = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush_line(self) -> None:
        if self._buffer:
            self._line(_ANSI.sub("", self._buffer))
            self._buffer = ""

    def _line(self, line: str) -> None:
        self._log.write(line + "\n")
        self._log.flush()
        record = _RECORD.match(line)
        if record:
            self._record(record.group(2))
            return
        if self._current is None or self._current.status != "running" or not line.startswith("    "):
            return  # the rest of a kfp record (task outputs), separators, blank lines
        self._step_line(line[4:])

    def _record(self, message: str) -> None:
        started = _EXECUTING.match(message)
        if started:
            step = StepRecord(started.group(1), _t0=time.monotonic())
            self.steps.append(step)
            self._current, self._json, self._traceback = step, None, False
            self._echo(f"[pipeline] step {len(self.steps)}/{self._total}: {step.name} started")
            return
        finished = _FINISHED.match(message)
        if finished and self._current is not None and self._current.name == finished.group(1):
            step = self._current
            step.duration_s = round(time.monotonic() - step._t0, 2)
            step.status = "succeeded" if finished.group(2) == "SUCCESS" else "failed"
            if step.status == "succeeded":
                step.outputs.update(_read_executor_output(step._executor_output))
            numbers = _metric_summary(step.outputs)
            self._echo(f"[pipeline] step {len(self.steps)}/{self._total}: {step.name} {step.status} in "
                       f"{step.duration_s:.1f} s"
                       + (f" ({numbers})" if numbers else ""))

    def _step_line(self, text: str) -> None:
        step = self._current
        if self._json is not None:
            self._json.append(text)
            if text == "}":  # the executor-input block ends with a closing brace in column 0
                self._executor_input("\n".join(self._json))
                self._json = None
            return
        executor = _EXECUTOR.match(text)
        if executor:
            if executor.group(1).startswith("Got executor_input:"):
                self._json = []
            return
        if not text.strip():
            return
        step.output_lines.append(text)
        if text.startswith("Traceback (most recent call last)"):
            self._traceback = True
        if not self._traceback:
            self._echo(text)

    def _executor_input(self, text: str) -> None:
        try:
            executor_input = json.loads(text)
        except json.JSONDecodeError:
            return
        outputs = executor_input.get("outputs", {})
        self._current._executor_output = outputs.get("outputFile")
        for name, spec in outputs.get("artifacts", {}).items():
            arts = spec.get("artifacts") or [{}]
            if "uri" in arts[0]:
                self._current.outputs[name] = {"uri": arts[0]["uri"], "metadata": {}}


def _read_executor_output(path: str | None) -> dict[str, Any]:
    """Output parameters and artifact metadata from a finished step's executor_output.json."""
    if not path or not Path(path).is_file():
        return {}
    doc = json.loads(Path(path).read_text())
    out: dict[str, Any] = dict(doc.get("parameterValues", {}))
    for name, spec in doc.get("artifacts", {}).items():
        arts = spec.get("artifacts") or [{}]
        out[name] = {"uri": arts[0].get("uri"), "metadata": arts[0].get("metadata", {})}
    return out


def _metric_summary(outputs: dict[str, Any], limit: int = 4) -> str:
    """The first few numbers of a step's Metrics outputs, for the progress line."""
    shown = []
    for art in outputs.values():
        if not isinstance(art, dict):
            continue
        for key, value in art.get("metadata", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and len(shown) < limit:
                shown.append(f"{key} {int(value) if float(value).is_integer() else f'{value:.4g}'}")
    return ", ".join(shown)


# --- a failed step's error, as our own exception --------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Diverged|Interrupt|Exit)\b[\w.]*)(?:: (.*))?$")


def last_exception(lines: list[str]) -> tuple[str, str] | None:
    """The (qualified class name, message) of the last traceback in a step's output, if any."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    block = lines[starts[-1] + 1:]
    for i, ln in enumerate(block):
        if ln.startswith(" "):
            continue  # a frame: "  File ...", its source line, carets
        m = _EXCEPTION_LINE.match(ln)
        if m:
            message = "\n".join([m.group(2) or "", *block[i + 1:]]).strip()
            return m.group(1), message
    return None


def step_error(step: StepRecord, log_file: Path) -> AutoMLError:
    """The exception that describes why ``step`` failed: a bad-input error stays a bad-input error."""
    found = last_exception(step.output_lines)
    if found is None:
        return PipelineStepFailed(f"pipeline step {step.name} failed; its output is in {log_file}")
    name, message = found
    cls = _resolve_class(name)
    if cls is not None and issubclass(cls, DataError):
        return DataError(message)
    if cls is not None and issubclass(cls, ConfigError):
        return ConfigError(message)
    short = message.splitlines()[0] if message else ""
    return PipelineStepFailed(f"pipeline step {step.name} failed: {name.rsplit('.', 1)[-1]}"
                              + (f": {short}" if short else "") + f" (full output in {log_file})")


def _resolve_class(qualified: str) -> type | None:
    module, _, attr = qualified.rpartition(".")
    if not module.startswith("automl_vision"):
        return None
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
