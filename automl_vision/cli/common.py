"""What several commands share: logging, help texts, the hyperparameter flags, task and settings flags.

Library modules other than ``automl_vision.spec`` (which ``import automl_vision`` loads anyway) are
imported inside the commands that use them, so that ``automl-vision --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from automl_vision.errors import ConfigError
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import ImageTask, parse_task

log = logging.getLogger("automl_vision")

TASKS_HELP = ("image_classification | image_classification_multilabel | image_object_detection | "
              "image_instance_segmentation")
#: Where the Pipelines API's bearer token comes from (run --kubeflow and doctor find it the same way).
TOKEN_FILE_HELP = ("a file holding the bearer token of the Pipelines API of a multi-user Kubeflow (default: "
                   "$KF_PIPELINES_TOKEN, else a ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH or "
                   "/var/run/secrets/kubeflow/pipelines/token, else none)")


def setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    # Log lines never contain "name=value": Katib's StdOut collector would read them as metrics.
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(fh)
    root.setLevel(logging.WARNING)
    logging.getLogger("automl_vision").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


def literal(text: str) -> str:
    """Help text shown as written: argparse expands %-placeholders in help, so a plain % is doubled."""
    return text.replace("%", "%%")


def add_hyperparameter_flags(p: argparse.ArgumentParser) -> None:
    """Every hyperparameter of the job spec as a flag with its spec name (unset: not in ``args``)."""
    group = p.add_argument_group("hyperparameters")
    for hp in hps.HYPERPARAMETERS:
        group.add_argument(f"--{hp.name}", default=argparse.SUPPRESS, metavar=hp.type.__name__.upper(),
                           help=literal(f"{hp.help} Allowed: {hp.allowed()}."))


def given_hyperparameters(args) -> dict:
    """The hyperparameter flags that were given."""
    return {hp.name: getattr(args, hp.name) for hp in hps.HYPERPARAMETERS if hasattr(args, hp.name)}


def task_flag(value: str) -> ImageTask:
    """The task a --task flag names."""
    try:
        return parse_task(value)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None


def settings_layers(args) -> list:
    """Inference settings over the package's settings.json: the environment, then --settings (wins)."""
    from automl_vision.serving.settings import SETTINGS_ENV, parse_settings_text  # lazy: CLI start-up
    from automl_vision.serving.settings import read_settings_file  # lazy: CLI start-up

    layers = []
    if os.environ.get(SETTINGS_ENV, "").strip():
        layers.append((f"${SETTINGS_ENV}", parse_settings_text(os.environ[SETTINGS_ENV], f"${SETTINGS_ENV}")))
    if getattr(args, "settings", None):
        layers.append((args.settings, read_settings_file(args.settings)))
    return layers


def write_file(path: str, text: str) -> None:
    """Write an output file a flag names, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
