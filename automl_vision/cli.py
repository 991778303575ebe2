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
#: Where the Pipelines API's bearer token comes from (run --kubeflow and doctor find it the same way).
TOKEN_FILE_HELP = ("a file holding the bearer token of the Pipelines API of a multi-user Kubeflow (default: "
                   "$KF_PIPELINES_TOKEN, else a ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH or "
                   "/var/run/secrets/kubeflow/pipelines/token, else none)")

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


def _literal(text: str) -> str:
    """Help text shown as written: argparse expands %-placeholders in help, so a plain % is doubled."""
    return text.replace("%", "%%")


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
    group = p.add_argument_group("hyperparameters")
    for hp in hps.HYPERPARAMETERS:
        group.add_argument(f"--{hp.name}", default=argparse.SUPPRESS, metavar=hp.type.__name__.upper(),
                           help=_literal(f"{hp.help} Allowed: {hp.allowed()}."))
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
    import os

    from automl_vision.models.weights import s3_endpoint_from_env

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
        from automl_vision.training.classification import train_classification as train
    else:
        from automl_vision.training.detection import train_detection as train

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
    epoch's model is already in the folder). A failed upload fails the trial."""
    import signal

    from automl_vision.training.trial import TrialResult, TrialStopped, stopped_result, upload_trial

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


# --- run, validate-job, demo -------------------------------------------------------------------

def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a whole AutoML job (a sweep of trials) on this machine")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--output-dir", help="run folder (default: runs/<job name or time>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the sweep a killed run left in RUN_DIR (finished trials are kept)")
    p.add_argument("--engine", choices=("pipeline", "library"), default="pipeline",
                   help="pipeline: the Kubeflow pipeline on kfp's local runner (default); library: the sweep "
                        "alone, called directly (what --resume uses)")
    p.add_argument("--kubeflow", metavar="URL", help="submit the pipeline to this Kubeflow Pipelines endpoint "
                                                     "instead of running it here")
    p.add_argument("--namespace", help="with --kubeflow: the namespace (profile) of a multi-user Kubeflow")
    p.add_argument("--schedule", metavar="CRON", help="with --kubeflow: a recurring run for scheduled retraining; "
                                                      "six-field cron, seconds first, e.g. \"0 0 2 * * *\"")
    p.add_argument("--experiment", default="automl-vision", help="with --kubeflow: the experiment of the run")
    p.add_argument("--cluster-settings", metavar="FILE", help="with --kubeflow: images (its registry key is "
                                                             "required), GPU pool, secrets (YAML; see docs/kubeflow.md)")
    p.add_argument("--token-file", metavar="FILE", help="with --kubeflow: " + TOKEN_FILE_HELP)
    _add_pipeline_options(p, "with --kubeflow: ")
    p.set_defaults(func=cmd_run)


def _add_pipeline_options(p, prefix: str = "") -> None:
    """The pipeline's run parameters a user chooses on the command line (run --kubeflow, compile)."""
    p.add_argument("--backend", choices=("local", "katib"), default="local",
                   help=prefix + "where the sweep's trials run: local, one after another in the sweep step's pod "
                                 "(default); katib, as Katib Experiments, one trial pod each (docs/katib.md)")
    p.add_argument("--deploy", metavar="NAME", help=prefix + "serve the packaged model as the KServe "
                                                             "InferenceService NAME (created, or updated)")


def _default_run_dir(job) -> Path:
    return Path("runs") / (job.name or datetime.now().strftime("run-%Y%m%d-%H%M%S"))


