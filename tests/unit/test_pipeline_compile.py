"""The compiled pipeline: deterministic, parameters named as the job's keys, cluster settings on the
right steps, and accepted by the Pipelines API's own message types (what a cluster checks first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from automl_vision import __version__
from automl_vision.errors import ConfigError
from automl_vision.pipeline.pipeline import (DEFAULT_INFERENCE_SERVICE, RUN_PARAMETERS, TRAINING_STEPS,
                                             compile_pipeline, pipeline_arguments)
from automl_vision.pipeline.settings import SMALLEST_GPU_NODE, load_cluster_settings
from automl_vision.spec.cluster import ClusterSettings, quantity
from automl_vision.pipeline.submit import check_cron
from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE
from automl_vision.spec.job import JobSpec, parse_job

REGISTRY = "registry.example.com/ml"
#: the default cluster settings with the one key a cluster always needs
CLUSTER = ClusterSettings(registry=REGISTRY)
STEPS = {"ingest", "preview", "sweep", "evaluate", "package", "register", "report"}
#: deploy runs inside the condition on the pipeline's `deploy` parameter, and in it on the gate's promotion
ALL_STEPS = STEPS | {"deploy"}


def _deploy_task(spec: dict) -> dict:
    return spec["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]


def _job(**changes) -> JobSpec:
    job = {"task": "image_classification", "training_data": "s3://bucket/train.jsonl", "name": "flowers",
           "limits": {"max_trials": 4}, "sweep": {"sampling_algorithm": "grid"},
           "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                             "learning_rate": {"type": "choice", "values": [0.01, 0.001]}}],
           "training_parameters": {"number_of_epochs": 3}}
    job.update(changes)
    return parse_job(job)


def _compile(tmp_path: Path, name: str = "p.yaml", **kwargs) -> tuple[str, dict, dict]:
    kwargs.setdefault("settings", CLUSTER)
    text = compile_pipeline(tmp_path / name, **kwargs).read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compiling_is_deterministic_and_holds_nothing_of_this_machine(tmp_path):
    first, _, _ = _compile(tmp_path, "a.yaml")
    second, _, _ = _compile(tmp_path, "b.yaml")
    assert first == second
    for machine_specific in (str(tmp_path), str(Path.home()), str(Path.cwd()), "/tmp/", "site-packages"):
        assert machine_specific not in first, machine_specific
    assert not re.search(r"20\d\d-\d\d-\d\d", first)  # no timestamps


def test_the_pipeline_is_a_valid_pipeline_spec_with_a_valid_platform_spec(tmp_path):
    _, spec, executors = _compile(tmp_path)
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == "automl-vision"
    assert set(parsed.root.dag.tasks) == STEPS | {"condition-1"}
    for name, config in executors.items():
        json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig())  # raises on an unknown field
    assert set(executors) == {f"exec-{s}" for s in ALL_STEPS}


def test_parameters_are_the_job_keys(tmp_path):
    _, spec, _ = _compile(tmp_path)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    args = pipeline_arguments(_job())
    assert set(inputs) == set(args)
    job_keys = set(JobSpec.model_fields) - {"primary_metric"}  # primary_metric is fixed by the task
    assert set(args) - set(RUN_PARAMETERS) == job_keys
    assert {k: args[k] for k in RUN_PARAMETERS} == {"device": "auto", "backend": "local", "deploy": False,
                                                   "inference_service_name": DEFAULT_INFERENCE_SERVICE,
                                                   "serving_namespace": DEFAULT_SERVING_NAMESPACE,
                                                   "registry": "", "registered_model": "", "promotion_margin": 0.0,
                                                   "explain_images": -1}
    # the run's arguments and the pipeline's own parameter defaults agree
    assert inputs["serving_namespace"]["defaultValue"] == DEFAULT_SERVING_NAMESPACE
    assert {k for k, v in inputs.items() if not v.get("isOptional")} == {"task", "training_data"}


def test_a_job_becomes_the_defaults(tmp_path):
    job = _job()
    _, spec, _ = _compile(tmp_path, job=job)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["training_data"]["defaultValue"] == "s3://bucket/train.jsonl"
    assert inputs["limits"]["defaultValue"]["max_trials"] == 4
    assert inputs["search_space"]["defaultValue"][0]["learning_rate"] == {"type": "choice", "values": [0.01, 0.001]}
    assert parse_job({k: inputs[k]["defaultValue"] for k in ("task", "training_data", "limits", "sweep",
                                                           "search_space", "training_parameters")}) \
        == job.model_copy(update={"name": None})


def test_gpu_steps_get_the_pool_shm_and_every_step_the_secret(tmp_path):
    _, spec, executors = _compile(tmp_path)
    containers = {k.removeprefix("exec-"): v["container"] for k, v in spec["deploymentSpec"]["executors"].items()}
    tasks = {**spec["root"]["dag"]["tasks"], "deploy": _deploy_task(spec)}
    for step in ALL_STEPS:
        config, container = executors[f"exec-{step}"], containers[step]
        assert config["secretAsEnv"][0]["secretName"] == "automl-vision-storage"
        assert {e["envVar"] for e in config["secretAsEnv"][0]["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID",
                                                                            "AWS_SECRET_ACCESS_KEY"}
        assert "optional" not in config["secretAsEnv"][0]  # mandatory: backends before 2.15 know no optional
        assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
        assert not tasks[step]["cachingOptions"].get("enableCache")
        if step in TRAINING_STEPS:
            assert container["image"] == f"{REGISTRY}/automl-vision-gpu:{__version__}"
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "1"
            assert config["nodeSelector"]["labels"] == {"kubernetes.azure.com/accelerator": "nvidia"}
            assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in config["tolerations"]
            assert config["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi",
                                                 "volumeName": "dshm"}]
        else:
            assert container["image"] == f"{REGISTRY}/automl-vision-cpu:{__version__}"
            assert "accelerator" not in container["resources"]
            assert "nodeSelector" not in config and "tolerations" not in config


def test_cluster_settings_change_images_pool_and_volumes(tmp_path):
    settings_file = tmp_path / "cluster.yaml"
    settings_file.write_text(yaml.safe_dump({
        "registry": "registry.example.com/ml",
        "gpu": {"accelerator_limit": 2, "node_selector": {"agentpool": "gpunc"}, "tolerations": []},
        "storage_secret": None,
        "data_volume": {"claim_name": "images", "mount_path": "/data"},
        "shm_size": "16Gi",
    }))
    _, spec, executors = _compile(tmp_path, settings=load_cluster_settings(settings_file))
    containers = {k.removeprefix("exec-"): v["container"] for k, v in spec["deploymentSpec"]["executors"].items()}
    assert containers["sweep"]["image"] == f"registry.example.com/ml/automl-vision-gpu:{__version__}"
    assert containers["ingest"]["image"] == f"registry.example.com/ml/automl-vision-cpu:{__version__}"
    assert containers["sweep"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert executors["exec-sweep"]["nodeSelector"]["labels"] == {"agentpool": "gpunc"}
    assert "tolerations" not in executors["exec-sweep"]
    assert executors["exec-evaluate"]["emptyDirMounts"][0]["sizeLimit"] == "16Gi"
    deploy = _deploy_task(spec)
    assert deploy["inputs"]["parameters"]["image"]["runtimeValue"]["constant"] == containers["ingest"]["image"]
    for step in ALL_STEPS:
        assert "secretAsEnv" not in executors[f"exec-{step}"]
        assert executors[f"exec-{step}"]["pvcMount"][0]["mountPath"] == "/data"


def test_without_a_gpu_pool_every_step_runs_on_cpu(tmp_path):
    _, spec, executors = _compile(tmp_path, settings=ClusterSettings(registry=REGISTRY, gpu=None))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == f"{REGISTRY}/automl-vision-cpu:{__version__}"
        assert "accelerator" not in executor["container"]["resources"]
    assert executors["exec-sweep"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_deploy_runs_only_when_asked_and_promoted_by_the_registry_gate(tmp_path):
    _, spec, _ = _compile(tmp_path)
    condition = spec["root"]["dag"]["tasks"]["condition-1"]
    assert condition["taskInfo"]["name"] == "deploy-requested"
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    # after register, which runs after evaluate: a model that failed evaluation or the gate is not served
    assert set(condition["dependentTasks"]) == {"package", "register"}
    assert set(spec["root"]["dag"]["tasks"]["register"]["dependentTasks"]) >= {"evaluate", "package"}
    promoted = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    assert promoted["taskInfo"]["name"] == "promoted"
    assert promoted["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--register-promoted'] == true"
    deploy = _deploy_task(spec)
    assert deploy["inputs"]["artifacts"]["model"] == {"componentInputArtifact": "pipelinechannel--package-model"}
    assert deploy["inputs"]["parameters"]["inference_service_name"] == {
        "componentInputParameter": "pipelinechannel--inference_service_name"}
    # the deployed version records where it serves
    assert deploy["inputs"]["parameters"]["model_version"] == {
        "componentInputParameter": "pipelinechannel--register-version"}
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["deploy"]["defaultValue"] is False and inputs["backend"]["defaultValue"] == "local"


def test_the_report_step_reads_the_run_the_data_and_the_evaluation(tmp_path):
    _, spec, _ = _compile(tmp_path)
    task = spec["root"]["dag"]["tasks"]["report"]
    artifacts = {name: (a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])
                 for name, a in task["inputs"]["artifacts"].items()}
    assert artifacts == {"run": ("sweep", "run"), "dataset": ("ingest", "dataset"),
                         "evaluation": ("evaluate", "evaluation"), "validation_split": ("ingest", "validation"),
                         "registration": ("register", "registration")}
    assert task["inputs"]["parameters"]["validation_data"] == {"componentInputParameter": "validation_data"}
    assert set(task["dependentTasks"]) == {"ingest", "sweep", "evaluate", "register"}
    outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert outputs == {"report": {"artifactType": {"schemaTitle": "system.HTML", "schemaVersion": "0.0.1"}}}
    container = spec["deploymentSpec"]["executors"]["exec-report"]["container"]
    assert container["image"] == f"{REGISTRY}/automl-vision-cpu:{__version__}"
    assert "accelerator" not in container["resources"]  # no GPU
    assert "report" not in spec["components"]["comp-condition-1"]["dag"]["tasks"]
    registered = spec["root"]["dag"]["tasks"]["register"]
    assert registered["inputs"]["parameters"]["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert registered["inputs"]["parameters"]["registry"] == {"componentInputParameter": "registry"}


def test_the_sweep_step_gets_the_backend_the_job_uris_and_the_run_id(tmp_path):
    _, spec, _ = _compile(tmp_path)
    params = spec["root"]["dag"]["tasks"]["sweep"]["inputs"]["parameters"]
    assert params["backend"] == {"componentInputParameter": "backend"}
    assert params["katib_training_data"] == {"componentInputParameter": "training_data"}
    assert params["katib_validation_data"] == {"componentInputParameter": "validation_data"}
    assert params["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}


def test_run_parameters_become_defaults(tmp_path):
    katib = ClusterSettings(registry=REGISTRY, trial_outputs="s3://models/trials")  # the Katib backend needs it
    _, spec, _ = _compile(tmp_path, settings=katib, backend="katib", inference_service="flowers")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["backend"]["defaultValue"] == "katib" and inputs["deploy"]["defaultValue"] is True
    assert inputs["inference_service_name"]["defaultValue"] == "flowers"
    assert "defaultValue" not in inputs["training_data"]  # no job: the UI asks for it
    _, spec, _ = _compile(tmp_path, "job.yaml", settings=katib, job=_job(), backend="katib")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["backend"]["defaultValue"] == "katib" and inputs["deploy"]["defaultValue"] is False


@pytest.mark.parametrize("changes, backend, message", [
    ({}, "slurm", "sweep: backend='slurm' is not a sweep backend; use one of: local, katib"),
    ({"training_data": "/home/me/train.jsonl"}, "katib",
     "training_data='/home/me/train.jsonl' is a path on this machine, which a trial pod cannot read"),
])
def test_bad_run_parameters_fail_before_a_run(changes, backend, message):
    with pytest.raises(ConfigError) as err:
        pipeline_arguments(_job(**changes), backend=backend)
    assert message in str(err.value)


@pytest.mark.parametrize("text, messages", [
    ("gpu: {accelerator_limit: 0}", ["gpu.accelerator_limit: Input should be greater than or equal to 1"]),
    ("gpus: 1", ["gpus: Extra inputs are not permitted"]),
    ("shm_size: lots\nregistry: 'UPPER CASE'", ["shm_size: String should match pattern", "registry: String should"]),
    ("gpu: {tolerations: [{operator: Maybe}]}", ["gpu.tolerations.0.operator: Input should be 'Equal' or 'Exists'"]),
    ("gpu: {memory: 4Gi}", ["shm_size=8Gi is more than gpu.memory=4Gi, the memory request of the training steps",
                            "lower shm_size or raise gpu.memory to at least 8Gi"]),
    ("cpu_steps: {cpu: one, memory: 4 GB}", ["cpu_steps.cpu: String should match pattern",
                                             "cpu_steps.memory: String should match pattern"]),
    ("[1, 2", ["not valid YAML"]),
])
def test_bad_cluster_settings_name_every_problem(tmp_path, text, messages):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_cluster_settings(path)
    assert str(err.value).startswith(str(path))
    for message in messages:
        assert message in str(err.value)


@pytest.mark.parametrize("cron, message", [
    ("0 2 * * *", "has 5 field(s); a recurring run's cron has 6, seconds first"),
    ("0 2 * * *", "write '0 0 2 * * *'"),
    ("", "has 0 field(s)"),
    ("0 0 2 * * * *", "has 7 field(s)"),
    ("0 0 2 * * mon;", "not a cron field: day of week 'mon;'"),
])
def test_bad_schedules(cron, message):
    with pytest.raises(ConfigError) as err:
        check_cron(cron)
    assert message in str(err.value)


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "0  30 1 * * MON-FRI", "0 0 */6 ? * *", "@daily", "@every 12h"])
def test_good_schedules(cron):
    assert check_cron(cron) == " ".join(cron.split())


def test_compiling_for_a_cluster_needs_a_registry(tmp_path):
    with pytest.raises(ConfigError) as err:
        compile_pipeline(tmp_path / "p.yaml", settings=ClusterSettings())
    message = str(err.value)
    assert f"would name the image 'automl-vision-cpu:{__version__}', which a cluster pulls from Docker Hub" in message
    assert "name it in the cluster settings file (--cluster-settings FILE), e.g. 'registry: registry.example.com/ml'" \
        in message
    assert not (tmp_path / "p.yaml").exists()


def _resources(spec: dict) -> dict[str, dict]:
    executors = spec["deploymentSpec"]["executors"]
    return {k.removeprefix("exec-"): v["container"]["resources"] for k, v in executors.items()}


def test_every_step_asks_for_cpu_and_memory(tmp_path):
    settings = ClusterSettings(registry=REGISTRY, gpu={"cpu": "3500m", "memory": "20Gi"},
                               cpu_steps={"cpu": "500m", "memory": "2Gi"}, shm_size="4Gi")
    _, spec, _ = _compile(tmp_path, settings=settings)
    resources = _resources(spec)
    assert set(resources) == ALL_STEPS
    for step, r in resources.items():
        expected = ("3500m", "20Gi") if step in TRAINING_STEPS else ("500m", "2Gi")
        assert (r["resourceCpuRequest"], r["resourceMemoryRequest"]) == expected, step
        assert not {"cpuLimit", "memoryLimit", "resourceCpuLimit", "resourceMemoryLimit"} & set(r), step


def test_steps_with_a_memory_backed_shm_ask_for_at_least_its_size(tmp_path):
    for name, settings, backend in [
        ("gpu", ClusterSettings(registry=REGISTRY), "local"),
        # training steps on CPU nodes: cpu_steps asks for 4Gi, /dev/shm may hold 8Gi
        ("cpu", ClusterSettings(registry=REGISTRY, gpu=None), "local"),
        ("katib", ClusterSettings(registry=REGISTRY, trial_outputs="s3://models/trials"), "katib"),
    ]:
        _, spec, executors = _compile(tmp_path, f"{name}.yaml", settings=settings, backend=backend)
        resources = _resources(spec)
        shm = {step: config["emptyDirMounts"][0]["sizeLimit"] for step, config in
               ((k.removeprefix("exec-"), c) for k, c in executors.items()) if "emptyDirMounts" in config}
        assert set(shm) == set(TRAINING_STEPS)
        for step, size in shm.items():
            assert quantity(resources[step]["resourceMemoryRequest"]) >= quantity(size), (name, step)
        assert resources["ingest"]["resourceMemoryRequest"] == "4Gi"  # only the steps with /dev/shm


def test_the_default_requests_fit_the_smallest_gpu_node():
    defaults = ClusterSettings()
    node = SMALLEST_GPU_NODE
    assert (node.name, node.vcpus, node.memory_gib) == ("Standard_NC4as_T4_v3", 4, 28)
    # AKS: 4 cores keep 140m; 250 pods keep 20 MB x 250 + 50 MB (less than 25% of 28 GiB), plus 100Mi eviction
    assert node.allocatable_cpu == quantity("3860m")
    assert node.allocatable_memory == quantity("28Gi") - quantity("5050Mi") - quantity("100Mi")
    assert quantity(defaults.gpu.cpu) <= node.allocatable_cpu
    assert quantity(defaults.gpu.memory) <= node.allocatable_memory
    # what is left beside a GPU step for the node's own DaemonSets (device plugin, CNI, CSI, kube-proxy)
    assert node.allocatable_cpu - quantity(defaults.gpu.cpu) >= quantity("500m")
    assert node.allocatable_memory - quantity(defaults.gpu.memory) >= quantity("2Gi")


def test_the_cluster_environment_reaches_every_step(tmp_path):
    settings = ClusterSettings(registry=REGISTRY, weights="s3://models/pretrained")
    _, spec, _ = _compile(tmp_path, settings=settings)
    executors = spec["deploymentSpec"]["executors"]
    assert {k.removeprefix("exec-") for k in executors} == ALL_STEPS
    for name, executor in executors.items():
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env == {"PYTHONUNBUFFERED": "1", "AUTOML_VISION_WEIGHTS": "s3://models/pretrained"}, name
    _, spec, _ = _compile(tmp_path, "no-weights.yaml")
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert {e["name"] for e in executor["container"]["env"]} == {"PYTHONUNBUFFERED"}, name
