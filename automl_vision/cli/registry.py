"""The model registry: ``register`` a run's model (or any model package) as a new version."""

from __future__ import annotations

import json
from pathlib import Path

from automl_vision.cli.common import setup_logging
from automl_vision.errors import EXIT_OK, ConfigError

REGISTRY_HELP = ("a Kubeflow Model Registry's REST URL (http(s)://host[:port]), or a local registry folder "
                 "(what automl-vision run keeps beside its run folders: model_registry/)")
REGISTRY_TOKEN_HELP = ("a file holding the registry's bearer token (default: $KF_PIPELINES_SA_TOKEN_PATH, else "
                       "the pod's service account token; none for a local folder)")


def add_register(sub) -> None:
    p = sub.add_parser("register", help="register a run's best model (or a model package) in a model registry",
                       description="Record the model as a new version of the registered model NAME, with its "
                                   "metadata (task, model, hyperparameters, metrics, data, licences). Once per "
                                   "run: registering the same run again completes a failed attempt and adds "
                                   "nothing. See docs/kubeflow.md, \"Model registry\".")
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR", help="a run folder (its best_model/) or a model package")
    p.add_argument("--registry", required=True, metavar="URL|FOLDER", help=REGISTRY_HELP)
    p.add_argument("--name", help="registered model name (default: the run's job name)")
    p.add_argument("--upload", metavar="S3_URI", help="upload the package to this s3://bucket/prefix first and "
                                                     "register that URI (what a cluster deploys from)")
    p.add_argument("--model-uri", metavar="URI", help="the package is already at this URI (s3://, pvc://, ...)")
    p.add_argument("--champion", action="store_true",
                   help="promote this version to champion (default: only the first version of a model is)")
    p.add_argument("--registry-token-file", metavar="FILE", help=REGISTRY_TOKEN_HELP)
    p.set_defaults(func=cmd_register)


def _package_and_run(source: Path) -> tuple[Path, Path | None]:
    if (source / "package.json").is_file() or (source / "config.json").is_file():
        return source, None
    if (source / "best_model").is_dir():
        return source / "best_model", source
    raise ConfigError(f"{source} is neither a run folder (with best_model/) nor a model package (with "
                      "config.json)", "register")


def _run_facts(run_dir: Path | None) -> dict:
    """What a run folder says about itself: the job, the registration the pipeline made, the evaluation."""
    facts: dict = {"job": {}, "registration": {}, "evaluation": None}
    if run_dir is None:
        return facts
    if (run_dir / "registration.json").is_file():
        facts["registration"] = json.loads((run_dir / "registration.json").read_text())
    if (run_dir / "job.yaml").is_file():
        import yaml  # only for a run folder

        facts["job"] = yaml.safe_load((run_dir / "job.yaml").read_text()) or {}
    summary = run_dir / "pipeline_run.json"
    if summary.is_file():
        steps = {s["name"]: s for s in json.loads(summary.read_text()).get("steps", [])}
        evaluation = steps.get("evaluate", {}).get("outputs", {}).get("evaluation", {})
        if evaluation.get("uri") and (Path(evaluation["uri"]) / "metrics.json").is_file():
            facts["evaluation"] = Path(evaluation["uri"])
    return facts


def cmd_register(args) -> int:
    # the registry's modules read packages (torch, the client): not at CLI start-up
    from automl_vision.data.storage import upload_folder
    from automl_vision.registry.gate import GateDecision, decide
    from automl_vision.registry.records import file_sha256, registered_model_name, version_metadata
    from automl_vision.registry.register import register_run
    from automl_vision.registry.store import open_registry, read_token
    from automl_vision.serving.package import load_package

    setup_logging(args.verbose)
    if args.upload and args.model_uri:
        raise ConfigError("give --upload or --model-uri, not both", "register")
    package_dir, run_dir = _package_and_run(Path(args.source))
    package = load_package(package_dir)
    facts = _run_facts(run_dir)
    job = facts["job"]
    name = registered_model_name(args.name or "", job.get("name") or "", package.task.value)
    # one version per run: the pipeline's run id when the run was registered before, else the model's digest
    run_id = facts["registration"].get("metadata", {}).get("run_id") or f"model-{file_sha256(package.weights)[:16]}"
    metrics = (json.loads((facts["evaluation"] / "metrics.json").read_text()) if facts["evaluation"]
               else dict(package.metrics))
    registry = open_registry(args.registry, token=read_token(args.registry_token_file))
    uri = args.model_uri
    if not registry.local and not uri and not args.upload:
        raise ConfigError(f"the model registry {args.registry} records where a model is, it does not store it: "
                          "give --upload s3://bucket/prefix (uploaded first) or --model-uri URI", "register")
    existing = registry.find_run(name, run_id)
    if args.upload and (existing is None or not existing.complete):
        upload_folder(package_dir, args.upload)
        uri = args.upload.rstrip("/")
        print(f"uploaded {package_dir} to {uri}", flush=True)
    metadata = version_metadata(package_dir, metrics=metrics, run_id=run_id,
                                training_data=str(job.get("training_data", "")),
                                validation_data=str(job.get("validation_data") or ""), run_dir=run_dir,
                                job_name=str(job.get("name") or ""))
    champion = registry.champion(name)
    metric = package.task.primary_metric
    value = metadata.get("primary_metric_value")
    value = float(value) if isinstance(value, (int, float)) else None
    if args.champion:
        decision = GateDecision(True, "promoted by hand (register --champion)", metric, value,
                                champion.version if champion else "")
    elif champion is None:
        decision = decide(metric, value, None)  # the first version
    else:
        decision = GateDecision(False, f"registered by hand: version {champion.version} stays the champion (give "
                                       "--champion to promote this one; the pipeline's gate compares both on the "
                                       "same data)", metric, value, champion.version)
    done = register_run(registry, name, run_id=run_id, package_dir=package_dir, metadata=metadata,
                        decision=decision, uri=uri, override=args.champion, echo=lambda s: print(s, flush=True))
    print(done.describe(), flush=True)
    return EXIT_OK