def run_job(job, run_dir: Path, device: str = "auto", resume: bool = False, engine: str = "pipeline") -> int:
    from automl_vision.sweep.local import format_leaderboard, run_sweep

    t0 = time.monotonic()
    pipeline = None
    if engine == "pipeline" and not resume:
        from automl_vision.pipeline.local import run_pipeline_locally

        pipeline = run_pipeline_locally(job, run_dir, device=device, echo=lambda s: print(s, flush=True))
        result = pipeline.sweep_result()
        if result is None:  # a step before the sweep failed
            pipeline.raise_for_failure()
    elif resume:  # with the library engine, also a pipeline run's sweep (in its step's folder, on its data)
        from automl_vision.pipeline.local import resume_run

        result = resume_run(job, run_dir, device=device, echo=lambda s: print(s, flush=True))
    else:
        result = run_sweep(job, run_dir, device=device, echo=lambda s: print(s, flush=True))
    print("\nleaderboard:\n" + format_leaderboard(result), flush=True)
    if pipeline is None or pipeline.step("report") is None:
        # the library engine and --resume; and a pipeline run that stopped before its report step (a sweep
        # without a model fails the sweep step), so that every local run still has its report
        from automl_vision.report import write_report

        print(f"report: {write_report(run_dir)}", flush=True)
    elif pipeline.report_file is not None:  # the report step's page (None: the step failed; raised below)
        print(f"report: {pipeline.report_file}", flush=True)
    best = result.best
    if best is None:
        if result.trials and all(t.exit_code == EXIT_BAD_INPUT for t in result.trials):
            # every trial refused its data or settings: the user's input, not an internal failure
            print(f"\nno trial produced a model: every trial refused its input (exit {EXIT_BAD_INPUT}); the "
                  f"reason is the last line of {run_dir}/trials/*/console.log", flush=True)
            return EXIT_BAD_INPUT
        print(f"\nno trial produced a model; see {run_dir}/trials/*/console.log", flush=True)
        return EXIT_INTERNAL
    if pipeline is not None:
        pipeline.raise_for_failure()
        print(pipeline.describe(), flush=True)
    print(f"\nbest trial: {best.trial_id} ({best.parameters.get('model_name', job.task.default_model)}), "
          f"{job.task.primary_metric} {best.best_value:.4f}\n"
          f"best model: {run_dir / 'best_model'}\n"
          f"run files:  {run_dir} (leaderboard.csv, leaderboard.json, sweep.json, trials/)\n"
          f"total time: {time.monotonic() - t0:.0f} s", flush=True)
    return EXIT_OK


def cmd_run(args) -> int:
    from automl_vision.spec.job import load_job

    _setup_logging(args.verbose)
    job = load_job(args.job)
    if args.resume and args.output_dir and Path(args.resume).resolve() != Path(args.output_dir).resolve():
        raise ConfigError(f"--resume {args.resume} and --output-dir {args.output_dir} name different folders; "
                          "give one")
    if args.kubeflow:
        return submit_job(job, args)
    if args.schedule or args.namespace or args.token_file:
        raise ConfigError("--schedule, --namespace and --token-file go with --kubeflow URL", "run")
    if args.backend != "local" or args.deploy:
        raise ConfigError("--backend katib and --deploy go with --kubeflow URL (or compile): they need a cluster",
                          "run")
    if args.resume:
        return run_job(job, Path(args.resume), args.device, resume=True)
    run_dir = Path(args.output_dir) if args.output_dir else _default_run_dir(job)
    return run_job(job, run_dir, args.device, engine=args.engine)


def submit_job(job, args) -> int:
    from automl_vision.pipeline.settings import load_cluster_settings
    from automl_vision.pipeline.submit import find_credentials, submit

    done = submit(job, args.kubeflow, namespace=args.namespace, schedule=args.schedule, experiment=args.experiment,
                  settings=load_cluster_settings(args.cluster_settings), device=args.device, backend=args.backend,
                  inference_service=args.deploy, credentials=find_credentials(args.token_file))
    print(f"{done.kind} created: {done.id} (experiment {done.experiment_id})\n{done.url}", flush=True)
    return EXIT_OK


def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="write the Kubeflow pipeline package for upload through the Pipelines UI",
                       description="Compile the AutoML pipeline to a package for the Pipelines UI; the job's "
                                   "values become the defaults of the pipeline's parameters.")
    p.add_argument("job", nargs="?", help="job YAML file (optional: without it every parameter is entered in the UI)")
    p.add_argument("--out", required=True, help="pipeline package to write (.yaml)")
    p.add_argument("--cluster-settings", metavar="FILE", help="images (its registry key is required), GPU pool, "
                                                             "secrets (YAML; see docs/kubeflow.md)")
    _add_pipeline_options(p, "default of the run: ")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args) -> int:
    from automl_vision.pipeline.pipeline import compile_pipeline
    from automl_vision.pipeline.settings import load_cluster_settings
    from automl_vision.spec.job import load_job

    _setup_logging(args.verbose)
    job = load_job(args.job) if args.job else None
    path = compile_pipeline(args.out, settings=load_cluster_settings(args.cluster_settings), job=job,
                            backend=args.backend, inference_service=args.deploy)
    print(f"pipeline package written to {path}", flush=True)
    return EXIT_OK


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


def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="show the leaderboard of a run folder (also while its sweep runs)")
    p.add_argument("run_dir", help="run folder of automl-vision run")
    p.add_argument("--limit", type=int, default=20, help="trials shown (default: 20)")
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from automl_vision.sweep.local import format_leaderboard, load_sweep

    _setup_logging(args.verbose)
    result = load_sweep(args.run_dir)
    compute = result.compute
    print(format_leaderboard(result, limit=args.limit))
    print(f"\nsweep {result.status or 'unknown'}" + (f" ({result.stopped_because})" if result.stopped_because else "")
          + f"; {compute.get('trial_epochs', 0)} trial-epoch(s) used, "
          f"{compute.get('trial_epochs_without_early_termination', 0)} without early termination")
    return EXIT_OK


