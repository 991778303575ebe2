"""The command a trial runs: ``automl-vision train`` with the job's data and the trial's
hyperparameters as flags, the same for a local sweep's subprocess and a Katib trial pod."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.job import JobSpec


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
    """A value as ``automl-vision train`` takes it: 0/1 for booleans, ``repr`` for floats."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)
