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
from automl_vision.pipeline.settings import ClusterSettings, load_cluster_settings
from automl_vision.pipeline.submit import check_cron
from automl_vision.spec.job import JobSpec, parse_job

STEPS = {"ingest", "preview", "sweep", "evaluate", "report", "package"}
#: deploy runs inside the condition on the pipeline's `deploy` parameter
ALL_STEPS = STEPS | {"deploy"}


def _job(**changes) -> JobSpec:
    job = {"task": "image_classification", "training_data": "s3://bucket/train.jsonl", "name": "flowers",
           "limits": {"max_trials": 4}, "sweep": {"sampling_algorithm": "grid"},
           "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                             "learning_rate": {"type": "choice", "values": [0.01, 0.001]}}],
           "training_parameters": {"number_of_epochs": 3}}
    job.update(changes)
    return parse_job(job)


def _compile(tmp_path: Path, name: str = "p.yaml", **kwargs) -> tuple[str, dict, dict]:
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
                                                   "serving_namespace": ""}
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
    tasks = {**spec["root"]["dag"]["tasks"], **spec["components"]["comp-condition-1"]["dag"]["tasks"]}
    for step in ALL_STEPS:
        config, container = executors[f"exec-{step}"], containers[step]
        assert config["secretAsEnv"][0]["secretName"] == "automl-vision-storage"
        assert {e["envVar"] for e in config["secretAsEnv"][0]["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID",
                                                                            "AWS_SECRET_ACCESS_KEY"}
        assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
        assert not tasks[step]["cachingOptions"].get("enableCache")
        if step in TRAINING_STEPS:
            assert container["image"] == f"automl-vision-gpu:{__version__}"
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "1"
            assert config["nodeSelector"]["labels"] == {"kubernetes.azure.com/accelerator": "nvidia"}
            assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in config["tolerations"]
            assert config["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi",
                                                 "volumeName": "dshm"}]
        else:
            assert container["image"] == f"automl-vision-cpu:{__version__}"
            assert "resources" not in container
            assert "nodeSelector" not in config and "tolerations" not in config


def test_cluster_settings_change_images_pool_and_volumes(tmp_path):
    settings_file = tmp_path / "cluster.yaml"
    settings_file.write_text(yaml.safe_dump({
        "registry": "registry.example.com/ml",
        "gpu": {"accelerator_limit": 2, "node_selector": {"agentpool": "gpunc"}, "tolerations": []},
        "storage_secret": None,
        "data_volume": {"claim_name": "images"},
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
    deploy = spec["components"]["comp-condition-1"]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["parameters"]["image"]["runtimeValue"]["constant"] == containers["ingest"]["image"]
    for step in ALL_STEPS:
        assert "secretAsEnv" not in executors[f"exec-{step}"]
        assert executors[f"exec-{step}"]["pvcMount"][0]["mountPath"] == "/data"


def test_without_a_gpu_pool_every_step_runs_on_cpu(tmp_path):
    _, spec, executors = _compile(tmp_path, settings=ClusterSettings(gpu=None))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == f"automl-vision-cpu:{__version__}"
        assert "resources" not in executor["container"]
    assert executors["exec-sweep"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_deploy_runs_only_when_asked_after_evaluate_on_the_package(tmp_path):
    _, spec, _ = _compile(tmp_path)
    condition = spec["root"]["dag"]["tasks"]["condition-1"]
    assert condition["taskInfo"]["name"] == "deploy-requested"
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    assert set(condition["dependentTasks"]) == {"evaluate", "package"}  # a model that failed evaluation is not served
    deploy = spec["components"]["comp-condition-1"]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["artifacts"]["model"] == {"componentInputArtifact": "pipelinechannel--package-model"}
    assert deploy["inputs"]["parameters"]["inference_service_name"] == {
        "componentInputParameter": "pipelinechannel--inference_service_name"}
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["deploy"]["defaultValue"] is False and inputs["backend"]["defaultValue"] == "local"


def test_the_report_step_reads_the_run_the_data_and_the_evaluation(tmp_path):
    _, spec, _ = _compile(tmp_path)
    task = spec["root"]["dag"]["tasks"]["report"]
    artifacts = {name: (a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])
                 for name, a in task["inputs"]["artifacts"].items()}
    assert artifacts == {"run": ("sweep", "run"), "dataset": ("ingest", "dataset"),
                         "evaluation": ("evaluate", "evaluation"), "validation_split": ("ingest", "validation")}
    assert task["inputs"]["parameters"]["validation_data"] == {"componentInputParameter": "validation_data"}
    assert set(task["dependentTasks"]) == {"ingest", "sweep", "evaluate"}
    outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert outputs == {"report": {"artifactType": {"schemaTitle": "system.HTML", "schemaVersion": "0.0.1"}}}
    container = spec["deploymentSpec"]["executors"]["exec-report"]["container"]
    assert container["image"] == f"automl-vision-cpu:{__version__}" and "resources" not in container  # no GPU
    assert "report" not in spec["components"]["comp-condition-1"]["dag"]["tasks"]


def test_the_sweep_step_gets_the_backend_the_job_uris_and_the_run_id(tmp_path):
    _, spec, _ = _compile(tmp_path)
    params = spec["root"]["dag"]["tasks"]["sweep"]["inputs"]["parameters"]
    assert params["backend"] == {"componentInputParameter": "backend"}
    assert params["katib_training_data"] == {"componentInputParameter": "training_data"}
    assert params["katib_validation_data"] == {"componentInputParameter": "validation_data"}
    assert params["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}


def test_run_parameters_become_defaults(tmp_path):
    _, spec, _ = _compile(tmp_path, backend="katib", inference_service="flowers")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["backend"]["defaultValue"] == "katib" and inputs["deploy"]["defaultValue"] is True
    assert inputs["inference_service_name"]["defaultValue"] == "flowers"
    assert "defaultValue" not in inputs["training_data"]  # no job: the UI asks for it
    _, spec, _ = _compile(tmp_path, "job.yaml", job=_job(), backend="katib")
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