# --- weights -----------------------------------------------------------------------------------

def _add_weights(sub) -> None:
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
    from automl_vision.models import catalogue

    if getattr(args, "models", None):
        return [n.strip() for n in args.models.split(",") if n.strip()]
    if getattr(args, "job", None):
        from automl_vision.spec.job import load_job

        return catalogue.job_models(load_job(args.job))
    if getattr(args, "model_name", None):
        return list(args.model_name)
    if getattr(args, "weights_command", None) == "fetch":
        raise ConfigError("weights fetch: say which models, with --models NAMES or --job JOB_YAML")
    return catalogue.spec_model_names()


def cmd_weights(args) -> int:
    import os

    from automl_vision.models import catalogue, mirror
    from automl_vision.models.weights import WeightsSource, s3_endpoint_from_env

    _setup_logging(args.verbose)
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


# --- data --------------------------------------------------------------------------------------

def _add_data(sub) -> None:
    p = sub.add_parser("data", help="validate, convert, export and split labelled image data",
                       description="Work with JSON Lines datasets (spec section 2). Exit 2 when the data has problems.")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="VERB")
    tasks = "image_classification | image_classification_multilabel | image_object_detection | " \
            "image_instance_segmentation"

    v = verbs.add_parser("validate", help="check a JSONL file and summarize it; --output-dir ingests it",
                         description="Check every line and image, print counts per class, image sizes and every "
                                     "problem with file:line. With --output-dir, write the ingested dataset "
                                     "(manifest.parquet, stats.json, report.json) that train/run accept as data.")
    v.add_argument("data", help="JSONL file")
    v.add_argument("--task", required=True, help=tasks)
    v.add_argument("--validation_data", help="validation JSONL file (else split_ratio of the data is held out)")
    v.add_argument("--output-dir", help="write the ingested dataset here")
    v.add_argument("--json", action="store_true", help="print the machine-readable report instead of the summary")
    v.add_argument("--on-invalid", choices=("fail", "skip"), default="fail",
                   help="fail (default): refuse data with problems; skip: leave out invalid images and objects")
    v.add_argument("--images", choices=("decode", "header", "none"), default="decode",
                   help="decode (default): read every image fully; header: size and format only; none: "
                        "only check that the files exist")
    v.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default 89,478,485)")
    v.add_argument("--classes", help="comma-separated allowed class names; others are reported as unknown")
    _add_storage_flags(v)
    v.add_argument("--split_ratio", type=float, default=0.2, help="validation share when ingesting (default 0.2)")
    v.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    v.set_defaults(func=cmd_data, data_func=_data_validate)

    c = verbs.add_parser("convert", help="convert COCO, Pascal VOC, YOLO, class folders or CSV to JSONL")
    c.add_argument("--from", dest="source_format", required=True, choices=("coco", "voc", "yolo", "folders", "csv"))
    c.add_argument("source", help="COCO json | VOC folder (or its folder of XML files) | YOLO folder or data yaml | "
                                  "class-folder root | CSV file")
    c.add_argument("--out", required=True, help="JSONL file to write")
    c.add_argument("--task", help=f"{tasks} (default: detection for coco/voc/yolo, classification otherwise)")
    c.add_argument("--images-dir", help="coco, csv: folder the file names are relative to; voc: folder of the "
                                        "images (searched first)")
    c.add_argument("--image-set", help="voc: convert only ImageSets/Main/<name>.txt; yolo: only this split of the "
                                       "data yaml (train, val or test)")
    c.add_argument("--masks-dir", help="voc: instance masks folder (default SegmentationObject/)")
    c.add_argument("--skip-difficult", action="store_true", help="voc: leave out objects marked <difficult>")
    c.add_argument("--names", help="yolo: class-name file (txt, one per line, or a data yaml)")
    c.add_argument("--label-separator", help="csv: separator between labels (default: spaces)")
    c.set_defaults(func=cmd_data, data_func=_data_convert)

    e = verbs.add_parser("export", help="write a JSONL dataset as COCO json")
    e.add_argument("data", help="JSONL file")
    e.add_argument("--to", dest="target_format", required=True, choices=("coco",))
    e.add_argument("--out", required=True, help="COCO json file to write")
    e.add_argument("--task", default="image_object_detection",
                   help="image_object_detection (default) | image_instance_segmentation")
    e.add_argument("--images-dir", help="make file_name relative to this folder (default: image_url as written)")
    _add_storage_flags(e)
    e.set_defaults(func=cmd_data, data_func=_data_export)

    s = verbs.add_parser("split", help="hold out split_ratio of a JSONL file (the split a trial makes)")
    s.add_argument("data", help="JSONL file")
    s.add_argument("--task", required=True, help=tasks)
    s.add_argument("--split_ratio", type=float, default=0.2, help="validation share (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0, as trials)")
    s.add_argument("--output-dir", required=True, help="folder for train.jsonl and validation.jsonl")
    s.set_defaults(func=cmd_data, data_func=_data_split)


