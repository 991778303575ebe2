"""The AutoML pipeline: its parameters are the job's own top-level keys, its steps the components.

    ingest -> preview -> sweep -> evaluate -> package -> register -> report (also reads ingest's data,
                                                                  sweep's run and evaluate's pictures)
                                                       -> deploy (only with deploy=True, when promoted)

evaluate also scores the registry's champion on the same images; register records the run's version
(in a Kubeflow Model Registry, a local registry folder, or nowhere) and promotes it only when it beats
the champion (``automl_vision.pipeline.registration``).

The same pipeline runs on kfp's local runner (``automl-vision run``; platform settings are ignored
there) and on a cluster (``compile``, ``run --kubeflow``), where each step gets the settings of
``ClusterSettings``: images, CPU and memory requests, the GPU pool of the training steps, a
memory-backed ``/dev/shm``, the environment (``ClusterSettings.env``), the object-store Secret and
the data volume.
"""

# No "from __future__ import annotations": kfp reads the pipeline's parameter annotations as objects.
import concurrent.futures
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from kfp import compiler, dsl
from kfp import kubernetes as k8s

from automl_vision.pipeline import components as C
from automl_vision.errors import ConfigError
from automl_vision.pipeline.steps import check_sweep_backend
from automl_vision.registry.gate import DEFAULT_MARGIN_POINTS
from automl_vision.registry.records import registered_model_name
from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE
from automl_vision.spec.cluster import PLACEHOLDER_REGISTRY, SHM_PATH, ClusterSettings, quantity
from automl_vision.spec.job import JobSpec
from automl_vision.sweep.katib import check_trial_outputs, experiments_from_job

PIPELINE_NAME = "automl-vision"
PIPELINE_DESCRIPTION = ("AutoML for images: validate and split the labelled data, preview the augmentation, "
                        "sweep hyperparameters, evaluate the best model, report the run and package the model "
                        "for serving; optionally deploy it on KServe.")
#: Steps that train or run a model: on the GPU pool when there is one, with a memory-backed /dev/shm.
TRAINING_STEPS = ("sweep", "evaluate")
#: /dev/shm of a Katib sweep step (it launches and waits; the trials train): the container runtime's default.
LAUNCHER_SHM_SIZE = "64Mi"
#: The pipeline's parameters that are not keys of the job: how and where the job runs.
RUN_PARAMETERS = ("device", "backend", "deploy", "inference_service_name", "serving_namespace", "registry",
                  "registered_model", "promotion_margin", "explain_images")
#: The deploy step's InferenceService unless another name is given (as in manifests/kserve/inferenceservice.yaml).
DEFAULT_INFERENCE_SERVICE = "automl-vision-model"
#: What the pipeline's description says when its images name the placeholder registry (the committed package).
PLACEHOLDER_NOTE = (f" Its images name the placeholder registry {PLACEHOLDER_REGISTRY}, which no cluster can pull "
                    "from: compile the pipeline for your cluster with `automl-vision compile --cluster-settings "
                    "FILE` (the file's `registry` key names where the images of images/ were pushed).")
#: The oldest Kubeflow Pipelines backend the compiled pipeline runs on (Kubeflow 1.10.0 ships 2.4.1). The
#: drivers of 2.4.0 and older parse each step's Kubernetes settings strictly (an unknown field fails the
#: step), so the package holds only fields of that backend's kubernetes_executor_config.proto and
#: pipeline_spec.proto (tests/upstream/, tests/unit/test_kfp_backend_conformance.py).
OLDEST_KFP_BACKEND = "2.4.0"


