"""A trained model at work: ``evaluate``, ``serve``, ``predict`` and ``deploy`` (KServe)."""

from __future__ import annotations

import json
import os
import sys

from automl_vision.cli.common import TASKS_HELP, log, settings_layers, setup_logging, task_flag, write_file
from automl_vision.cli.registry import REGISTRY_HELP, REGISTRY_TOKEN_HELP
from automl_vision.errors import EXIT_OK, ConfigError


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions (or a model) against labelled data",
                       description="Score predictions written in the scoring output format (one JSON line per "
                                   "image: its image_url and the model's response) against a labelled JSONL "
                                   "file, with the metrics of training. Prints the metrics as JSON.")
    p.add_argument("--task", help="the task of --predictions (with --model: the package's task); " + TASKS_HELP)
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
    p.add_argument("--explain-images", type=int, default=None, metavar="N",
                   help="with --model: explain N images (the most confident right and wrong answers) into "
                        "OUTPUT_DIR/explanations/ with XRAI (classifiers) or D-RISE (detectors); default 4 for "
                        "classifiers, 2 for detectors; 0: none")
    p.add_argument("--xai-parameters", metavar="JSON",
                   help='with --model: the explanations\' method and parameters as the server takes them, e.g. '
                        '\'{"xai_algorithm": "guided_gradcam"}\' or \'{"num_masks": 500}\' (default: XRAI at the '
                        "original's defaults for classifiers; D-RISE for detectors, on an 8x8 grid, 200 masks on a "
                        "GPU and 32 on a CPU)")
    p.set_defaults(func=cmd_evaluate)


def _check_iou_threshold(args) -> None:
    if not 0.1 <= args.validation_iou_threshold <= 1:
        raise ConfigError(f"validation_iou_threshold={args.validation_iou_threshold} out of range; "
                          "expected float in [0.1, 1]", "evaluate")


def cmd_evaluate(args) -> int:
    setup_logging(args.verbose)
    if args.model is not None:
        return _evaluate_with_pictures(args, None)
    if args.task is None:
        raise ConfigError("--task is needed with --predictions", "evaluate")
    task = task_flag(args.task)
    _check_iou_threshold(args)
    if args.predictions is None:
        raise ConfigError("give the predictions to score with --predictions", "evaluate")
    if task.is_classification or args.output_dir:
        return _evaluate_with_pictures(args, task)
    from automl_vision.evaluation.detection_metrics import score_predictions  # lazy: CLI start-up

    result = score_predictions(task, args.data, args.predictions, metric_type=args.validation_metric_type,
                               iou_threshold=args.validation_iou_threshold).to_json()
    text = json.dumps(result, indent=2)
    if args.output:
        write_file(args.output, text + "\n")
    print(text)
    return EXIT_OK


def _evaluate_with_pictures(args, task) -> int:
    """evaluate --model (any task), or --predictions of a classification task or with --output-dir."""
    from automl_vision.pipeline.evaluate import evaluate_model  # lazy: CLI start-up
    from automl_vision.report.evaluation import evaluate_predictions  # lazy: CLI start-up

    _check_iou_threshold(args)
    options = {"metric_type": args.validation_metric_type, "iou_threshold": args.validation_iou_threshold}
    if args.model is not None:
        if not args.output_dir:
            raise ConfigError("--output-dir is needed with --model (for the predictions, metrics and pictures)",
                              "evaluate")
        if args.explain_images is not None and args.explain_images < 0:
            raise ConfigError(f"--explain-images {args.explain_images} must be 0 or more", "evaluate")
        result = evaluate_model(args.model, args.data, args.output_dir, settings_layers=settings_layers(args),
                                explain_images=args.explain_images,
                                explain_parameters=_json_object(args.xai_parameters, "--xai-parameters", "evaluate"),
                                **options)
    else:
        if args.settings:
            raise ConfigError("--settings goes with --model, not --predictions", "evaluate")
        if args.explain_images is not None or args.xai_parameters is not None:
            raise ConfigError("--explain-images and --xai-parameters go with --model (the explanations need the "
                              "model)", "evaluate")
        result = evaluate_predictions(task, args.data, args.predictions, args.output_dir, **options)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) or v is None}
    text = json.dumps(scalars, indent=2)
    if args.output:
        write_file(args.output, json.dumps(result.metrics, indent=2) + "\n")
    print(text)
    for f in result.files:
        log.info("wrote %s", f)
    return EXIT_OK


# --- serve, predict ----------------------------------------------------------------------------

def add_serve(sub) -> None:
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
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, leaving the cores to
    # the threads decoding the next requests (on a busy or CPU-limited machine spinning cost 6x here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from automl_vision.serving.server import serve  # here, not at the top: after OMP_WAIT_POLICY is set

    setup_logging(args.verbose)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port number (1-65535)")
    serve(args.model, port=args.port, name=args.name, settings_layers=settings_layers(args))
    return EXIT_OK