def _add_storage_flags(p) -> None:
    p.add_argument("--data-root", help="relative image_url may not leave this folder (default: the JSONL's folder)")
    p.add_argument("--store-root", help="folder or s3://bucket/prefix holding azureml:// and AmlDatastore:// "
                                        "paths as <datastore>/<path> (default: $AUTOML_VISION_STORE_ROOT)")
    p.add_argument("--cache-dir", help="cache for remote images (default: OUTPUT_DIR/cache or ~/.cache/automl-vision)")
    p.add_argument("--workers", type=int, default=16, help="parallel downloads (default 16)")


def _data_options(args, **changes):
    import os

    from automl_vision.data.storage import StorageConfig
    from automl_vision.data.validate import ValidationOptions

    # The environment is read here, once; credentials stay inside StorageConfig (hidden from repr).
    storage = StorageConfig.from_env(os.environ, store_root=getattr(args, "store_root", None),
                                     workers=getattr(args, "workers", None))
    values = dict(storage=storage, data_root=getattr(args, "data_root", None),
                  cache_dir=getattr(args, "cache_dir", None))
    values.update(changes)
    return ValidationOptions(**values)


def _task(value: str):
    from automl_vision.spec.tasks import parse_task

    try:
        return parse_task(value)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None


def cmd_data(args) -> int:
    _setup_logging(args.verbose)
    return args.data_func(args)


def _data_validate(args) -> int:
    from automl_vision.data.summary import format_report
    from automl_vision.data.validate import validate_dataset

    task = _task(args.task)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    extra = {"classes": classes, "on_invalid": args.on_invalid, "check_images": args.images != "none",
             "decode_images": args.images == "decode"}
    if args.max_pixels is not None:
        extra["max_pixels"] = args.max_pixels
    if args.output_dir and not args.cache_dir:
        extra["cache_dir"] = str(Path(args.output_dir) / "cache")
    options = _data_options(args, **extra)
    result = validate_dataset(args.data, task, validation=args.validation_data, options=options,
                              split_ratio=args.split_ratio if args.output_dir and not args.validation_data else None,
                              seed=args.seed)
    report = result.report
    manifest = None
    if args.output_dir and report.ok:
        from automl_vision.data.manifest import write_ingested

        manifest = write_ingested(result, args.output_dir).manifest
    if args.json:
        print(json.dumps({**report.to_json(), "manifest": str(manifest) if manifest else None}, indent=2))
    else:
        print(format_report(report))
        if manifest:
            print(f"ingested: {manifest} (train and run accept {args.output_dir} as training_data)")
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def _data_convert(args) -> int:
    from automl_vision.data.convert import DEFAULT_TASK, convert

    task = _task(args.task) if args.task else DEFAULT_TASK[args.source_format]
    option_names = {"coco": ("images_dir",), "voc": ("image_set", "images_dir", "masks_dir", "skip_difficult"),
                    "yolo": ("names", "image_set"), "folders": (), "csv": ("images_dir", "label_separator")
                    }[args.source_format]
    given = {"images_dir": args.images_dir, "image_set": args.image_set, "masks_dir": args.masks_dir,
             "skip_difficult": args.skip_difficult or None, "names": args.names,
             "label_separator": args.label_separator}
    unused = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in option_names]
    if unused:
        raise ConfigError(f"{', '.join(unused)} do(es) not apply to --from {args.source_format}")
    options = {("separator" if k == "label_separator" else k): v for k, v in given.items()
               if k in option_names and v is not None}
    conversion = convert(args.source_format, args.source, args.out, task=task, **options)
    what = f"{len(conversion.lines):,} images"
    if not task.is_classification:
        what += f", {conversion.objects:,} objects"
    print(f"wrote {args.out}: {what}, {len(conversion.classes)} classes ({', '.join(conversion.classes[:20])}"
          f"{' ...' if len(conversion.classes) > 20 else ''})")
    for note in conversion.notes:
        print(f"note: {note}")
    print(f"next: automl-vision data validate {args.out} --task {task.value}")
    return EXIT_OK