def build_pipeline(settings: ClusterSettings | None = None, backend: str = "local"):
    """The ``@dsl.pipeline`` with ``settings`` applied to every step, its sweep step placed for ``backend``:
    ``local`` trains in the step, on the GPU pool; ``katib`` only launches the Experiments and waits, on a
    CPU node without a GPU (the trials need the GPUs), and needs ``settings.trial_outputs``. The sweep
    step refuses a run whose ``backend`` parameter is not the one compiled for."""
    # Built on a thread of its own: kfp's task setters each call inspect.stack(), which walks all of
    # sys.modules for every frame without a source file (a notebook cell, pytest-xdist's worker); a new
    # thread's stack holds only files, and a build takes 0.05 s instead of 0.75 s with torch loaded.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="build-pipeline") as pool:
        return pool.submit(_build_pipeline, settings, backend).result()


def _build_pipeline(settings: ClusterSettings | None, backend: str):
    settings = settings or ClusterSettings()
    sweep_backend = check_sweep_backend(backend)  # the pipeline's own `backend` parameter is the run's choice
    if sweep_backend == "katib":
        check_trial_outputs(settings)
    # The Katib sweep step is a launcher that trains nothing: the CPU image and the CPU steps' requests, no
    # GPU, no GPU-pool placement, and the container default's /dev/shm (its memory request need not cover 8Gi).
    sweep_settings = (settings.model_copy(update={"gpu": None, "shm_size": LAUNCHER_SHM_SIZE})
                      if sweep_backend == "katib" else settings)

    description = PIPELINE_DESCRIPTION + (PLACEHOLDER_NOTE if settings.registry == PLACEHOLDER_REGISTRY else "")

    @dsl.pipeline(name=PIPELINE_NAME, description=description)
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
        serving_namespace: str = DEFAULT_SERVING_NAMESPACE,
        registry: str = "",
        registered_model: str = "",
        promotion_margin: float = DEFAULT_MARGIN_POINTS,
        explain_images: int = -1,
        name: str = "",
    ):
        data = C.ingest(task=task, training_data=training_data, validation_data=validation_data,
                        training_parameters=training_parameters)
        # the preview reads the JSONL file itself; after ingest, so that bad data fails with ingest's report
        shown = C.preview(task=task, training_data=training_data, training_parameters=training_parameters,
                          search_space=search_space).after(data)
        # backend katib: the trial pods read the job's own URIs; the Experiments are named after the run,
        # so a retried step re-attaches to them. After the preview: a wrong augmentation (or settings the
        # preview refuses) is seen before the sweep spends any compute.
        swept = C.sweep(task=task, training_data=data.outputs["dataset"], limits=limits, sweep=sweep,
                        search_space=search_space, training_parameters=training_parameters, compute=compute,
                        device=device, backend=backend, katib_training_data=training_data,
                        katib_validation_data=validation_data, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        cluster=settings.model_dump_json(), compiled_for=sweep_backend).after(shown)
        # the new model and the registry's champion, scored on the same images (the register step's gate)
        scored = C.evaluate(run=swept.outputs["run"], validation_split=data.outputs["validation"],
                            validation_data=validation_data, registry=registry, registered_model=registered_model,
                            job_name=name, explain_images=explain_images)
        packaged = C.package(run=swept.outputs["run"], validation_split=data.outputs["validation"],
                             validation_data=validation_data)
        registered = C.register(model=packaged.outputs["model"], evaluation=scored.outputs["evaluation"],
                                dataset=data.outputs["dataset"], run=swept.outputs["run"], registry=registry,
                                registered_model=registered_model, job_name=name, task=task,
                                promotion_margin=promotion_margin, training_data=training_data,
                                validation_data=validation_data, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                image=settings.cpu_image)
        # the report shows the evaluate step's pictures rather than scoring the model again, and the version
        reported = C.report(run=swept.outputs["run"], dataset=data.outputs["dataset"],
                            evaluation=scored.outputs["evaluation"], validation_split=data.outputs["validation"],
                            validation_data=validation_data, job_name=name, training_data=training_data,
                            registration=registered.outputs["registration"])
        for step in (data, shown, swept, scored, packaged, registered, reported):
            configure_step(step, sweep_settings if step is swept else settings)
        with dsl.If(deploy == True, name="deploy-requested"):  # noqa: E712 (a pipeline condition, not a bool)
            # only a promoted version replaces the model in service
            with dsl.If(registered.outputs["promoted"] == True, name="promoted"):  # noqa: E712
                served = C.deploy(model=packaged.outputs["model"], inference_service_name=inference_service_name,
                                  namespace=serving_namespace, image=settings.cpu_image, registry=registry,
                                  registered_model=registered.outputs["registered_model"],
                                  model_version=registered.outputs["version"])
                configure_step(served, settings)

    return automl_vision_pipeline


