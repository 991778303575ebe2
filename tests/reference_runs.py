"""Runs built once per test session and shared by the test modules that only read them.

pytest-xdist gives each worker its own session. The runs are built in a folder that every worker of
one session shares (the parent of a worker's temporary folder), under a file lock: the first worker
that needs a run builds it, the others wait for it and read the same folder. Tests must not change
these folders; a test that needs to change a run copies it first.

Imported by ``tests/conftest.py``, which turns them into session fixtures.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

SMALL_CNN = {"number_of_epochs": 1, "pretrained": False, "train_crop_size": 24, "valid_resize_size": 24,
             "valid_crop_size": 24, "training_batch_size": 4}


@dataclass(frozen=True)
class SharedRun:
    """An ``automl-vision run`` done once: its data, job file, run folder and what the command printed."""

    data: Path
    job_file: Path
    run: Path
    returncode: int
    stdout: str
    stderr: str


def shared_root(tmp_path_factory) -> Path:
    """The temporary folder every xdist worker of this session shares (this session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(root: Path, name: str, spec: dict, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per session for this ``name`` and ``spec`` (its hash names the folder);
    a build that raised is tried again by the next caller."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = root / f"shared-{name}-{key}"
    with _locked(root / f"shared-{name}-{key}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".built").write_text("")
    return folder


def _cli_run(folder: Path, job: dict, args: tuple[str, ...]) -> None:
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    p = subprocess.run([sys.executable, "-m", "automl_vision", "run", str(job_file), "--output-dir",
                        str(folder / "run"), *args], capture_output=True, text=True, timeout=900)
    (folder / "command.json").write_text(json.dumps({"returncode": p.returncode, "stdout": p.stdout,
                                                     "stderr": p.stderr}))


def _shared_run(root: Path, name: str, job: dict, args: tuple[str, ...],
                make_data: Callable[[Path], Path]) -> SharedRun:
    def build(folder: Path) -> None:
        data = make_data(folder / "data")
        _cli_run(folder, {**job, "training_data": str(data)}, args)

    folder = build_once(root, name, {"job": job, "args": args}, build)
    done = json.loads((folder / "command.json").read_text())
    data = yaml.safe_load((folder / "job.yaml").read_text())["training_data"]
    return SharedRun(Path(data), folder / "job.yaml", folder / "run", done["returncode"], done["stdout"],
                     done["stderr"])


# The whole job through the default engine (the local Kubeflow pipeline): two trials, one per model.
PIPELINE_JOB = {"task": "image_classification", "name": "shapes", "limits": {"max_trials": 2},
                "sweep": {"sampling_algorithm": "grid"},
                "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]}}],
                "training_parameters": SMALL_CNN}

# One trial through the library engine, at 32 px on blue and red patches; its best_model has model.onnx
# (resnet18: its ONNX export takes a third of mobilenetv2's).
LIBRARY_JOB = {"task": "image_classification", "limits": {"max_trials": 1},
               "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]}}],
               "training_parameters": {**SMALL_CNN, "train_crop_size": 32, "valid_resize_size": 32,
                                       "valid_crop_size": 32}}


def pipeline_run(root: Path, make_dataset) -> SharedRun:
    """``automl-vision run job.yaml`` (the pipeline engine) of :data:`PIPELINE_JOB` on 12 images."""
    return _shared_run(root, "pipeline-run", PIPELINE_JOB, (), lambda d: make_dataset(d, n_per_class=6))


def library_run(root: Path, make_dataset) -> SharedRun:
    """``automl-vision run job.yaml --engine library`` of :data:`LIBRARY_JOB` on 8 images of 36 px."""
    return _shared_run(root, "library-run", LIBRARY_JOB, ("--engine", "library"),
                       lambda d: make_dataset(d, n_per_class=4, classes=("blue", "red"), size=36))