def _data_export(args) -> int:
    from automl_vision.data.convert import export_coco
    from automl_vision.data.validate import load_dataset

    task = _task(args.task)
    dataset = load_dataset(args.data, task, options=_data_options(args, decode_images=False))
    coco = export_coco(dataset, args.out, images_dir=args.images_dir)
    print(f"wrote {args.out}: {len(coco['images']):,} images, {len(coco['annotations']):,} annotations, "
          f"{len(coco['categories'])} categories")
    return EXIT_OK


def _data_split(args) -> int:
    from automl_vision.data.split import split_jsonl

    files = split_jsonl(args.data, _task(args.task), args.output_dir, ratio=args.split_ratio, seed=args.seed)
    print(f"wrote {files.train} ({files.train_images:,} images) and {files.validation} "
          f"({files.validation_images:,} images)")
    return EXIT_OK


# --- preview -----------------------------------------------------------------------------------

def _add_preview(sub) -> None:
    from automl_vision.spec import hyperparameters as hps

    p = sub.add_parser("preview", help="draw training samples as the model receives them after augmentation",
                       description="Draw training images through the train-time augmentation of the task and "
                                   "model (several draws per image) with their labels, boxes and masks, into "
                                   "OUT/preview.png and OUT/preview.html. Hyperparameter flags (e.g. "
                                   "--train_crop_size) change the augmentation as they change training.")
    p.add_argument("data", help="training JSONL file")
    p.add_argument("--task", required=True, help="image_classification | image_classification_multilabel | "
                                                 "image_object_detection | image_instance_segmentation")
    p.add_argument("--out", required=True, help="folder for preview.png, preview.html and preview.json")
    p.add_argument("--count", type=int, default=16, help="augmented samples in all (default: 16)")
    p.add_argument("--draws", type=int, default=4, help="augmented samples per image (default: 4)")
    group = p.add_argument_group("hyperparameters")
    for hp in hps.HYPERPARAMETERS:
        group.add_argument(f"--{hp.name}", default=argparse.SUPPRESS, metavar=hp.type.__name__.upper(),
                           help=_literal(f"{hp.help} Allowed: {hp.allowed()}."))
    p.set_defaults(func=cmd_preview)


def cmd_preview(args) -> int:
    from automl_vision.report import write_preview
    from automl_vision.spec import hyperparameters as hps

    _setup_logging(args.verbose)
    given = {hp.name: getattr(args, hp.name) for hp in hps.HYPERPARAMETERS if hasattr(args, hp.name)}
    result = write_preview(args.data, args.task, args.out, count=args.count, draws=args.draws,
                           model_name=given.pop("model_name", None), hyperparameters=given)
    print(f"preview of {result.samples} augmented samples from {result.images} images ({result.task.value}, "
          f"{result.model_name}):\n  {result.png}\n  {result.html}", flush=True)
    return EXIT_OK


# --- evaluate ----------------------------------------------------------------------------------

