"""The ``automl-vision`` command line: the only code that reads argv and chooses exit codes.

Each command parses its flags, calls the library, and prints; errors become exit codes here
(``automl_vision.errors``): 0 success, 2 bad input (job, flags or data), 3 training diverged, 1 internal
error. ``main`` also serves in-process callers:

    from automl_vision.cli import main
    code = main(["data", "validate", "train.jsonl", "--task", "image_classification"])

Modules: ``common`` (shared flags and logging), ``run`` (run, validate-job, demo, leaderboard),
``train`` (train, weights), ``data`` (data, preview), ``serve`` (evaluate, serve, predict, deploy),
``registry`` (register), ``cluster`` (compile, katib, katib-config, doctor).
"""

from __future__ import annotations

import argparse
import sys

from automl_vision import __version__
from automl_vision.cli import cluster, data, registry, run, serve, train
from automl_vision.cli.common import log
from automl_vision.errors import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_INTERNAL,
    EXIT_OK,
    AutoMLError,
    ConfigError,
    DataError,
    TrainingDiverged,
)

#: The verbs, in the order ``--help`` lists them.
_VERBS = (run.add_run, train.add_train, run.add_validate, run.add_demo, run.add_leaderboard, train.add_weights,
          data.add_data, data.add_preview, serve.add_evaluate, cluster.add_compile, cluster.add_katib,
          serve.add_serve, serve.add_predict, serve.add_deploy, registry.add_register, cluster.add_doctor,
          cluster.add_katib_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl-vision", description="Self-hosted AutoML for images.")
    parser.add_argument("--version", action="version", version=f"automl-vision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``: the arguments after ``automl-vision``; None: ``sys.argv[1:]``) and return
    its exit code; never calls ``sys.exit``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2): argparse has printed it
        return e.code if isinstance(e.code, int) else EXIT_OK if e.code is None else EXIT_INTERNAL
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except AutoMLError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # an internal error: show the traceback so it can be reported
        log.exception("internal error")
        return EXIT_INTERNAL
