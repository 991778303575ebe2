"""The whole job: ``run`` (here, or submitted to Kubeflow with --kubeflow), ``validate-job``, ``demo`` and
``leaderboard``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from automl_vision.cli.common import TOKEN_FILE_HELP, setup_logging
from automl_vision.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, ConfigError
from automl_vision.spec.job import load_job, resolved


def add_run(sub) -> None:
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
    add_pipeline_options(p, "with --kubeflow: ")
    add_registry_options(p)
    add_report_options(p)
    p.set_defaults(func=cmd_run)


def add_pipeline_options(p, prefix: str = "") -> None:
    """The pipeline's run parameters a user chooses on the command line (run --kubeflow, compile)."""
    p.add_argument("--backend", choices=("local", "katib"), default="local",
                   help=prefix + "where the sweep's trials run: local, one after another in the sweep step's pod "
                                 "(default); katib, as Katib Experiments, one trial pod each (docs/katib.md)")
    p.add_argument("--deploy", metavar="NAME", help=prefix + "serve the packaged model as the KServe "
                                                             "InferenceService NAME (created, or updated) when "
                                                             "the registry's gate promotes it")


def add_report_options(p, prefix: str = "") -> None:
    """What the run's report shows beyond its figures."""
    p.add_argument("--explain-images", metavar="N", type=int, default=-1,
                   help=prefix + "validation images the evaluate step explains for the report, the best model's most "
                                 "confident right and wrong answers (XRAI for classifiers, D-RISE for detectors; "
                                 "docs/serving.md, \"Explanations\"); default: 4 for classification, 2 for detection; "
                                 "0: none")


def add_registry_options(p, prefix: str = "") -> None:
    """The register step's run parameters (docs/kubeflow.md, "Model registry")."""
    p.add_argument("--registry", metavar="URL|FOLDER",
                   help=prefix + "where each run's model is registered: on this machine a folder (default: "
                                 "model_registry/ beside the run folder); on a cluster (--kubeflow, compile) a "
                                 "Kubeflow Model Registry's REST URL (default: none); '' for none")
    p.add_argument("--registered-model", metavar="NAME", default="",
                   help=prefix + "the registered model's name (default: the job's name, else automl-vision-<task>)")
    p.add_argument("--promotion-margin", metavar="POINTS", type=float, default=0.0,
                   help=prefix + "percentage points of the primary metric a new version must gain over the "
                                 "champion to be promoted (default: 0, any better model)")


def cmd_run(args) -> int:
    setup_logging(args.verbose)
    job = load_job(args.job)
    if args.resume and args.output_dir and Path(args.resume).resolve() != Path(args.output_dir).resolve():
        raise ConfigError(f"--resume {args.resume} and --output-dir {args.output_dir} name different folders; "
                          "give one")
    if args.explain_images < -1:
        raise ConfigError(f"--explain-images {args.explain_images}: a number of images, 0 or more", "run")
    if args.kubeflow:
        return _submit_job(job, args)
    if args.schedule or args.namespace or args.token_file:
        raise ConfigError("--schedule, --namespace and --token-file go with --kubeflow URL", "run")
    if args.backend != "local" or args.deploy:
        raise ConfigError("--backend katib and --deploy go with --kubeflow URL (or compile): they need a cluster",
                          "run")
    if args.resume:
        return run_here(job, Path(args.resume), args.device, resume=True, explain_images=args.explain_images)
    from automl_vision.pipeline.runner import default_run_dir  # lazy: CLI start-up

    run_dir = Path(args.output_dir) if args.output_dir else default_run_dir(job)
    return run_here(job, run_dir, args.device, engine=args.engine, registry=args.registry,
                    registered_model=args.registered_model, promotion_margin=args.promotion_margin,
                    explain_images=args.explain_images)