def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions (or a model) against labelled data",
                       description="Score predictions written in the scoring output format (one JSON line per "
                                   "image: its image_url and the model's response) against a labelled JSONL "
                                   "file, with the metrics of training. Prints the metrics as JSON.")
    p.add_argument("--task", help="the task of --predictions (with --model: the package's task); "
                                  "image_classification | image_classification_multilabel | "
                                  "image_object_detection | image_instance_segmentation")
    p.add_argument("--data", required=True, help="labelled JSONL file (the ground truth)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="predictions JSONL file (scoring output format plus image_url)")
    source.add_argument("--model", help="a model package folder: score --data's images with it, then evaluate")
    p.add_argument("--output-dir", help="write metrics.json, predictions (with --model), pictures and report.html "
                                        "here (needed with --model)")
    p.add_argument("--settings", help="with --model: inference settings JSON file (see docs/serving.md)")
    p.add_argument("--validation_metric_type", default="coco_voc", choices=("voc", "coco", "coco_voc"),
                   help="voc: the VOC metric; coco: the 12 COCO statistics; coco_voc: both (default)")
    p.add_argument("--validation_iou_threshold", type=float, default=0.5,
                   help="IoU at which a prediction matches an object (VOC metric; default 0.5)")
    p.add_argument("--output", help="also write the metrics, with per-label figures, to this JSON file")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from automl_vision.spec.tasks import parse_task

    _setup_logging(args.verbose)
    if args.model is not None:
        return _evaluate_with_pictures(args, None)
    if args.task is None:
        raise ConfigError("--task is needed with --predictions", "evaluate")
    try:
        task = parse_task(args.task)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None
    if not 0.1 <= args.validation_iou_threshold <= 1:
        raise ConfigError(f"validation_iou_threshold={args.validation_iou_threshold} out of range; "
                          "expected float in [0.1, 1]", "evaluate")
    if args.predictions is None:
        raise ConfigError("give the predictions to score with --predictions", "evaluate")
    if task.is_classification or args.output_dir:
        return _evaluate_with_pictures(args, task)
    from automl_vision.evaluation.detection_metrics import score_predictions

    result = score_predictions(task, args.data, args.predictions, metric_type=args.validation_metric_type,
                               iou_threshold=args.validation_iou_threshold).to_json()
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return EXIT_OK


def _evaluate_with_pictures(args, task) -> int:
    """evaluate --model (any task), or --predictions of a classification task or with --output-dir."""
    from automl_vision.evaluation.report import evaluate_model, evaluate_predictions

    if not 0.1 <= args.validation_iou_threshold <= 1:
        raise ConfigError(f"validation_iou_threshold={args.validation_iou_threshold} out of range; "
                          "expected float in [0.1, 1]", "evaluate")
    options = {"metric_type": args.validation_metric_type, "iou_threshold": args.validation_iou_threshold}
    if args.model is not None:
        if not args.output_dir:
            raise ConfigError("--output-dir is needed with --model (for the predictions, metrics and pictures)",
                              "evaluate")
        result = evaluate_model(args.model, args.data, args.output_dir, settings_layers=_settings_layers(args),
                                **options)
    else:
        if args.settings:
            raise ConfigError("--settings goes with --model, not --predictions", "evaluate")
        result = evaluate_predictions(task, args.data, args.predictions, args.output_dir, **options)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) or v is None}
    text = json.dumps(scalars, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result.metrics, indent=2) + "\n")
    print(text)
    for f in result.files:
        log.info("wrote %s", f)
    return EXIT_OK


def _settings_layers(args) -> list:
    """Inference settings over the package's settings.json: the environment, then --settings (wins)."""
    import os

    from automl_vision.serving.settings import SETTINGS_ENV, parse_settings_text, read_settings_file

    layers = []
    if os.environ.get(SETTINGS_ENV, "").strip():
        layers.append((f"${SETTINGS_ENV}", parse_settings_text(os.environ[SETTINGS_ENV], f"${SETTINGS_ENV}")))
    if getattr(args, "settings", None):
        layers.append((args.settings, read_settings_file(args.settings)))
    return layers


# --- serve, predict ----------------------------------------------------------------------------

def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model package with the KServe model server",
                       description="Serve a model package over HTTP: the original product's request "
                                   '({"input_data": {"columns": ["image"], "data": [<base64>...]}}) on '
                                   "/v1/models/NAME:predict and /score, raw image bytes, KServe v1 "
                                   "instances and the Open Inference Protocol v2 (/v2/models/NAME/infer). "
                                   "Inference settings: the package's settings.json, then the environment "
                                   "variable AUTOML_VISION_SETTINGS (JSON or a file path), then --settings.")
    p.add_argument("--model", required=True, help="model package folder (a run's best_model/ or a trial's outputs/)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    p.add_argument("--name", default="model", help="model name in the URLs (default: model)")
    p.add_argument("--settings", help="inference settings JSON file (flat or as settings.json)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, leaving the cores to
    # the threads decoding the next requests (on a busy or CPU-limited machine spinning cost 6x here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from automl_vision.serving.server import serve

    _setup_logging(args.verbose)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port number (1-65535)")
    serve(args.model, port=args.port, name=args.name, settings_layers=_settings_layers(args))
    return EXIT_OK


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score a folder of images or a JSONL file with a model package",
                       description="Batch scoring: one JSON object per image in OUT (image_url plus the task's "
                                   "fields, as the server answers), ready for evaluate --predictions.")
    p.add_argument("input", help="a folder of images (searched recursively), one image, or a JSONL file")
    p.add_argument("--model", required=True, help="model package folder")
    p.add_argument("--out", required=True, help="predictions JSONL file to write")
    p.add_argument("--settings", help="inference settings JSON file")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: max_batch_size when set, else 16 on a GPU, 8 on the CPU)")
    p.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default: from the machine)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from automl_vision.serving.batch import predict_batch

    _setup_logging(args.verbose)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be >= 1")
    result = predict_batch(args.model, args.input, args.out, settings_layers=_settings_layers(args),
                           batch_size=args.batch_size, num_workers=args.num_workers)
    print(f"scored {result.images} images in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s): "
          f"{result.output}", flush=True)
    return EXIT_OK


# --- katib -------------------------------------------------------------------------------------

