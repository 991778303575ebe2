"""``train`` (one trial: what a Katib trial pod runs) and ``weights`` (the pretrained weights)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from automl_vision.cli.common import TASKS_HELP, add_hyperparameter_flags, given_hyperparameters, log, \
    setup_logging, task_flag
from automl_vision.errors import EXIT_OK, ConfigError, TrainingDiverged
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.job import load_job


def add_train(sub) -> None:
    p = sub.add_parser("train", help="run one trial (what a Katib trial pod runs)",
                       description="Train one model with the given hyperparameters. Every hyperparameter of the "
                                   "job spec is a flag with its spec name; unset ones take their default for the "
                                   "task and model.")
    p.add_argument("--task", required=True, help=TASKS_HELP)
    p.add_argument("--training_data", required=True, help="training JSONL file")
    p.add_argument("--validation_data", help="validation JSONL file (default: split_ratio of the training data)")
    p.add_argument("--output-dir", default="outputs", help="folder for the trial's files (default: ./outputs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: from the machine)")
    p.add_argument("--weights", default=None, metavar="LOCATION",
                   help="mirror of the pretrained weights (folder, s3://bucket/prefix or https:// address, seeded "
                        "by `automl-vision weights fetch --to`): weights then come from there only (default: "
                        "$AUTOML_VISION_WEIGHTS, else each library's own source, fetched once into its cache; "
                        "AUTOML_VISION_OFFLINE=1 forbids downloads)")
    p.add_argument("--from_model", default=None, metavar="DIR",
                   help="incremental training: start from an earlier model package (a trial's outputs/ or a "
                        "run's best_model/) of the same model_name")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints/ when there is one "
                        "(checkpoints are written with --checkpoint_frequency)")
    p.add_argument("--upload-to", default=None, metavar="S3_URI",
                   help="when the trial ends (also when stopped by SIGTERM, as Katib stops an early-stopped trial), "
                        "upload OUTPUT_DIR (model package, metrics.jsonl, result.json, logs; not checkpoints) to this "
                        "s3://bucket/prefix; endpoint and credentials from the AWS_* environment variables")
    add_hyperparameter_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from automl_vision.models.weights import s3_endpoint_from_env  # lazy: CLI start-up
    from automl_vision.training.runfolder import LOG_FILE  # lazy: CLI start-up
    from automl_vision.training.trial import TrialResult, TrialSettings  # lazy: CLI start-up

    out = Path(args.output_dir)
    setup_logging(args.verbose, out / LOG_FILE)
    task = task_flag(args.task)
    try:
        values = hps.resolve(task, given_hyperparameters(args))
    except ValueError as e:
        raise ConfigError(str(e).splitlines(), "train") from None
    # torchrun sets these for each process of a data-parallel run.
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    settings = TrialSettings(task=task, training_data=args.training_data, validation_data=args.validation_data,
                             hyperparameters=values, output_dir=str(out), device=args.device,
                             num_workers=args.num_workers,
                             weights=args.weights or os.environ.get("AUTOML_VISION_WEIGHTS") or None,
                             s3_endpoint=s3_endpoint_from_env(os.environ),
                             weights_cache=os.environ.get("AUTOML_VISION_CACHE"),
                             from_model=args.from_model, resume=args.resume,
                             progress_bar=sys.stderr.isatty(), rank=rank, world_size=world_size,
                             local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if task.is_classification:
        from automl_vision.training.classification import train_classification as train  # lazy: CLI start-up
    else:
        from automl_vision.training.detection import train_detection as train  # lazy: CLI start-up

    if args.upload_to:
        return _train_and_upload(train, settings, out, args.upload_to)
    try:
        result = train(settings)
    except TrainingDiverged as e:
        TrialResult(status="diverged", primary_metric=task.primary_metric, message=str(e)).write(out)
        raise
    log.info("trial %s: best %s %s at epoch %s; model in %s", result.status, result.primary_metric,
             f"{result.best_value:.4f}" if result.best_value is not None else "-", result.best_epoch,
             out / "outputs")
    return EXIT_OK


def _train_and_upload(train, settings, out: Path, uri: str) -> int:
    """Train, then upload the trial folder to ``uri`` whatever the outcome: completed, diverged, failed, or
    stopped by SIGTERM (Katib's metrics collector terminates an early-stopped trial's process; its best
    epoch's model is already in the folder). A failed upload fails the trial. The process's signals and
    exit code are the command's: SIGTERM ends it with 128 + SIGTERM once the upload is done."""
    from automl_vision.training.trial import TrialResult, TrialStopped  # lazy: CLI start-up
    from automl_vision.training.trial import stopped_result, upload_trial  # lazy: CLI start-up

    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise ConfigError(f"--upload-to={uri!r}: expected s3://bucket/prefix")

    def stop(signum, frame):
        raise TrialStopped()

    previous = signal.signal(signal.SIGTERM, stop)
    t0 = time.monotonic()
    code, error = EXIT_OK, None
    try:
        result = train(settings)
        log.info("trial %s: best %s %s at epoch %s", result.status, result.primary_metric,
                 f"{result.best_value:.4f}" if result.best_value is not None else "-", result.best_epoch)
    except TrialStopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the upload short
        stopped_result(out, settings.task, time.monotonic() - t0).write(out)
        log.info("trial stopped from outside; keeping what it has")
        code = 128 + signal.SIGTERM
    except TrainingDiverged as e:
        TrialResult(status="diverged", primary_metric=settings.task.primary_metric, message=str(e)).write(out)
        error = e
    except Exception as e:  # noqa: BLE001 - the log and whatever the trial wrote are kept, then the error is raised
        error = e
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if code else previous)
    log.info("uploading %s to %s", out, uri)
    keys = upload_trial(out, uri)
    log.info("uploaded %d file(s)", len(keys))
    if error is not None:
        raise error
    return code