def run_here(job, run_dir: Path, device: str = "auto", resume: bool = False, engine: str = "pipeline",
             **registry) -> int:
    """Run the job on this machine, say how it went, and choose the exit code. ``registry``: the register
    step's settings and the report's explained images (``run_job``)."""
    from automl_vision.pipeline.runner import run_job  # lazy: CLI start-up

    run = run_job(job, run_dir, device, resume=resume, engine=engine, echo=lambda s: print(s, flush=True),
                  **registry)
    if run.result.best is None:
        if run.every_trial_refused:
            print(f"\nno trial produced a model: every trial refused its input (exit {EXIT_BAD_INPUT}); the "
                  f"reason is the last line of {run_dir}/trials/*/console.log", flush=True)
            return EXIT_BAD_INPUT
        print(f"\nno trial produced a model; see {run_dir}/trials/*/console.log", flush=True)
        return EXIT_INTERNAL
    if run.pipeline is not None:
        run.pipeline.raise_for_failure()
        print(run.pipeline.describe(), flush=True)
    print(run.summary(), flush=True)
    return EXIT_OK


def _submit_job(job, args) -> int:
    from automl_vision.pipeline.settings import load_cluster_settings  # lazy: CLI start-up
    from automl_vision.pipeline.submit import find_credentials, submit  # lazy: CLI start-up

    done = submit(job, args.kubeflow, namespace=args.namespace, schedule=args.schedule, experiment=args.experiment,
                  settings=load_cluster_settings(args.cluster_settings), device=args.device, backend=args.backend,
                  inference_service=args.deploy, credentials=find_credentials(args.token_file),
                  registry=args.registry or "", registered_model=args.registered_model,
                  promotion_margin=args.promotion_margin, explain_images=args.explain_images)
    print(f"{done.kind} created: {done.id} (experiment {done.experiment_id})\n{done.url}", flush=True)
    return EXIT_OK


def add_validate(sub) -> None:
    p = sub.add_parser("validate-job", help="check a job file and print it with every default filled in")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    setup_logging(args.verbose)
    job = load_job(args.job)
    automode = None
    if job.automode:
        from automl_vision.sweep.automode import describe_space, fingerprint_of, prepare_automode  # reads the data

        automode = prepare_automode(job, fingerprint_of(job))
        job = automode.job
    view = resolved(job)
    if args.json:
        if automode is not None:
            view["automode"] = {**automode.to_json(), "fingerprint": automode.fingerprint and
                                automode.fingerprint.to_json()}
        print(json.dumps(view, indent=2))
        return EXIT_OK
    if automode is not None:
        # YAML comments: the output stays a valid job (its search_space is the one AutoMode will use)
        print("".join(f"# {line}\n" for line in describe_space(automode).splitlines()), end="")
    print(yaml.safe_dump(view, sort_keys=False), end="")
    return EXIT_OK


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build a small real-image dataset and run a whole AutoML job on it")
    p.add_argument("--output-dir", default="runs/demo", help="folder for the dataset and the run (default: runs/demo)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from automl_vision.demo import prepare_demo  # lazy: CLI start-up

    setup_logging(args.verbose)
    out = Path(args.output_dir)
    job_path = prepare_demo(out)
    print(f"demo dataset and job written to {out} (job: {job_path})", flush=True)
    return run_here(load_job(job_path), out / "run", args.device)


def add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="show the leaderboard of a run folder (also while its sweep runs)")
    p.add_argument("run_dir", help="run folder of automl-vision run")
    p.add_argument("--limit", type=int, default=20, help="trials shown (default: 20)")
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from automl_vision.sweep.local import format_leaderboard, load_sweep  # lazy: CLI start-up

    setup_logging(args.verbose)
    result = load_sweep(args.run_dir)
    compute = result.compute
    print(format_leaderboard(result, limit=args.limit))
    print(f"\nsweep {result.status or 'unknown'}" + (f" ({result.stopped_because})" if result.stopped_because else "")
          + f"; {compute.get('trial_epochs', 0)} trial-epoch(s) used, "
          f"{compute.get('trial_epochs_without_early_termination', 0)} without early termination"
          + (f"; {compute['device_hours']:.4g} device-hour(s)" if compute.get("device_hours") is not None else ""))
    return EXIT_OK