def configure_step(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """Image, resources and Kubernetes settings of one step."""
    # A scheduled retraining reads the same URIs as the run before: a cached step would skip new data.
    task.set_caching_options(enable_caching=False)
    for name, value in settings.env().items():
        task.set_env_variable(name, value)
    training = task.name in TRAINING_STEPS
    gpu = settings.gpu if training else None
    task.set_container_image(settings.cuda_image if gpu is not None else settings.cpu_image)
    # Requests on every step (never BestEffort, the first pods evicted); no limits: a step may use idle CPU
    # and memory of its node. /dev/shm is memory-backed and counts against the pod's memory, so a step that
    # mounts it asks for at least its size (on the GPU pool ClusterSettings already requires that).
    requests = gpu if gpu is not None else settings.cpu_steps
    memory = requests.memory
    if training and quantity(settings.shm_size) > quantity(memory):
        memory = settings.shm_size
    task.set_cpu_request(requests.cpu).set_memory_request(memory)
    if training:
        k8s.empty_dir_mount(task, volume_name="dshm", mount_path=SHM_PATH, medium="Memory",
                            size_limit=settings.shm_size)
    if gpu is not None:
        task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.accelerator_limit)
        for key, value in sorted(gpu.node_selector.items()):
            k8s.add_node_selector(task, label_key=key, label_value=value)
        for t in gpu.tolerations:
            k8s.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                               toleration_seconds=t.toleration_seconds)
    if settings.storage_secret is not None:
        # mandatory: backends before 2.15 have no optional Secret references (compile_pipeline drops the field)
        k8s.use_secret_as_env(task, secret_name=settings.storage_secret.name,
                              secret_key_to_env=dict(sorted(settings.storage_secret.keys.items())))
    if settings.data_volume is not None:
        k8s.mount_pvc(task, pvc_name=settings.data_volume.claim_name, mount_path=settings.data_volume.mount_path)


#: The pipeline with the default cluster settings; what ``pipelines/`` holds and the local runner runs.
automl_vision_pipeline = build_pipeline()


def run_arguments(*, device: str = "auto", backend: str = "local", inference_service: str | None = None,
                  serving_namespace: str = "", registry: str = "", registered_model: str = "",
                  promotion_margin: float = DEFAULT_MARGIN_POINTS, explain_images: int = -1) -> dict[str, Any]:
    """The pipeline's run parameters (``RUN_PARAMETERS``): ``inference_service`` a name deploys the
    package as that InferenceService (in ``serving_namespace``; '': ``DEFAULT_SERVING_NAMESPACE``, the
    pipeline parameter's own default); None: no deploy. ``registry``: a Kubeflow Model Registry URL or a
    local registry folder ('': none), ``registered_model`` the name there ('': the job's name),
    ``promotion_margin`` the points a new version must gain over the champion; ``explain_images`` the
    validation images the evaluate step explains for the report (-1: the task's default, 0: none)."""
    check_sweep_backend(backend)
    if promotion_margin < 0:
        raise ConfigError(f"promotion_margin {promotion_margin}: a number of percentage points, 0 or more")
    if isinstance(explain_images, bool) or not isinstance(explain_images, int) or explain_images < -1:
        raise ConfigError(f"explain_images {explain_images!r}: a number of images, 0 or more (-1: the task's "
                          "default)")
    return {"device": device, "backend": backend, "deploy": inference_service is not None,
            "inference_service_name": inference_service or DEFAULT_INFERENCE_SERVICE,
            "serving_namespace": serving_namespace or DEFAULT_SERVING_NAMESPACE, "registry": registry,
            "registered_model": registered_model, "promotion_margin": float(promotion_margin),
            "explain_images": explain_images}