def _add_katib(sub) -> None:
    p = sub.add_parser("katib", help="write the job's Katib Experiments (what kubectl apply -f takes)",
                       description="Write one Katib Experiment per search-space entry, checked offline as Katib's "
                                   "admission webhook would check it. See docs/katib.md.")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--out", help="YAML file to write (default: standard output)")
    p.add_argument("--name", help="Experiment name (default: the job's name, else automl-vision; -0, -1, ... "
                                  "are appended when the search space has several entries)")
    p.add_argument("--namespace", help="namespace in the Experiments' metadata (default: none, kubectl's)")
    p.add_argument("--training_data", help="training data as the trial pods see it (an s3:// URI, or a path "
                                           "inside compute.data_volume) instead of the job's")
    p.add_argument("--validation_data", help="validation data as the trial pods see it, instead of the job's")
    p.add_argument("--image", help="training image instead of compute.image")
    p.add_argument("--cluster-settings", metavar="FILE",
                   help="cluster settings YAML (as for compile): the trials' images, GPU pool, storage Secret, data "
                        "volume, weights and trial_outputs; the job's compute overrides them key by key "
                        "(default: the built-in defaults)")
    p.set_defaults(func=cmd_katib)


def cmd_katib(args) -> int:
    from automl_vision.spec.job import Compute, load_job
    from automl_vision.sweep.katib import check_experiments, experiments_from_job, to_yaml

    _setup_logging(args.verbose)
    job = load_job(args.job)
    updates = {k: getattr(args, k) for k in ("training_data", "validation_data") if getattr(args, k)}
    if args.image:
        updates["compute"] = (job.compute or Compute()).model_copy(update={"image": args.image})
    if updates:
        job = job.model_copy(update=updates)
    from automl_vision.pipeline.settings import load_cluster_settings

    experiments = experiments_from_job(job, name=args.name, namespace=args.namespace,
                                       cluster=load_cluster_settings(args.cluster_settings))
    check_experiments(experiments)
    text = to_yaml(experiments)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    for e in experiments:
        spec = e["spec"]
        stopping = spec.get("earlyStopping", {}).get("algorithmName", "none")
        print(f"{e['metadata']['name']}: {e['metadata']['annotations']['automl-vision/models']}, "
              f"{spec['maxTrialCount']} trials ({spec['parallelTrialCount']} at once), "
              f"algorithm {spec['algorithm']['algorithmName']}, early stopping {stopping}", file=sys.stderr)
    where = args.out or "-"
    print(f"{len(experiments)} Experiment(s) passed the offline checks; apply with: kubectl apply -f {where}",
          file=sys.stderr)
    return EXIT_OK


# --- deploy ------------------------------------------------------------------------------------

def _add_deploy(sub) -> None:
    p = sub.add_parser("deploy", help="serve a model package on KServe: create or update an InferenceService",
                       description="Create the KServe InferenceService that serves the model package at MODEL_URI "
                                   "(automl-vision serve in the project's image), or update the one of that "
                                   "name. Credentials: the pod's service account in a cluster, else the "
                                   "kubeconfig. See docs/serving.md.")
    p.add_argument("--model-uri", required=True, help="the package: s3://, gs://, pvc://claim/path, or an "
                                                      "http(s) URL of a .zip/.tar.gz of it")
    p.add_argument("--name", required=True, help="InferenceService name (a DNS-1035 label); also the model name "
                                                 "in the URLs")
    p.add_argument("--namespace", default="automl-vision-serving",
                   help="default: automl-vision-serving, which manifests/ create; one labelled control-plane (a full "
                        "Kubeflow's kubeflow) is refused, as KServe never injects its storage initializer there")
    p.add_argument("--image", help="predictor image (default: automl-vision-cpu, or -gpu with --gpu, of this version)")
    p.add_argument("--cpu", default="1", help="CPU request (default: 1)")
    p.add_argument("--memory", default="2Gi", help="memory request (default: 2Gi)")
    p.add_argument("--cpu-limit", default="2", help="CPU limit (default: 2)")
    p.add_argument("--memory-limit", default="4Gi", help="memory limit (default: 4Gi)")
    p.add_argument("--gpu", type=int, default=0, help="nvidia.com/gpu limit (default: 0)")
    p.add_argument("--service-account", help="the predictor's ServiceAccount, whose Secrets the storage initializer "
                                             "downloads with (manifests/: automl-vision-serving)")
    p.add_argument("--min-replicas", type=int, default=1, help="default: 1 (0: scale to zero)")
    p.add_argument("--max-replicas", type=int, default=2, help="default: 2")
    p.add_argument("--settings", help="inference settings JSON file (flat or as settings.json), passed to the "
                                      "server as AUTOML_VISION_SETTINGS")
    p.add_argument("--wait", action="store_true", help="wait until the InferenceService is ready")
    p.add_argument("--timeout", type=float, default=600.0, help="with --wait: seconds (default: 600)")
    p.add_argument("--dry-run", action="store_true", help="print the manifest YAML and exit (no cluster needed)")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    from automl_vision.serving.deploy import deploy_model, inference_service_manifest, to_yaml
    from automl_vision.serving.settings import read_settings_file

    _setup_logging(args.verbose)
    options = dict(image=args.image, cpu=args.cpu, memory=args.memory, cpu_limit=args.cpu_limit,
                   memory_limit=args.memory_limit, gpu=args.gpu, service_account=args.service_account,
                   min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                   settings=read_settings_file(args.settings) if args.settings else None)
    if args.model_uri.startswith("s3://") and not args.service_account:
        print("note: no --service-account: KServe's storage initializer downloads s3:// without credentials "
              "(manifests/ define automl-vision-serving, whose Secret holds them)", file=sys.stderr)
    if args.dry_run:
        print(to_yaml(inference_service_manifest(args.model_uri, args.name, args.namespace, **options)), end="")
        return EXIT_OK
    result = deploy_model(args.model_uri, args.name, args.namespace, wait=args.wait, timeout_s=args.timeout,
                          **options)
    print(f"InferenceService {result['namespace']}/{result['name']} {result['action']}"
          + (f": {result['url']}" if result["url"] else ""), flush=True)
    return EXIT_OK


