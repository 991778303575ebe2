"""The ``automl-vision`` command line: the only module that reads argv and chooses exit codes.

Exit codes: 0 success, 2 bad input (job, flags or data), 3 training diverged, 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from automl_vision import __version__
from automl_vision.errors import AutoMLError, ConfigError, DataError, TrainingDiverged

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3

log = logging.getLogger("automl_vision")


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
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


# --- train -------------------------------------------------------------------------------------

def _add_train(sub) -> None:
    from automl_vision.spec import hyperparameters as hps

    p = sub.add_parser("train", help="run one trial (what a Katib trial pod runs)",
                       description="Train one model with the given hyperparameters. Every hyperparameter of the "
                                   "job spec is a flag with its spec name; unset ones take their default for the "
                                   "task and model.")
    p.add_argument("--task", required=True, help="image_classification | image_classification_multilabel | "
                                                 "image_object_detection | image_instance_segmentation")
    p.add_argument("--training_data", required=True, help="training JSONL file")
    p.add_argument("--validation_data", help="validation JSONL file (default: split_ratio of the training data)")
    p.add_argument("--output-dir", default="outputs", help="folder for the trial's files (default: ./outputs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: from the machine)")
    group = p.add_argument_group("hyperparameters")
    for hp in hps.HYPERPARAMETERS:
        group.add_argument(f"--{hp.name}", default=argparse.SUPPRESS, metavar=hp.type.__name__.upper(),
                           help=f"{hp.help} Allowed: {hp.allowed()}.")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import parse_task
    from automl_vision.training.trial import LOG_FILE, TrialResult, TrialSettings

    out = Path(args.output_dir)
    _setup_logging(args.verbose, out / LOG_FILE)
    try:
        task = parse_task(args.task)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None
    given = {hp.name: getattr(args, hp.name) for hp in hps.HYPERPARAMETERS if hasattr(args, hp.name)}
    try:
        values = hps.resolve(task, given)
    except ValueError as e:
        raise ConfigError(str(e).splitlines(), "train") from None
    settings = TrialSettings(task=task, training_data=args.training_data, validation_data=args.validation_data,
                             hyperparameters=values, output_dir=str(out), device=args.device,
                             num_workers=args.num_workers)
    if not task.is_classification:
        raise ConfigError(f"training for {task.value} is not available yet; classification tasks are")
    from automl_vision.training.classification import train_classification

    try:
        result = train_classification(settings)
    except TrainingDiverged as e:
        TrialResult(status="diverged", primary_metric=task.primary_metric, message=str(e)).write(out)
        raise
    log.info("trial %s: best %s %s at epoch %s; model in %s", result.status, result.primary_metric,
             f"{result.best_value:.4f}" if result.best_value is not None else "-", result.best_epoch,
             out / "outputs")
    return EXIT_OK


# --- run, validate-job, demo -------------------------------------------------------------------

def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a whole AutoML job (a sweep of trials) on this machine")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--output-dir", help="run folder (default: runs/<job name or time>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.set_defaults(func=cmd_run)


def _default_run_dir(job) -> Path:
    return Path("runs") / (job.name or datetime.now().strftime("run-%Y%m%d-%H%M%S"))


def run_job(job, run_dir: Path, device: str = "auto") -> int:
    from automl_vision.sweep.local import format_leaderboard, run_sweep

    t0 = time.monotonic()
    result = run_sweep(job, run_dir, device=device, echo=lambda s: print(s, flush=True))
    print("\nleaderboard:\n" + format_leaderboard(result), flush=True)
    best = result.best
    if best is None:
        print(f"\nno trial produced a model; see {run_dir}/trials/*/console.log", flush=True)
        return EXIT_INTERNAL
    print(f"\nbest trial: {best.trial_id} ({best.parameters.get('model_name', job.task.default_model)}), "
          f"{job.task.primary_metric} {best.best_value:.4f}\n"
          f"best model: {run_dir / 'best_model'}\n"
          f"run files:  {run_dir} (leaderboard.csv, leaderboard.json, trials/)\n"
          f"total time: {time.monotonic() - t0:.0f} s", flush=True)
    return EXIT_OK


def cmd_run(args) -> int:
    from automl_vision.spec.job import load_job

    _setup_logging(args.verbose)
    job = load_job(args.job)
    run_dir = Path(args.output_dir) if args.output_dir else _default_run_dir(job)
    return run_job(job, run_dir, args.device)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate-job", help="check a job file and print it with every default filled in")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from automl_vision.spec.job import load_job, resolved

    _setup_logging(args.verbose)
    view = resolved(load_job(args.job))
    print(json.dumps(view, indent=2) if args.json else yaml.safe_dump(view, sort_keys=False), end="")
    return EXIT_OK


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build a small real-image dataset and run a whole AutoML job on it")
    p.add_argument("--output-dir", default="runs/demo", help="folder for the dataset and the run (default: runs/demo)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from automl_vision.demo import prepare_demo
    from automl_vision.spec.job import load_job

    _setup_logging(args.verbose)
    out = Path(args.output_dir)
    job_path = prepare_demo(out)
    print(f"demo dataset and job written to {out} (job: {job_path})", flush=True)
    return run_job(load_job(job_path), out / "run", args.device)


# --- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl-vision", description="Self-hosted AutoML for images.")
    parser.add_argument("--version", action="version", version=f"automl-vision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_train, _add_validate, _add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