def add_predict(sub) -> None:
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
    p.add_argument("--explain", metavar="METHOD",
                   choices=("xrai", "integrated_gradients", "guided_gradcam", "guided_backprop", "d_rise"),
                   help="also explain each image: xrai, integrated_gradients, guided_gradcam or guided_backprop "
                        "(classifiers: the predicted class, multi-label every label at or above "
                        "confidence_score_threshold_multilabel), d_rise (detectors: the highest-scoring boxes). "
                        "Pictures (PNG) and attributions (.npy) go to --explain-dir, listed in each line as "
                        "\"explanations\"; see docs/serving.md for the costs")
    p.add_argument("--xai-parameters", metavar="JSON",
                   help='the method\'s parameters as the server takes them, e.g. \'{"n_steps": 25}\' or '
                        '\'{"num_masks": 500, "max_boxes": 1, "attributions": false}\' (default: the method\'s '
                        "defaults, with attributions)")
    p.add_argument("--explain-dir", help="folder for the explanations (default: OUT's name + _explanations, beside it)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from automl_vision.serving.batch import predict_batch  # lazy: CLI start-up

    setup_logging(args.verbose)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be >= 1")
    explain = _explain_flags(args)
    result = predict_batch(args.model, args.input, args.out, settings_layers=settings_layers(args),
                           batch_size=args.batch_size, num_workers=args.num_workers, explain=explain,
                           explain_dir=args.explain_dir)
    what = "scored and explained" if explain else "scored"
    print(f"{what} {result.images} images in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s): "
          f"{result.output}", flush=True)
    return EXIT_OK


def _json_object(text: str | None, flag: str, command: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} is not valid JSON ({e.msg} at column {e.colno}): {text!r}", command) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {text!r}", command)
    return value


def _explain_flags(args) -> dict | None:
    if args.explain is None:
        if args.xai_parameters is not None or args.explain_dir is not None:
            raise ConfigError("--xai-parameters and --explain-dir go with --explain METHOD", "predict")
        return None
    params = _json_object(args.xai_parameters, "--xai-parameters", "predict") or {}
    if params:
        given = params.get("xai_algorithm", args.explain)
        if given != args.explain:
            raise ConfigError(f"--explain {args.explain} but --xai-parameters names xai_algorithm={given!r}",
                              "predict")
    # offline the arrays are written too unless asked not to (files, not a response to carry)
    return {"attributions": True, **params, "xai_algorithm": args.explain}


# --- deploy ------------------------------------------------------------------------------------

def add_deploy(sub) -> None:
    p = sub.add_parser("deploy", help="serve a model package on KServe: create or update an InferenceService",
                       description="Create the KServe InferenceService that serves the model package at MODEL_URI "
                                   "(automl-vision serve in the project's image), or update the one of that "
                                   "name. Credentials: the pod's service account in a cluster, else the "
                                   "kubeconfig. See docs/serving.md.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-uri", help="the package: s3://, gs://, pvc://claim/path, or an http(s) URL of a "
                                            ".zip/.tar.gz of it")
    source.add_argument("--registered-model", metavar="NAME",
                        help="deploy a version of this registered model (with --registry; see --model-version); "
                             "the version then records where it is served")
    p.add_argument("--model-version", default="champion",
                   help="with --registered-model: a version name, latest or champion (default: champion)")
    p.add_argument("--registry", metavar="URL|FOLDER", help="with --registered-model: " + REGISTRY_HELP)
    p.add_argument("--registry-token-file", metavar="FILE", help="with --registered-model: " + REGISTRY_TOKEN_HELP)
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
    from automl_vision.serving.deploy import deploy_model, to_yaml  # lazy: CLI start-up
    from automl_vision.serving.deploy import inference_service_manifest  # lazy: CLI start-up
    from automl_vision.serving.settings import read_settings_file  # lazy: CLI start-up

    setup_logging(args.verbose)
    version = None
    if args.registered_model:
        from automl_vision.registry.register import resolve_version  # the registry client: only when named
        from automl_vision.registry.store import open_registry, read_token  # (as above)

        if not args.registry:
            raise ConfigError("--registered-model needs --registry URL|FOLDER", "deploy")
        registry = open_registry(args.registry, token=read_token(args.registry_token_file))
        version = resolve_version(registry, args.registered_model, args.model_version)
        args.model_uri = version.uri
        print(f"{args.registered_model} version {version.version}"
              + (" (champion)" if version.champion else "") + f": {version.uri}", file=sys.stderr)
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
    if version is not None:
        from automl_vision.registry.register import record_deployment  # as above

        record_deployment(registry, version, name=result["name"], namespace=result["namespace"], url=result["url"])
        print(f"recorded on {args.registered_model} version {version.version} in {registry.location}", flush=True)
    return EXIT_OK
