"""The cluster: ``compile`` (the pipeline package), ``katib`` (Experiments), ``katib-config`` (register the
early-stopping service) and ``doctor`` (check a cluster before the first run)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from automl_vision.cli.common import TOKEN_FILE_HELP, setup_logging, write_file
from automl_vision.cli.run import add_pipeline_options, add_registry_options, add_report_options
from automl_vision.earlystopping.katib_config import (
    CONFIGMAP_NAME,
    DEFAULT_IMAGE,
    DEFAULT_NAMESPACE,
    SUPPORTED_KATIB,
    dump_document,
    read_configmap,
    update_document,
)
from automl_vision.errors import EXIT_OK, ConfigError
from automl_vision.registry.store import check_cluster_registry
from automl_vision.spec.job import Compute, load_job


def add_compile(sub) -> None:
    p = sub.add_parser("compile", help="write the Kubeflow pipeline package for upload through the Pipelines UI",
                       description="Compile the AutoML pipeline to a package for the Pipelines UI; the job's "
                                   "values become the defaults of the pipeline's parameters.")
    p.add_argument("job", nargs="?", help="job YAML file (optional: without it every parameter is entered in the UI)")
    p.add_argument("--out", required=True, help="pipeline package to write (.yaml)")
    p.add_argument("--cluster-settings", metavar="FILE", help="images (its registry key is required), GPU pool, "
                                                             "secrets (YAML; see docs/kubeflow.md)")
    add_pipeline_options(p, "default of the run: ")
    add_registry_options(p, "default of the run: ")
    add_report_options(p, "default of the run: ")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args) -> int:
    from automl_vision.pipeline.pipeline import compile_pipeline  # lazy: CLI start-up
    from automl_vision.pipeline.settings import load_cluster_settings  # lazy: CLI start-up

    setup_logging(args.verbose)
    job = load_job(args.job) if args.job else None
    check_cluster_registry(args.registry or "")
    path = compile_pipeline(args.out, settings=load_cluster_settings(args.cluster_settings), job=job,
                            backend=args.backend, inference_service=args.deploy, registry=args.registry or "",
                            registered_model=args.registered_model, promotion_margin=args.promotion_margin,
                            explain_images=args.explain_images)
    print(f"pipeline package written to {path}", flush=True)
    return EXIT_OK


# --- katib -------------------------------------------------------------------------------------

def add_katib(sub) -> None:
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
    from automl_vision.pipeline.settings import load_cluster_settings  # lazy: CLI start-up
    from automl_vision.sweep.katib import check_experiments, experiments_from_job, to_yaml  # lazy: CLI start-up

    setup_logging(args.verbose)
    job = load_job(args.job)
    updates = {k: getattr(args, k) for k in ("training_data", "validation_data") if getattr(args, k)}
    if args.image:
        updates["compute"] = (job.compute or Compute()).model_copy(update={"image": args.image})
    if updates:
        job = job.model_copy(update=updates)
    if job.automode:
        from automl_vision.sweep.automode import describe_space, fingerprint_of, prepare_automode  # reads the data

        automode = prepare_automode(job, fingerprint_of(job))
        job = automode.job
        print(describe_space(automode), file=sys.stderr)
    experiments = experiments_from_job(job, name=args.name, namespace=args.namespace,
                                       cluster=load_cluster_settings(args.cluster_settings))
    check_experiments(experiments)
    text = to_yaml(experiments)
    if args.out:
        write_file(args.out, text)
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


# --- katib-config --------------------------------------------------------------------------------

def add_katib_config(sub) -> None:
    p = sub.add_parser(
        "katib-config",
        help="add the early-stopping service's entries to Katib's katib-config (prints the result to apply)",
        description="Add automl-vision's early-stopping algorithms (bandit, truncation-selection, asha, hyperband) "
                    "to a Katib KatibConfig, keeping every other setting. Input: the live ConfigMap (--from-cluster), a "
                    "ConfigMap manifest or a KatibConfig file (-f; - for standard input). Output: the same "
                    "kind of document on standard output (or --in-place), what changed on standard error.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-cluster", action="store_true",
                        help=f"read the ConfigMap {CONFIGMAP_NAME} with your kubeconfig (or in-cluster credentials)")
    source.add_argument("-f", "--file", metavar="PATH",
                        help="a ConfigMap manifest or a KatibConfig document; - reads standard input")
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help=f"the early-stopping service's image as the nodes pull it (default: {DEFAULT_IMAGE})")
    p.add_argument("--katib-namespace", default=DEFAULT_NAMESPACE, help="Katib's namespace (default: kubeflow)")
    p.add_argument("--in-place", action="store_true", help="rewrite --file instead of printing")
    p.set_defaults(func=cmd_katib_config)


def cmd_katib_config(args) -> int:
    if args.in_place and (not args.file or args.file == "-"):
        raise ConfigError("--in-place needs --file PATH")
    if args.from_cluster:
        doc, where = read_configmap(args.katib_namespace), f"{args.katib_namespace}/{CONFIGMAP_NAME}"
    else:
        where = "standard input" if args.file == "-" else args.file
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {where}: {e.strerror}") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not YAML: {e}") from None
    try:
        out, changes, versions = update_document(doc, args.image)
    except ConfigError as e:
        raise ConfigError(e.problems, source=where) from None
    text = dump_document(out)
    if args.in_place:
        Path(args.file).write_text(text)
    else:
        sys.stdout.write(text)
    print(f"katib-config ({where}): {', '.join(changes)}; image {args.image}", file=sys.stderr)
    unchecked = sorted(v for v in versions if v not in SUPPORTED_KATIB)
    if unchecked:
        print(f"note: its Katib images are version {', '.join(unchecked)}; the entries were checked against Katib "
              f"{', '.join(SUPPORTED_KATIB)}", file=sys.stderr)
    if out.get("kind") == "ConfigMap" and not args.in_place:
        print("apply with: ... | kubectl replace -f -   (fails if katib-config changed since it was read; "
              "run again then). The next Experiment uses it: no restart of katib-controller is needed.",
              file=sys.stderr)
    elif args.in_place:
        print(f"wrote {args.file}; rebuild and apply your Katib kustomization", file=sys.stderr)
    return EXIT_OK


# --- doctor ------------------------------------------------------------------------------------

def add_doctor(sub) -> None:
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
    from automl_vision import doctor  # lazy: CLI start-up
    from automl_vision.pipeline.settings import load_cluster_settings  # lazy: CLI start-up
    from automl_vision.pipeline.submit import find_credentials  # lazy: CLI start-up

    setup_logging(args.verbose)
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
