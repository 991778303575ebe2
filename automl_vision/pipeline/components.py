"""The pipeline's steps as lightweight Python components, each a few lines over one library call.

A component's body is its imports, the library call and the writing of its outputs; kfp copies
the body (and the docstring, shown in the Pipelines UI) into the component spec, so the body
holds no logic worth testing on its own: the library below it is tested. Call a step directly in
a test with ``step.python_func(...)`` and real artifacts.

Images: CPU steps run in ``automl-vision-cpu:VERSION``, GPU steps in ``automl-vision-gpu:VERSION``
(built from images/); the pipeline can point them at a registry (``ClusterSettings.registry``).
The images already hold kfp, so nothing is pip-installed when a step starts.

No ``from __future__ import annotations`` here: kfp reads the parameter annotations as objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from automl_vision.spec.cluster import cpu_image, cuda_image

CPU_IMAGE = cpu_image()
CUDA_IMAGE = cuda_image()


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    task: str,
    training_data: str,
    dataset: Output[Dataset],
    validation: Output[Dataset],
    statistics: Output[Metrics],
    validation_data: str = "",
    training_parameters: dict = {},
):
    """Validate the labelled data (every problem with file:line), split it and write the Parquet
    manifest every trial reads (dataset: both splits, stats.json, report.json, remote images cached
    beside it); without validation data, also the held-out split as JSONL (validation), for evaluate."""
    import os

    from automl_vision.data.manifest import ingest
    from automl_vision.data.load import split_jsonl
    from automl_vision.spec.hyperparameters import BY_NAME
    from automl_vision.spec.tasks import parse_task

    split = {name: BY_NAME[name].coerce(training_parameters.get(name, BY_NAME[name].default))
             for name in ("split_ratio", "seed")}
    result = ingest(training_data, parse_task(task), dataset.path, validation=validation_data or None,
                    split_ratio=split["split_ratio"], seed=split["seed"])
    os.makedirs(validation.path, exist_ok=True)  # on a cluster an output that was never written fails the step
    if not validation_data:
        split_jsonl(training_data, parse_task(task), validation.path, ratio=split["split_ratio"], seed=split["seed"])
    stats = result.report.stats
    statistics.log_metric("images", stats["images"])
    for split_name, count in stats["splits"].items():
        statistics.log_metric(f"{split_name}_images", count)
    statistics.log_metric("classes", len(stats["classes"]))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preview(
    task: str,
    training_data: str,
    preview: Output[HTML],
    training_parameters: dict = {},
    search_space: list = [],
    count: int = 16,
):
    """Show training images exactly as the job's models receive them, one model per model family of
    its search_space (with its training_parameters): each image next to draws of the train-time
    augmentation (an HTML page with the pictures inline). Runs before the sweep, so that a wrong
    augmentation is seen before any training."""
    import shutil
    import tempfile

    from automl_vision.report.preview import write_preview

    with tempfile.TemporaryDirectory() as folder:
        result = write_preview(training_data, task, folder, count=count, hyperparameters=training_parameters,
                               search_space=search_space)
        shutil.copyfile(result.html, preview.path)
        print(f"preview of {result.samples} augmented samples from {result.images} images "
              f"({', '.join(result.models)})", flush=True)


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def sweep(
    task: str,
    training_data: Input[Dataset],
    limits: dict,
    sweep: dict,
    search_space: list,
    training_parameters: dict,
    run: Output[Artifact],
    leaderboard: Output[Metrics],
    compute: dict = {},
    device: str = "auto",
    backend: str = "local",
    katib_training_data: str = "",
    katib_validation_data: str = "",
    experiment_name: str = "",
    katib_namespace: str = "",
    run_id: str = "",
    cluster: str = "",
    compiled_for: str = "",
):
    """Run the hyperparameter sweep on the ingested data; the run folder holds every trial, the
    leaderboard and the best trial's model (best_model/). backend local: the trials one after another
    in this step; katib: as Katib Experiments (named experiment_name, default derived from run_id, in
    katib_namespace, default this pod's) whose trial pods read katib_training_data/katib_validation_data,
    are placed by cluster (the cluster settings the pipeline was compiled with, as JSON, under the job's compute)
    and upload their folders to its trial_outputs, from where every trial's record and the best model
    are read back (katib.json holds Katib's best trial). compiled_for: the backend the pipeline placed
    this step for (katib: a CPU node without a GPU); a run with the other backend is refused."""
    import functools

    from automl_vision.errors import AutoMLError
    from automl_vision.pipeline.steps import run_sweep_step

    job = {"task": task, "training_data": training_data.path, "limits": limits, "sweep": sweep,
           "search_space": search_space, "training_parameters": training_parameters, "compute": compute or None}
    result = run_sweep_step(job, run.path, backend=backend, katib_training_data=katib_training_data,
                            katib_validation_data=katib_validation_data, experiment_name=experiment_name,
                            katib_namespace=katib_namespace, run_id=run_id, device=device, cluster=cluster,
                            compiled_for=compiled_for, echo=functools.partial(print, flush=True))
    statuses = [t.status for t in result.trials]
    leaderboard.log_metric("trials", len(statuses))
    leaderboard.log_metric("trials_completed", statuses.count("completed") + statuses.count("early_stopped"))
    if result.best is None:
        raise AutoMLError("no trial produced a model; see trials/*/console.log in the run folder")
    leaderboard.log_metric(f"best_{result.primary_metric}", result.best.best_value)


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def evaluate(
    run: Input[Artifact],
    validation_split: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    validation_data: str = "",
    registry: str = "",
    registered_model: str = "",
    job_name: str = "",
    explain_images: int = -1,
):
    """Score the best model on the validation images (validation_data when given, else the held-out
    split): the metrics of training, per-class figures, the confusion matrix and the micro-averaged
    one-vs-rest ROC curve (classification_metrics), ROC/PR or AP plots and sample predictions (report),
    every file (evaluation). With a registry, also the champion of registered_model (default: job_name)
    on the same images, for the register step's gate (champion_* metrics, evaluation/champion.json). Explain
    explain_images of the images for the report (-1: 4 for classification, 2 for detection; 0: none)."""
    import functools
    import math
    import os
    import shutil

    from automl_vision.evaluation.scoring import PREDICTIONS_FILE
    from automl_vision.pipeline.evaluate import evaluate_model
    from automl_vision.pipeline.registration import registered_model_name, score_champion
    from automl_vision.pipeline.steps import classification_roc, validation_jsonl

    data = validation_jsonl(validation_data, validation_split.path)
    result = evaluate_model(os.path.join(run.path, "best_model"), data, evaluation.path,
                            explain_images=None if explain_images < 0 else explain_images,
                            echo=functools.partial(print, flush=True))
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(name, value)
    if result.task.value == "image_classification":  # multi-label has one 2x2 matrix per class instead
        classification_metrics.log_confusion_matrix(result.metrics["labels"], result.metrics["confusion_matrix"])
    roc = classification_roc(result.task, data, os.path.join(evaluation.path, PREDICTIONS_FILE))
    if roc is not None:
        classification_metrics.log_roc_curve(*roc)
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), report.path)
    champion = score_champion(registry, registered_model_name(registered_model, job_name, result.task.value), data,
                              evaluation.path, task=result.task.value, echo=functools.partial(print, flush=True))
    if champion is not None and champion.value is not None:
        metrics.log_metric(f"champion_{champion.metric}", champion.value)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    run: Input[Artifact],
    dataset: Input[Dataset],
    evaluation: Input[Artifact],
    validation_split: Input[Dataset],
    report: Output[HTML],
    validation_data: str = "",
    job_name: str = "",
    training_data: str = "",
    registration: Input[Artifact] = None,
):
    """The run report (job_name, and training_data as the user gave it, shown in its summary): summary, the
    ingested data, the sortable leaderboard, every trial's learning curve with the early terminations and
    the rule that ended each, hyperparameters against the metric, the evaluate step's pictures and sample
    predictions (evaluation, of the validation data it scored), and the registered version with the gate's
    decision (registration): an HTML page with the pictures inline."""
    import json
    import os

    from automl_vision.pipeline.steps import validation_jsonl
    from automl_vision.registry.register import REGISTRATION_FILE
    from automl_vision.report.rescore import Evaluation
    from automl_vision.report.run_report import write_report

    registered = None
    if registration is not None and os.path.isfile(os.path.join(registration.path, REGISTRATION_FILE)):
        with open(os.path.join(registration.path, REGISTRATION_FILE)) as f:
            registered = json.load(f)
    write_report(run.path, report.path, training_data=dataset.path, name=job_name, source_data=training_data,
                 evaluation=Evaluation(evaluation.path, validation_jsonl(validation_data, validation_split.path)),
                 registration=registered)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def package(run: Input[Artifact], validation_split: Input[Dataset], model: Output[Model],
            validation_data: str = ""):
    """Package the best trial's model for serving: weights, labels, inference settings, a README, and
    an ONNX export kept only when it scores the validation data (validation_data when given, else the
    ingest step's validation split) like the trained model: answers per image within tolerances, primary
    metric within 0.5 points."""
    import os

    from automl_vision.pipeline.steps import validation_jsonl
    from automl_vision.serving.export import package_model

    data = validation_jsonl(validation_data, validation_split.path)
    result = package_model(os.path.join(run.path, "best_model"), model.path, validation_data=data)
    gate = result.onnx.gate or {}
    model.metadata.update({"task": result.settings.task.value, "model_name": result.settings.model_name,
                           "onnx": result.onnx.file is not None,
                           "onnx_check": gate.get("reason") or result.onnx.reason})
    print(f"ONNX export {'kept' if result.onnx.file else 'left out'}: {gate.get('reason') or result.onnx.reason}",
          flush=True)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    dataset: Input[Dataset],
    run: Input[Artifact],
    registration: Output[Artifact],
    registry: str = "",
    registered_model: str = "",
    job_name: str = "",
    task: str = "",
    promotion_margin: float = 0.0,
    training_data: str = "",
    validation_data: str = "",
    run_id: str = "",
    image: str = "",
) -> NamedTuple("Registered", [("promoted", bool), ("version", str), ("registered_model", str)]):
    """Register the package as a new version of registered_model (default: job_name) in registry (a
    Kubeflow Model Registry URL; a folder: a local registry; '': none), with the run's metadata (task,
    model and hyperparameters, the evaluate step's metrics, data URIs and the manifest's hash, run id,
    Katib Experiment, image, licences), once per run (a retry completes it). The gate: the version is
    promoted to champion only when its primary metric beats the champion's, scored by the evaluate step
    on the same images, by more than promotion_margin points (the first version always is)."""
    import collections
    import functools

    from automl_vision.pipeline.registration import register_model_step, registered_model_name
    from automl_vision.pipeline.steps import storage_uri

    name = registered_model_name(registered_model, job_name, task)
    doc = register_model_step(registry, name, model.path, evaluation.path, registration.path, run_id=run_id,
                              package_uri=storage_uri(model.uri), margin_points=promotion_margin,
                              training_data=training_data, validation_data=validation_data, dataset=dataset.path,
                              run_dir=run.path, image=image, job_name=job_name,
                              echo=functools.partial(print, flush=True))
    registration.metadata.update({"registered_model": name, "version": doc["version"], "champion": doc["champion"],
                                  "gate": doc["decision"]["reason"]})
    outputs = collections.namedtuple("Registered", ["promoted", "version", "registered_model"])
    return outputs(bool(doc["champion"]), doc["version"], name)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(
    model: Input[Model],
    inference_service_name: str,
    inference_service: Output[Artifact],
    namespace: str = "automl-vision-serving",
    image: str = "",
    service_account: str = "automl-vision-serving",
    settings: dict = {},
    wait: bool = True,
    timeout_minutes: float = 15.0,
    registry: str = "",
    registered_model: str = "",
    model_version: str = "",
):
    """Serve the package as a KServe InferenceService: create it, or update the one of that name (a
    retraining updates the same endpoint); with wait, until it is Ready. namespace: one without the
    control-plane label KServe skips ('': automl-vision-serving, which manifests/ create);
    image: default automl-vision-cpu of this version; service_account: the identity KServe downloads the
    package with. inference_service: the manifest sent, with name, namespace, action and URL. With a
    registry, the version model_version of registered_model records where it is served."""
    import json

    from automl_vision.pipeline.registration import deployed_in_registry
    from automl_vision.pipeline.steps import storage_uri
    from automl_vision.serving.deploy import deploy_model

    done = deploy_model(storage_uri(model.uri), inference_service_name, namespace or None, image=image or None,
                        service_account=service_account or None, settings=settings, wait=wait,
                        timeout_s=timeout_minutes * 60)
    with open(inference_service.path, "w") as f:
        json.dump(done["manifest"], f, indent=2)
    inference_service.metadata.update({k: done[k] or "" for k in ("name", "namespace", "action", "url")})
    print(f"InferenceService {done['namespace']}/{done['name']} {done['action']}" +
          (f": {done['url']}" if done["url"] else ""), flush=True)
    deployed_in_registry(registry, registered_model, model_version, name=done["name"], namespace=done["namespace"],
                         url=done["url"])


#: Every step, in pipeline order (components/ holds one spec per entry); deploy only runs when asked.
STEPS = (ingest, preview, sweep, evaluate, package, register, report, deploy)
