"""The AutoML pipeline: its parameters are the job's own top-level keys, its steps the components.

    ingest -> preview
           -> sweep -> evaluate -> report (also reads ingest's data and sweep's run)
                    -> package -> deploy (only with deploy=True)

The same pipeline runs on kfp's local runner (``automl-vision run``; platform settings are ignored
there) and on a cluster (``compile``, ``run --kubeflow``), where each step gets the settings of
``ClusterSettings``: images, the GPU pool of the training steps, a memory-backed ``/dev/shm``, the
object-store Secret and the data volume.
"""

# No "from __future__ import annotations": kfp reads the pipeline's parameter annotations as objects.
from pathlib import Path
from typing import Any

from kfp import compiler, dsl
from kfp import kubernetes as k8s

from automl_vision.pipeline import components as C
from automl_vision.pipeline.settings import ClusterSettings
from automl_vision.spec.job import JobSpec

PIPELINE_NAME = "automl-vision"
PIPELINE_DESCRIPTION = ("AutoML for images: validate and split the labelled data, preview the augmentation, "
                        "sweep hyperparameters, evaluate the best model, report the run and package the model "
                        "for serving; optionally deploy it on KServe.")
#: Steps that train or run a model: on the GPU pool when there is one, with a memory-backed /dev/shm.
TRAINING_STEPS = ("sweep", "evaluate")
#: The pipeline's parameters that are not keys of the job: how and where the job runs.
RUN_PARAMETERS = ("device", "backend", "deploy", "inference_service_name", "serving_namespace")
#: The deploy step's InferenceService unless another name is given (as in manifests/kserve/inferenceservice.yaml).
DEFAULT_INFERENCE_SERVICE = "automl-vision-model"


def build_pipeline(settings: ClusterSettings | None = None):
    """The ``@dsl.pipeline`` with ``settings`` applied to every step."""
    settings = settings or ClusterSettings()

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)
    def automl_vision_pipeline(
        task: str,
        training_data: str,
        validation_data: str = "",
        limits: dict = {},
        sweep: dict = {},
        search_space: list = [],
        training_parameters: dict = {},
        compute: dict = {},
        device: str = "auto",
        backend: str = "local",
        deploy: bool = False,
        inference_service_name: str = DEFAULT_INFERENCE_SERVICE,
        serving_namespace: str = "",
        name: str = "",
    ):
        data = C.ingest(task=task, training_data=training_data, validation_data=validation_data,
                        training_parameters=training_parameters)
        # the preview reads the JSONL file itself; after ingest, so that bad data fails with ingest's report
        shown = C.preview(task=task, training_data=training_data, training_parameters=training_parameters).after(data)
        # backend katib: the trial pods read the job's own URIs; the Experiments are named after the run,
        # so a retried step re-attaches to them
        swept = C.sweep(task=task, training_data=data.outputs["dataset"], limits=limits, sweep=sweep,
                        search_space=search_space, training_parameters=training_parameters, compute=compute,
                        device=device, backend=backend, katib_training_data=training_data,
                        katib_validation_data=validation_data, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        scored = C.evaluate(run=swept.outputs["run"], validation_split=data.outputs["validation"],
                            validation_data=validation_data)
        # the report shows the evaluate step's pictures rather than scoring the model again
        reported = C.report(run=swept.outputs["run"], dataset=data.outputs["dataset"],
                            evaluation=scored.outputs["evaluation"], validation_split=data.outputs["validation"],
                            validation_data=validation_data, job_name=name, training_data=training_data)
        packaged = C.package(run=swept.outputs["run"])
        for step in (data, shown, swept, scored, reported, packaged):
            configure_step(step, settings)
        with dsl.If(deploy == True, name="deploy-requested"):  # noqa: E712 (a pipeline condition, not a bool)
            served = C.deploy(model=packaged.outputs["model"], inference_service_name=inference_service_name,
                              namespace=serving_namespace, image=settings.cpu_image).after(scored)
            configure_step(served, settings)

    return automl_vision_pipeline


def configure_step(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """Image, resources and Kubernetes settings of one step."""
    # A scheduled retraining reads the same URIs as the run before: a cached step would skip new data.
    task.set_caching_options(enable_caching=False)
    task.set_env_variable("PYTHONUNBUFFERED", "1")  # progress reaches the pod log (and the local runner) at once
    training = task.name in TRAINING_STEPS
    gpu = settings.gpu if training else None
    task.set_container_image(settings.cuda_image if gpu is not None else settings.cpu_image)
    if training:
        k8s.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                            size_limit=settings.shm_size)
    if gpu is not None:
        task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.accelerator_limit)
        for key, value in sorted(gpu.node_selector.items()):
            k8s.add_node_selector(task, label_key=key, label_value=value)
        for t in gpu.tolerations:
            k8s.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    if settings.storage_secret is not None:
        k8s.use_secret_as_env(task, secret_name=settings.storage_secret.name,
                              secret_key_to_env=dict(sorted(settings.storage_secret.keys.items())), optional=True)
    if settings.data_volume is not None:
        k8s.mount_pvc(task, pvc_name=settings.data_volume.claim_name, mount_path=settings.data_volume.mount_path)


#: The pipeline with the default cluster settings; what ``pipelines/`` holds and the local runner runs.
automl_vision_pipeline = build_pipeline()


def run_arguments(*, device: str = "auto", backend: str = "local", inference_service: str | None = None,
                  serving_namespace: str = "") -> dict[str, Any]:
    """The pipeline's run parameters (``RUN_PARAMETERS``): ``inference_service`` a name deploys the
    package as that InferenceService (in ``serving_namespace``, default the pipeline's); None: no deploy."""
    from automl_vision.pipeline.steps import check_sweep_backend

    check_sweep_backend(backend)
    return {"device": device, "backend": backend, "deploy": inference_service is not None,
            "inference_service_name": inference_service or DEFAULT_INFERENCE_SERVICE,
            "serving_namespace": serving_namespace}


def pipeline_arguments(job: JobSpec, *, device: str = "auto", backend: str = "local",
                       inference_service: str | None = None, serving_namespace: str = "") -> dict[str, Any]:
    """The pipeline's arguments for ``job``: its top-level keys, under the same names, and the run
    parameters (:func:`run_arguments`). With backend katib, the job is translated into its Katib
    Experiments here, so that what Katib cannot run (data on this machine, ...) fails before a run starts."""
    arguments = run_arguments(device=device, backend=backend, inference_service=inference_service,
                              serving_namespace=serving_namespace)
    if backend == "katib":
        from automl_vision.sweep.katib import experiments_from_job

        experiments_from_job(job)
    d = job.to_dict()
    return {
        "task": d["task"],
        "training_data": d["training_data"],
        "validation_data": d.get("validation_data", ""),
        "limits": d["limits"],
        "sweep": d["sweep"],
        "search_space": d["search_space"],
        "training_parameters": d["training_parameters"],
        "compute": d.get("compute", {}),
        "name": d.get("name") or "",
        **arguments,
    }


def compile_pipeline(path: str | Path, *, settings: ClusterSettings | None = None, job: JobSpec | None = None,
                     **run: Any) -> Path:
    """Write the pipeline package (YAML) for upload; with ``job`` its values, with ``run`` (the keywords
    of :func:`run_arguments`) the run parameters become the parameters' defaults."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    defaults = pipeline_arguments(job, **run) if job is not None else run_arguments(**run) if run else None
    compiler.Compiler().compile(build_pipeline(settings), str(path), pipeline_parameters=defaults)
    return path