# --- weights -----------------------------------------------------------------------------------

def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="list, fetch and mirror the pretrained weights of the models",
                       description="Pretrained weights come from each library's own source (download.pytorch.org, "
                                   "the Hugging Face Hub, ultralytics' release assets), fetched once into the "
                                   "libraries' caches and verified; or, when a weights location is set (--weights, "
                                   "$AUTOML_VISION_WEIGHTS), from that mirror only. `fetch --to` seeds a mirror "
                                   "for clusters without internet access.")
    verbs = p.add_subparsers(dest="weights_command", metavar="VERB")
    for name, text in (("list", "what the models (or a job) need, their sources and licences, and what is "
                                "missing where"),
                       ("fetch", "download and verify the files; with --to, copy them into a mirror folder or "
                                 "s3:// prefix with a manifest")):
        v = verbs.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        v.add_argument("--models", default=None, metavar="NAMES",
                       help="comma-separated model names (yolov5 sizes as yolov5:small ...; default for list: all)")
        v.add_argument("--job", default=None, metavar="JOB_YAML", help="the models a job's trials may train")
        if name == "list":
            v.add_argument("--weights", default=None, metavar="LOCATION",
                           help="mirror to check: folder, s3://bucket/prefix or https:// address "
                                "(default: $AUTOML_VISION_WEIGHTS, else the libraries' caches)")
            v.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            v.add_argument("--to", default=None, metavar="DIR_OR_S3",
                           help="mirror to seed (folder or s3://bucket/prefix); default: the libraries' caches only")
    p.add_argument("--model_name", action="append", help=argparse.SUPPRESS)  # older spelling of list --models
    p.set_defaults(func=cmd_weights)


def _weights_names(args) -> list[str]:
    from automl_vision.models import catalogue  # lazy: CLI start-up

    if getattr(args, "models", None):
        return [n.strip() for n in args.models.split(",") if n.strip()]
    if getattr(args, "job", None):
        return catalogue.job_models(load_job(args.job))
    if getattr(args, "model_name", None):
        return list(args.model_name)
    if getattr(args, "weights_command", None) == "fetch":
        raise ConfigError("weights fetch: say which models, with --models NAMES or --job JOB_YAML")
    return catalogue.spec_model_names()


def cmd_weights(args) -> int:
    from automl_vision.models import catalogue, mirror  # lazy: CLI start-up
    from automl_vision.models.weights import WeightsSource, s3_endpoint_from_env  # lazy: CLI start-up

    setup_logging(args.verbose)
    files = catalogue.resolve(_weights_names(args))
    if args.weights_command == "fetch":
        done = mirror.fetch(files, args.to, s3_endpoint=s3_endpoint_from_env(os.environ))
        for entry in done:
            print(f"{entry['model_name']:28s} {entry['file']}  {entry['size'] / 1e6:.1f} MB  sha256 {entry['sha256']}")
        if args.to:
            print(f"mirror {args.to}: {len(done)} file(s) and {mirror.MANIFEST}; train with --weights {args.to}")
        return EXIT_OK
    location = getattr(args, "weights", None) or os.environ.get("AUTOML_VISION_WEIGHTS") or None
    source = WeightsSource(location, s3_endpoint_from_env(os.environ), os.environ.get("AUTOML_VISION_CACHE"))
    rows = mirror.status(files, source)
    if not rows and getattr(args, "job", None) and not getattr(args, "json", False):
        print(f"{args.job}: every model of this job trains from scratch (pretrained: 0): no pretrained weights needed")
        return EXIT_OK
    if getattr(args, "json", False):
        print(json.dumps({"location": location or "library caches", "models": rows}, indent=2))
    else:
        print(mirror.format_status(rows, location))
    return EXIT_OK