# --- doctor ------------------------------------------------------------------------------------

def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check a cluster before the first run: Pipelines, Katib, GPU nodes, "
                                      "object store, KServe",
                       description="Check, with your own credentials (the kubeconfig, or the pod's service "
                                   "account), what a first run on the cluster needs; one line per finding (OK, "
                                   "WARN: may still work or not checkable from here, PROBLEM: with its fix). "
                                   "Exit 0 when a run can start, 2 when something must be fixed first.")
    p.add_argument("--kubeflow", metavar="URL", help="the Pipelines endpoint (what run --kubeflow takes; default: "
                                                     "$KF_PIPELINES_ENDPOINT; none: not checked)")
    p.add_argument("--token-file", metavar="FILE", help=TOKEN_FILE_HELP + "; the same as run --kubeflow")
    p.add_argument("--namespace", help="where the pipeline and its trials run (default: the pod's, else the "
                                       "kubeconfig context's, else kubeflow)")
    p.add_argument("--serving-namespace", metavar="NS", help="where models are served (default: the deploy "
                                                             "step's, automl-vision-serving)")
    p.add_argument("--cluster-settings", metavar="FILE", help="the cluster settings the pipeline is compiled "
                                                             "with (GPU pool, Secret, buckets; see docs/kubeflow.md)")
    p.add_argument("--katib-namespace", default="kubeflow", metavar="NS",
                   help="where Katib runs, with its katib-config (default: kubeflow)")
    p.add_argument("--s3-endpoint", metavar="URL", help="reach the object store here instead of the Secret's "
                                                        "AWS_ENDPOINT_URL (e.g. through kubectl port-forward)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    import os

    from automl_vision import doctor
    from automl_vision.pipeline.settings import load_cluster_settings
    from automl_vision.pipeline.submit import find_credentials

    _setup_logging(args.verbose)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g} must be above 0", "doctor")
    target = doctor.Target(
        namespace=args.namespace or doctor.default_namespace(), settings=load_cluster_settings(args.cluster_settings),
        serving_namespace=args.serving_namespace, kubeflow_url=args.kubeflow or os.environ.get("KF_PIPELINES_ENDPOINT"),
        credentials=find_credentials(args.token_file), katib_namespace=args.katib_namespace,
        s3_endpoint=args.s3_endpoint, timeout_s=args.timeout)
    findings = doctor.run_checks(target)
    code = doctor.exit_code(findings)
    if args.json:
        print(json.dumps({"namespace": target.namespace, "serving_namespace": target.serving,
                          "findings": [f.to_dict() for f in findings], "exit_code": code}, indent=2))
    else:
        print(doctor.format_findings(findings), flush=True)
    return code


# --- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl-vision", description="Self-hosted AutoML for images.")
    parser.add_argument("--version", action="version", version=f"automl-vision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from automl_vision.earlystopping.katib_config import add_parser as _add_katib_config

    for add in (_add_run, _add_train, _add_validate, _add_demo, _add_leaderboard, _add_weights, _add_data,
                _add_preview, _add_evaluate, _add_compile, _add_katib, _add_serve, _add_predict, _add_deploy,
                _add_doctor, _add_katib_config):
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