def pipeline_arguments(job: JobSpec, *, device: str = "auto", backend: str = "local",
                       inference_service: str | None = None, serving_namespace: str = "", registry: str = "",
                       registered_model: str = "", promotion_margin: float = DEFAULT_MARGIN_POINTS,
                       explain_images: int = -1) -> dict[str, Any]:
    """The pipeline's arguments for ``job``: its top-level keys, under the same names, and the run
    parameters (:func:`run_arguments`). With backend katib, the job is translated into its Katib
    Experiments here, so that what Katib cannot run (data on this machine, ...) fails before a run starts."""
    arguments = run_arguments(device=device, backend=backend, inference_service=inference_service,
                              serving_namespace=serving_namespace, registry=registry,
                              registered_model=registered_model, promotion_margin=promotion_margin,
                              explain_images=explain_images)
    registered_model_name(registered_model, job.name or "", job.task.value)  # a bad name fails before the run
    if backend == "katib":
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


def compile_pipeline(path: str | Path, *, settings: ClusterSettings, job: JobSpec | None = None,
                     **run: Any) -> Path:
    """Write the pipeline package (YAML) for a cluster; with ``job`` its values, with ``run`` (the keywords
    of :func:`run_arguments`) the run parameters become the parameters' defaults. ``settings`` must name
    a registry (ConfigError otherwise): the images' plain names would be pulled from Docker Hub."""
    settings.check_registry()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    defaults = pipeline_arguments(job, **run) if job is not None else run_arguments(**run) if run else None
    pipeline = build_pipeline(settings, backend=run.get("backend", "local"))
    platforms = pipeline.platform_spec.platforms  # (indexing a missing key would add it)
    executors = platforms["kubernetes"].deployment_spec.executors if "kubernetes" in platforms else {}
    for config in executors.values():
        fitted = for_oldest_backend(json_format.MessageToDict(config))
        config.Clear()
        config.update(fitted)
    compiler.Compiler().compile(pipeline, str(path), pipeline_parameters=defaults)
    return path


def for_oldest_backend(config: dict[str, Any]) -> dict[str, Any]:
    """A step's Kubernetes settings without the fields kfp-kubernetes writes that ``OLDEST_KFP_BACKEND`` lacks.

    - ``secretAsEnv[].optional`` (backend 2.15.0): its drivers before 2.4.1 fail the step on it, later ones
      before 2.15.0 ignore it; without it the Secret is mandatory on every backend.
    - ``secretAsEnv[].secretNameParameter`` and ``pvcMount[].pvcNameParameter`` (backend 2.5.0) when they
      only repeat the constant name of ``secretName`` and ``pvcMount[].constant``, which every backend reads.
    A parameterized name is kept: the conformance test then names the field.
    """
    out = {**config}
    secrets = []
    for secret in config.get("secretAsEnv", []):
        secret = {k: v for k, v in secret.items() if k != "optional"}
        if secret.get("secretNameParameter") == {"runtimeValue": {"constant": secret.get("secretName")}}:
            del secret["secretNameParameter"]
        secrets.append(secret)
    if secrets:
        out["secretAsEnv"] = secrets
    mounts = []
    for mount in config.get("pvcMount", []):
        mount = {**mount}
        if mount.get("pvcNameParameter") == {"runtimeValue": {"constant": mount.get("constant")}}:
            del mount["pvcNameParameter"]
        mounts.append(mount)
    if mounts:
        out["pvcMount"] = mounts
    return out
