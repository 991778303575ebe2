"""Katib Experiments from jobs: the mapping, the offline checks (Katib's webhook and ours), the CLI."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import yaml

from automl_vision.cli import main
from automl_vision.errors import ConfigError
from automl_vision.pipeline.settings import load_cluster_settings
from automl_vision.spec.cluster import ClusterSettings
from automl_vision.spec.job import parse_job
from automl_vision.sweep import katib
from automl_vision.sweep.katib.checks import _validate_job
from spec_example import SPEC_10  # the spec's section 10 example, with its data as the trial pods see it


def spec10(**changes):
    data = yaml.safe_load(SPEC_10)
    data.update(changes)
    return parse_job(data)


def pod_of(exp):
    return exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]


def test_spec_example_becomes_one_experiment_per_model_family():
    exps = katib.experiments_from_job(spec10(), name="bccd")
    assert [e["metadata"]["name"] for e in exps] == ["bccd-0", "bccd-1"]
    for e in exps:
        assert katib.check_experiment(e) == []
    yolo, frcnn = (e["spec"] for e in exps)
    assert yolo["objective"] == {
        "type": "maximize", "objectiveMetricName": "mean_average_precision", "additionalMetricNames": ["loss"],
        "metricStrategies": [{"name": "mean_average_precision", "value": "max"}, {"name": "loss", "value": "latest"}]}
    assert yolo["algorithm"] == {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "0"}]}
    assert (yolo["maxTrialCount"], frcnn["maxTrialCount"]) == (5, 5)  # max_trials 10 over two families
    assert (yolo["parallelTrialCount"], frcnn["parallelTrialCount"]) == (1, 1)  # max_concurrent_trials 2
    assert yolo["earlyStopping"] == {"algorithmName": "bandit", "algorithmSettings": [
        {"name": "evaluation_interval", "value": "2"}, {"name": "delay_evaluation", "value": "6"},
        {"name": "slack_factor", "value": "0.2"}]}
    assert yolo["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    assert frcnn["parameters"] == [
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": "0.0001", "max": "0.001", "distribution": "uniform"}},
        {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}},
        {"name": "min_size", "parameterType": "discrete", "feasibleSpace": {"list": ["600", "800"]}},
    ]
    assert [p["name"] for p in frcnn["trialTemplate"]["trialParameters"]] == ["learning_rate", "optimizer", "min_size"]
    container = pod_of(exps[1])["containers"][0]
    assert container["command"] == [
        "automl-vision", "train", "--task=image_object_detection",
        "--training_data=s3://automl/bccd/train.jsonl", "--validation_data=s3://automl/bccd/val.jsonl",
        "--model_name=fasterrcnn_resnet50_fpn", "--early_stopping=1",
        "--learning_rate=${trialParameters.learning_rate}", "--optimizer=${trialParameters.optimizer}",
        "--evaluation_frequency=1", "--min_size=${trialParameters.min_size}", "--output-dir=outputs",
        "--device=cuda"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert json.loads(exps[1]["metadata"]["annotations"]["automl-vision/fixed-parameters"]) == {
        "model_name": "fasterrcnn_resnet50_fpn"}


def test_compute_settings_reach_the_trial_pod():
    job = spec10(compute={
        "image": "registry.example/automl-vision-gpu:0.1.0", "gpus": 1, "gpu_resource": "amd.com/gpu",
        "cpu": "8", "memory": "32Gi", "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "image_pull_secrets": ["regcred"], "service_account": "trainer", "storage_secret": "s3-credentials"},
        limits={"max_trials": 4, "trial_timeout_minutes": 90, "max_failed_trials": 3})
    exp = katib.experiments_from_job(job)[0]
    assert katib.check_experiment(exp) == []
    pod = pod_of(exp)
    c = pod["containers"][0]
    assert c["image"] == "registry.example/automl-vision-gpu:0.1.0"
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"},
                              "limits": {"cpu": "8", "memory": "32Gi", "amd.com/gpu": 1}}
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "trainer"
    assert exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] == 90 * 60
    assert exp["spec"]["maxFailedTrialCount"] == 2  # capped at the Experiment's maxTrialCount


def test_cpu_trials_and_a_data_volume():
    job = parse_job({"task": "image_classification", "training_data": "/data/fridge/train.jsonl",
                     "search_space": [{"learning_rate": {"type": "loguniform", "min_value": -6, "max_value": -2}}],
                     "compute": {"gpus": 0, "data_volume": {"claim_name": "datasets", "mount_path": "/data"}}})
    exp = katib.experiments_from_job(job)[0]
    assert katib.check_experiment(exp) == []
    pod = pod_of(exp)
    assert "--device=cpu" in pod["containers"][0]["command"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in pod["volumes"]


@pytest.mark.parametrize("dist, hp, algorithm, expected", [
    ({"type": "choice", "values": [0.001, 0.01]}, "learning_rate", "random",
     {"parameterType": "discrete", "feasibleSpace": {"list": ["0.001", "0.01"]}}),
    ({"type": "choice", "values": [True, False]}, "nesterov", "random",
     {"parameterType": "categorical", "feasibleSpace": {"list": ["1", "0"]}}),
    ({"type": "randint", "upper": 4}, "layers_to_freeze", "random",
     {"parameterType": "discrete", "feasibleSpace": {"list": ["0", "1", "2", "3"]}}),
    ({"type": "loguniform", "min_value": -6, "max_value": -2}, "learning_rate", "random",
     {"parameterType": "double", "feasibleSpace": {"min": repr(math.exp(-6)), "max": repr(math.exp(-2)),
                                                   "distribution": "logUniform"}}),
    ({"type": "quniform", "min_value": 8, "max_value": 64, "q": 8}, "training_batch_size", "random",
     {"parameterType": "int", "feasibleSpace": {"min": "8", "max": "64", "distribution": "uniform", "step": "8"}}),
    ({"type": "quniform", "min_value": 0.1, "max_value": 0.5, "q": 0.1}, "momentum", "random",
     {"parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5", "distribution": "uniform", "step": "0.1"}}),
    ({"type": "normal", "mu": 0.5, "sigma": 0.1}, "momentum", "random",
     {"parameterType": "double", "feasibleSpace": {"min": repr(0.5 - 3 * 0.1), "max": repr(0.5 + 3 * 0.1),
                                                   "distribution": "normal"}}),
    ({"type": "qlognormal", "mu": 3, "sigma": 0.5, "q": 2}, "training_batch_size", "random",
     {"parameterType": "double", "feasibleSpace": {"min": repr(math.exp(1.5)), "max": repr(math.exp(4.5)),
                                                   "distribution": "logNormal", "step": "2.0"}}),
    # skopt ignores step: a quantized range becomes the list of its values
    ({"type": "quniform", "min_value": 8, "max_value": 32, "q": 8}, "training_batch_size", "bayesianoptimization",
     {"parameterType": "discrete", "feasibleSpace": {"list": ["8", "16", "24", "32"]}}),
])
def test_distributions_as_katib_parameters(dist, hp, algorithm, expected):
    job = parse_job({"task": "image_classification", "training_data": "s3://b/t.jsonl",
                     "sweep": {"sampling_algorithm": "random"}, "search_space": [{hp: dist}]})
    assert katib.katib_parameter(hp, job.search_space[0][hp], algorithm) == {"name": hp, **expected}


def test_normal_range_gives_back_mu_and_sigma():
    """Katib's hyperopt service takes mu = (min+max)/2, sigma = (max-min)/6 from the range."""
    job = parse_job({"task": "image_classification", "training_data": "s3://b/t.jsonl",
                     "search_space": [{"learning_rate": {"type": "lognormal", "mu": -5, "sigma": 0.5}}]})
    space = katib.katib_parameter("learning_rate", job.search_space[0]["learning_rate"], "random")["feasibleSpace"]
    lo, hi = math.log(float(space["min"])), math.log(float(space["max"]))
    assert ((lo + hi) / 2, (hi - lo) / 6) == (pytest.approx(-5), pytest.approx(0.5))


def test_grid_and_bayesian_and_median_stopping():
    grid = parse_job({"task": "image_classification", "training_data": "s3://b/t.jsonl",
                      "limits": {"max_trials": 5, "max_concurrent_trials": 4},
                      "sweep": {"sampling_algorithm": "grid"},
                      "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "resnet50"]},
                                        "learning_rate": {"type": "choice", "values": [0.01, 0.1]}},
                                       {"model_name": {"type": "choice", "values": ["mobilenetv2"]},
                                        "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]}},
                                       {"model_name": {"type": "choice", "values": ["seresnext"]}}]})
    exps = katib.experiments_from_job(grid)
    # the local grid's order: 4 points of the first entry, then 1 of the second; the third gets none
    assert [(e["spec"]["maxTrialCount"], e["spec"]["parallelTrialCount"]) for e in exps] == [(4, 2), (1, 1)]
    assert all(e["spec"]["algorithm"]["algorithmName"] == "grid" and katib.check_experiment(e) == [] for e in exps)

    bayes = parse_job({"task": "image_classification_multilabel", "training_data": "s3://b/t.jsonl",
                       "limits": {"max_trials": 20}, "sweep": {"sampling_algorithm": "bayesian"},
                       "search_space": [{"learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}]})
    [exp] = katib.experiments_from_job(bayes)
    assert exp["spec"]["algorithm"]["algorithmName"] == "bayesianoptimization"
    assert exp["spec"]["objective"]["objectiveMetricName"] == "iou" and katib.check_experiment(exp) == []

    median = parse_job({"task": "image_classification", "training_data": "s3://b/t.jsonl",
                        "sweep": {"early_termination": {"type": "median_stopping", "evaluation_interval": 1,
                                                        "delay_evaluation": 5}}})
    [exp] = katib.experiments_from_job(median)
    assert exp["spec"]["earlyStopping"] == {"algorithmName": "medianstop", "algorithmSettings": [
        {"name": "min_trials_required", "value": "1"}, {"name": "start_step", "value": "5"}]}
    # nothing swept: the model is a one-value parameter, one trial
    assert exp["spec"]["parameters"] == [{"name": "model_name", "parameterType": "categorical",
                                          "feasibleSpace": {"list": ["vitb16r224"]}}]
    assert exp["spec"]["maxTrialCount"] == 1 and katib.check_experiment(exp) == []


@pytest.mark.parametrize("policy, expected", [
    ({"type": "asha", "min_resource": 2, "max_resource": 20},
     {"algorithmName": "asha", "algorithmSettings": [
         {"name": "min_resource", "value": "2"}, {"name": "reduction_factor", "value": "3.0"},
         {"name": "max_resource", "value": "20"}]}),
    ({"type": "hyperband", "max_resource": 27, "reduction_factor": 3, "brackets": 2},
     {"algorithmName": "hyperband", "algorithmSettings": [
         {"name": "min_resource", "value": "1"}, {"name": "reduction_factor", "value": "3.0"},
         {"name": "max_resource", "value": "27"}, {"name": "brackets", "value": "2"}]}),
])
def test_rung_policies_become_our_early_stopping(policy, expected):
    """asha and hyperband run on our early-stopping service, under algorithm names the checks know."""
    exps = katib.experiments_from_job(spec10(sweep={"sampling_algorithm": "random", "early_termination": policy}))
    for exp in exps:
        assert exp["spec"]["earlyStopping"] == expected
        assert exp["spec"]["algorithm"]["algorithmName"] == "random"
        assert katib.check_experiment(exp) == []
    broken = copy.deepcopy(exps[0])
    broken["spec"]["earlyStopping"]["algorithmSettings"].append({"name": "delay_evaluation", "value": "2"})
    assert any(f"{expected['algorithmName']}: unknown setting(s) 'delay_evaluation'" in p
               for p in katib.check_experiment(broken))


@pytest.mark.parametrize("changes, message", [
    ({"training_data": "/home/me/data/train.jsonl"},
     "training_data='/home/me/data/train.jsonl' is a path on this machine, which a trial pod cannot read"),
    ({"sweep": {"early_termination": {"type": "truncation_selection", "truncation_percentage": 20,
                                      "exclude_finished_jobs": True}}},
     "sweep.early_termination: truncation_selection.exclude_finished_jobs: on Katib every trial"),
    ({"compute": {"gpus": 2}}, "compute.gpus=2: a trial runs one training process on one GPU"),
])
def test_jobs_katib_cannot_run(changes, message):
    with pytest.raises(ConfigError) as e:
        katib.experiments_from_job(spec10(**changes))
    assert message in str(e.value)


def _mutate(path, value):
    def apply(exp):
        node = exp
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return apply


_DELETE = object()
_TT = ("spec", "trialTemplate")
_CONTAINER = (*_TT, "trialSpec", "spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize("mutation, message", [
    (_mutate(("metadata", "name"), "Bccd"), "metadata.name='Bccd': lower case letters"),
    (_mutate(("metadata", "name"), "a" * 41), "at most 40 characters"),
    (_mutate(("spec", "parallelTrialCount"), 9), "spec.parallelTrialCount=9: should be <= spec.maxTrialCount=5"),
    (_mutate(("spec", "maxFailedTrialCount"), -1), "spec.maxFailedTrialCount=-1: should not be less than 0"),
    (_mutate(("spec", "maxTrialCount"), 0), "spec.maxTrialCount=0: must be greater than 0"),
    (_mutate(("spec", "objective", "type"), "max"), "spec.objective.type='max': must be minimize or maximize"),
    (_mutate(("spec", "objective", "additionalMetricNames"), ["mean_average_precision"]),
     "spec.objective.additionalMetricNames: should not contain the objectiveMetricName"),
    (_mutate(("spec", "algorithm", "algorithmName"), "bayesian"),
     "spec.algorithm.algorithmName='bayesian': not an algorithm of katib-config"),
    (_mutate(("spec", "algorithm", "algorithmSettings"), [{"name": "seed", "value": "1"}]),
     "unknown setting 'seed' for algorithm random; allowed: random_state"),
    (_mutate(("spec", "earlyStopping", "algorithmName"), "median"),
     "spec.earlyStopping.algorithmName='median': not an early-stopping algorithm"),
    (_mutate(("spec", "earlyStopping", "algorithmSettings"), [{"name": "slack_factor", "value": "-1"}]),
     "spec.earlyStopping.algorithmSettings: bandit: slack_factor: Input should be greater than 0"),
    (_mutate(("spec", "parameters", 0, "parameterType"), "float"), "spec.parameters[0].parameterType: 'float' is not supported"),
    (_mutate(("spec", "parameters", 0, "feasibleSpace", "distribution"), "logUniform"), None),  # fine for hyperopt
    (_mutate(("spec", "parameters", 0, "feasibleSpace", "min"), "0.1"),
     "spec.parameters[0].feasibleSpace: min=0.1 must be a number < max=0.01"),
    (_mutate(("spec", "parameters", 1, "feasibleSpace", "list"), ["small", "small"]), "duplicate values"),
    (_mutate(("spec", "parameters", 1, "feasibleSpace", "min"), "1"),
     "spec.parameters[1].feasibleSpace: min, max and step are not supported for categorical"),
    (_mutate((*_TT, "primaryContainerName"), "main"),
     "spec.trialTemplate.primaryContainerName: 'main' is not a container of the trialSpec (training-container)"),
    (_mutate((*_TT, "primaryContainerName"), ""), "spec.trialTemplate.primaryContainerName: must be specified"),
    (_mutate((*_TT, "successCondition"), ""), "successCondition and failureCondition must be specified"),
    (_mutate((*_TT, "trialParameters", 1, "reference"), "size"),
     "spec.trialTemplate.trialParameters[1].reference: 'size' is not in spec.parameters"),
    (_mutate((*_TT, "trialParameters", 1, "name"), "model-size"),
     "${trialParameters.model-size} does not appear in the trialSpec"),
    (lambda e: e["spec"]["trialTemplate"]["trialParameters"].pop(),
     "${trialParameters.model_size} not defined in trialParameters"),
    (lambda e: e["spec"]["parameters"].append({"name": "momentum", "parameterType": "double",
                                               "feasibleSpace": {"min": "0.5", "max": "0.9"}}),
     "spec.parameters: 'momentum' is swept but no trialParameter references it"),
    (_mutate((*_TT, "trialSpec", "metadata"), {"name": "fixed"}), "metadata.name and metadata.namespace must be omitted"),
    (_mutate((*_CONTAINER, "resources", "limits", "cpu"), ["4"]),
     "spec.trialTemplate.trialSpec.spec.template.spec.containers.0.resources.limits.cpu"),
    (_mutate((*_CONTAINER, "resource"), {}), "Additional properties are not allowed ('resource' was unexpected)"),
    (_mutate((*_CONTAINER, "command", 3), "--training_data=s3://my bucket/t.jsonl"),
     "is not safe in the `sh -c` line Katib's StdOut collector runs"),
    (_mutate(("spec", "metricsCollectorSpec", "collector", "kind"), "Prometheus"), "not a metrics collector kind"),
])
def test_offline_checks(mutation, message):
    exp = copy.deepcopy(katib.experiments_from_job(spec10(), name="bccd")[0])
    mutation(exp)
    problems = katib.check_experiment(exp)
    if message is None:
        assert problems == []
    else:
        assert any(message in p for p in problems), problems


def test_service_specific_checks():
    exp = katib.experiments_from_job(spec10(), name="bccd")[0]
    grid = copy.deepcopy(exp)
    grid["spec"]["algorithm"] = {"algorithmName": "grid"}
    assert "spec.parameters[0].feasibleSpace.step: grid needs a step for double parameters" in katib.check_experiment(grid)
    skopt = copy.deepcopy(exp)
    skopt["spec"]["algorithm"] = {"algorithmName": "bayesianoptimization"}
    skopt["spec"]["parameters"][0]["feasibleSpace"]["distribution"] = "normal"
    assert ("spec.parameters[0]: the skopt suggestion service (bayesianoptimization) does not support the normal "
            "distribution") in katib.check_experiment(skopt)
    small = copy.deepcopy(exp)
    small["spec"]["algorithm"] = {"algorithmName": "grid"}
    small["spec"]["parameters"] = [small["spec"]["parameters"][1]]
    small["spec"]["trialTemplate"]["trialParameters"] = [small["spec"]["trialTemplate"]["trialParameters"][1]]
    small["spec"]["trialTemplate"]["trialSpec"] = json.loads(json.dumps(small["spec"]["trialTemplate"]["trialSpec"])
                                                             .replace("${trialParameters.learning_rate}", "0.01"))
    assert "spec.maxTrialCount=5: more than the 2 point(s) of the grid" in katib.check_experiment(small)


def test_field_names_are_katibs():
    """Through the Katib SDK's model classes and back: a misspelt field would be dropped."""
    katib_sdk = pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")
    from kubeflow.katib import ApiClient
    from kubeflow.katib.utils.utils import FakeResponse

    for exp in katib.experiments_from_job(spec10(), name="bccd"):
        model = ApiClient().deserialize(FakeResponse(exp), katib_sdk.V1beta1Experiment)
        assert ApiClient().sanitize_for_serialization(model) == exp


def test_substitute_one_assignment_as_katib():
    exp = katib.experiments_from_job(spec10(), name="bccd")[1]
    assignment = katib.sample_assignment(exp, np.random.default_rng(0))
    assert set(assignment) == {"learning_rate", "optimizer", "min_size"}
    assert 0.0001 <= float(assignment["learning_rate"]) <= 0.001 and assignment["min_size"] in ("600", "800")
    run = katib.substitute_trial(exp, assignment, "bccd-1-x7k2m9q4", "team-a")
    assert run["metadata"] == {"name": "bccd-1-x7k2m9q4", "namespace": "team-a"}
    command = katib.primary_container(run)["command"]
    assert f"--learning_rate={assignment['learning_rate']}" in command and "${" not in json.dumps(run)
    # as the controller: a parameter without its assignment first, then an assignment no parameter takes
    with pytest.raises(ValueError, match="no assignment for parameter 'min_size'"):
        katib.substitute_trial(exp, {"learning_rate": "0.1", "optimizer": "sgd"}, "t", "ns")
    with pytest.raises(ValueError, match="4 assignment"):
        katib.substitute_trial(exp, {**assignment, "momentum": "0.9"}, "t", "ns")


def test_cli_writes_checked_experiments(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(SPEC_10.replace("s3://automl/bccd/", "data/"))
    out = tmp_path / "experiments.yaml"
    rc = main(["katib", str(job), "--out", str(out), "--name", "bccd", "--namespace", "team-a",
               "--training_data", "s3://automl/bccd/train.jsonl", "--validation_data", "s3://automl/bccd/val.jsonl",
               "--image", "registry.example/automl-vision-gpu:0.1.0"])
    assert rc == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["metadata"]["name"] for d in docs] == ["bccd-0", "bccd-1"]
    assert all(d["metadata"]["namespace"] == "team-a" and katib.check_experiment(d) == [] for d in docs)
    assert pod_of(docs[0])["containers"][0]["image"] == "registry.example/automl-vision-gpu:0.1.0"
    err = capsys.readouterr().err
    assert "bccd-0: yolov5, 5 trials (1 at once), algorithm random, early stopping bandit" in err
    assert f"kubectl apply -f {out}" in err

    assert main(["katib", str(job)]) == 2
    assert "is a path on this machine, which a trial pod cannot read" in capsys.readouterr().err
    assert main(["katib", str(job), "--name", "Bad_Name", "--training_data", "s3://b/t.jsonl",
                 "--validation_data", "s3://b/v.jsonl"]) == 2
    assert "metadata.name='Bad_Name-0'" in capsys.readouterr().err


@pytest.mark.parametrize("compute, message", [
    ({"gpu": 1}, "compute.gpu: unknown key 'gpu' (did you mean 'gpus'?)"),
    ({"memory": "16 GB"}, "compute.memory='16 GB': not a Kubernetes quantity (e.g. '4', '500m', '16Gi')"),
    ({"tolerations": [{"key": "x", "effect": "NoSchedul"}]}, "compute.tolerations[0].effect='NoSchedul'"),
    ({"data_volume": {"claim_name": "d", "mount_path": "data"}}, "compute.data_volume.mount_path='data'"),
    ({"gpus": -1}, "compute.gpus=-1: Input should be greater than or equal to 0"),
])
def test_compute_section_errors(compute, message):
    with pytest.raises(ConfigError) as e:
        parse_job({"task": "image_classification", "training_data": "t.jsonl", "compute": compute})
    assert message in str(e.value)


def test_compute_section_round_trips():
    job = spec10(compute={"gpus": 0, "node_selector": {"pool": "cpu"},
                          "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
                                           "toleration_seconds": 60}]})
    assert parse_job(yaml.safe_load(job.to_yaml())) == job
    assert spec10().compute is None and "compute" not in spec10().to_dict()


@pytest.mark.parametrize("toleration, problem", [
    ({"operator": "Equal", "value": "gpu"}, "a toleration without a key matches every taint and needs operator Exists"),
    ({"key": "sku", "operator": "Exists", "value": "gpu"}, "a toleration with operator Exists takes no value"),
    ({"key": "bad key!", "operator": "Exists"}, "key='bad key!' is not a valid taint key"),
    ({"key": "/gpu", "operator": "Exists"}, "key='/gpu' is not a valid taint key: its prefix"),
    ({"key": "sku", "value": "-gpu"}, "value='-gpu' is not a valid taint value"),
    ({"key": "spot", "operator": "Exists", "effect": "NoSchedule", "toleration_seconds": 60},
     "toleration_seconds needs effect NoExecute"),
    ({"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoScheduled"}, "effect"),
])
def test_job_and_cluster_settings_check_tolerations_alike(tmp_path, toleration, problem):
    """One Toleration: a job's compute and the cluster settings' GPU pool refuse the same tolerations."""
    with pytest.raises(ConfigError) as in_job:
        parse_job({"task": "image_classification", "training_data": "t.jsonl", "compute": {"tolerations": [toleration]}})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"gpu": {"tolerations": [toleration]}}))
    with pytest.raises(ConfigError) as in_cluster:
        load_cluster_settings(path)
    assert problem in str(in_job.value) and problem in str(in_cluster.value)


@pytest.mark.parametrize("volume, problem", [
    ({"claim_name": "Data_Set", "mount_path": "/data"}, "claim_name"),
    ({"claim_name": "data", "mount_path": "data"}, "mount_path"),
    ({"claim_name": "data", "mount_path": "/dev/shm/"}, "a path the training pods mount themselves"),
])
def test_job_and_cluster_settings_check_data_volumes_alike(tmp_path, volume, problem):
    with pytest.raises(ConfigError) as in_job:
        parse_job({"task": "image_classification", "training_data": "t.jsonl", "compute": {"data_volume": volume}})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"data_volume": volume}))
    with pytest.raises(ConfigError) as in_cluster:
        load_cluster_settings(path)
    assert problem in str(in_job.value) and problem in str(in_cluster.value)


def test_a_data_volume_over_the_trial_working_directory_is_refused():
    with pytest.raises(ConfigError, match="is the trial's working directory"):
        katib.trial_placement(None, _cluster(data_volume={"claim_name": "data", "mount_path": katib.WORK_DIR}))


@pytest.mark.parametrize("toleration", [
    {"operator": "Exists"},  # every taint
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "toleration_seconds": 30},
    {"key": "dedicated", "value": ""},
])
def test_job_and_cluster_settings_take_the_same_valid_tolerations(toleration):
    job = parse_job({"task": "image_classification", "training_data": "t.jsonl", "compute": {"tolerations": [toleration]}})
    cluster = ClusterSettings.model_validate({"gpu": {"tolerations": [toleration]}})
    assert job.compute.tolerations == cluster.gpu.tolerations


# --- the trial pod from the cluster settings ------------------------------------------------------------

def _cluster(**changes):
    data = {"registry": "registry.example.com/ml",
            "gpu": {"node_selector": {"agentpool": "t4"},
                    "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]},
            "storage_secret": {"name": "object-store", "keys": {"accesskey": "AWS_ACCESS_KEY_ID",
                                                                "secretkey": "AWS_SECRET_ACCESS_KEY",
                                                                "endpoint": "AWS_ENDPOINT_URL"}},
            "data_volume": {"claim_name": "datasets", "mount_path": "/data"},
            "weights": "s3://models/weights", "trial_outputs": "s3://automl/trials", "shm_size": "6Gi"}
    data.update(changes)
    return ClusterSettings.model_validate(data)


def _trial(exp, name="bccd-1-x7k2m9q4"):
    """The Job Katib's controller creates for one trial, checked as the API server would (kubernetes-validate)."""
    run = katib.substitute_trial(exp, katib.sample_assignment(exp, np.random.default_rng(0)), name, "team-a")
    assert _validate_job(run) == []
    pod = run["spec"]["template"]["spec"]
    return pod, katib.primary_container(run)


def test_cluster_settings_reach_the_trial_job():
    from automl_vision.spec.cluster import cuda_image

    exp = katib.experiments_from_job(spec10(), name="bccd", cluster=_cluster())[1]
    assert katib.check_experiment(exp) == []
    pod, c = _trial(exp)
    assert c["image"] == cuda_image("registry.example.com/ml") == "registry.example.com/ml/automl-vision-gpu:0.1.0"
    assert pod["nodeSelector"] == {"agentpool": "t4"}
    assert pod["tolerations"] == [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    env = {e["name"]: e for e in c["env"]}
    # the storage Secret's keys under the environment names the pipeline's steps get them as
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "object-store", "key": "accesskey",
                                                                      "optional": True}}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["key"] == "endpoint"
    assert "envFrom" not in c
    # the weights location and unbuffered output, as every step gets them
    assert env["AUTOML_VISION_WEIGHTS"] == {"name": "AUTOML_VISION_WEIGHTS", "value": "s3://models/weights"}
    assert env["PYTHONUNBUFFERED"]["value"] == "1"
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in pod["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}} in pod["volumes"]
    assert c["resources"] == {"requests": {"cpu": "3", "memory": "16Gi"},
                              "limits": {"cpu": "3", "memory": "16Gi", "nvidia.com/gpu": 1}}
    assert "--device=cuda" in c["command"]
    # Katib puts the trial's own name in: the trial uploads its folder under <trial_outputs>/<experiment>/<trial>
    assert c["command"][-1] == "--upload-to=s3://automl/trials/bccd-1/bccd-1-x7k2m9q4"
    assert {"name": "trialName", "reference": "${trialSpec.Name}"}.items() <= \
        exp["spec"]["trialTemplate"]["trialParameters"][-1].items()


def test_the_jobs_compute_overrides_the_cluster_settings_key_by_key():
    job = spec10(compute={"image": "registry.example.com/ml/custom:1", "cpu": "6", "memory": "40Gi",
                          "node_selector": {"agentpool": "a100"}, "tolerations": []})
    pod, c = _trial(katib.experiments_from_job(job, name="bccd", cluster=_cluster())[1])
    assert c["image"] == "registry.example.com/ml/custom:1"
    assert c["resources"]["requests"] == {"cpu": "6", "memory": "40Gi"}
    assert pod["nodeSelector"] == {"agentpool": "a100"} and "tolerations" not in pod  # [] is "none", not "unset"
    names = {e["name"] for e in c["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AUTOML_VISION_WEIGHTS"} <= names  # what the job does not set stays the cluster's

    # a Secret of the job's own: all its keys, instead of the cluster's mapping
    pod, c = _trial(katib.experiments_from_job(spec10(compute={"storage_secret": "team-s3"}), name="bccd",
                                               cluster=_cluster())[1])
    assert c["envFrom"] == [{"secretRef": {"name": "team-s3"}}]
    assert "AWS_ACCESS_KEY_ID" not in {e["name"] for e in c["env"]}


@pytest.mark.parametrize("compute, cluster_changes", [({"gpus": 0}, {}), ({}, {"gpu": None, "shm_size": "2Gi"})])
def test_cpu_trials_get_the_cpu_image_and_no_gpu_placement(compute, cluster_changes):
    from automl_vision.spec.cluster import cpu_image

    job = spec10(compute=compute) if compute else spec10()
    pod, c = _trial(katib.experiments_from_job(job, name="bccd", cluster=_cluster(**cluster_changes))[1])
    assert c["image"] == cpu_image("registry.example.com/ml")
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "--device=cpu" in c["command"]
    assert c["resources"]["requests"] == {"cpu": "3", "memory": "16Gi"}  # a trial trains either way


def test_default_trial_requests_fit_the_smallest_gpu_node():
    from kubernetes.utils import parse_quantity

    from automl_vision.pipeline.settings import SMALLEST_GPU_NODE

    pod, c = _trial(katib.experiments_from_job(spec10(), name="bccd")[1])
    requests = c["resources"]["requests"]
    assert parse_quantity(requests["cpu"]) <= SMALLEST_GPU_NODE.allocatable_cpu  # 3 of 3.86 on Standard_NC4as_T4_v3
    assert parse_quantity(requests["memory"]) <= SMALLEST_GPU_NODE.allocatable_memory


def test_trial_memory_holds_the_shm_and_the_training_process():
    from kubernetes.utils import parse_quantity

    pod, c = _trial(katib.experiments_from_job(spec10(), name="bccd")[1])
    shm = next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "dshm")
    assert parse_quantity(c["resources"]["requests"]["memory"]) >= \
        parse_quantity(shm) + parse_quantity(katib.TRIAL_PROCESS_MEMORY)
    with pytest.raises(ConfigError) as e:
        katib.experiments_from_job(spec10(compute={"memory": "10Gi", "shm_size": "8Gi"}), name="bccd")
    assert ("compute.memory=10Gi is less than the trial's /dev/shm (8Gi, memory-backed, so charged to the "
            "container's memory) plus 4Gi for the training process: give at least 12Gi") in str(e.value)


def test_without_trial_outputs_the_trial_uploads_nothing():
    exp = katib.experiments_from_job(spec10(), name="bccd", cluster=_cluster(trial_outputs=None))[1]
    assert katib.check_experiment(exp) == []
    _, c = _trial(exp)
    assert not any(t.startswith("--upload-to") for t in c["command"])
    assert all(p["reference"] != "${trialSpec.Name}" for p in exp["spec"]["trialTemplate"]["trialParameters"])


def test_cli_places_the_trials_by_the_cluster_settings_file(tmp_path):
    settings = tmp_path / "cluster.yaml"
    settings.write_text(yaml.safe_dump({"registry": "registry.example.com/ml", "trial_outputs": "s3://automl/trials",
                                        "gpu": {"node_selector": {"agentpool": "t4"}, "tolerations": []}}))
    out = tmp_path / "experiments.yaml"
    assert main(["katib", str(tmp_path / "job.yaml"), "--out", str(out), "--name", "bccd",
                 "--cluster-settings", str(settings)]) == 2  # no such job file: a usage error, not a crash
    job = tmp_path / "job.yaml"
    job.write_text(SPEC_10)
    assert main(["katib", str(job), "--out", str(out), "--name", "bccd", "--cluster-settings", str(settings)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    pod, c = _trial(docs[1])
    assert c["image"] == "registry.example.com/ml/automl-vision-gpu:0.1.0" and pod["nodeSelector"] == {"agentpool": "t4"}
    assert c["command"][-1] == "--upload-to=s3://automl/trials/bccd-1/bccd-1-x7k2m9q4"


@pytest.mark.parametrize("task, fingerprint, entries", [
    ("image_classification", {"task": "image_classification", "images": 134, "classes": 4, "image_side": 113.0}, 4),
    ("image_object_detection", {"task": "image_object_detection", "images": 80, "classes": 2, "image_side": 128.0,
                                "objects_per_image": 2.0, "object_size": 0.2}, 4),
    ("image_instance_segmentation", None, 2),
])
def test_an_automode_job_becomes_checked_experiments(task, fingerprint, entries):
    """A job with only data, task and a budget: AutoMode's space sized by the ingested data's fingerprint
    (what the pipeline's sweep step does before it creates the Experiments), one Experiment per entry,
    each with ASHA on our early-stopping service, and every one passing the webhook's and our checks."""
    from automl_vision.spec.automode import DatasetFingerprint
    from automl_vision.sweep.automode import prepare_automode

    job = parse_job({"task": task, "training_data": "s3://automl/data/train.jsonl", "limits": {"budget": 3},
                     "training_parameters": {"pretrained": False}})
    prepared = prepare_automode(job, DatasetFingerprint.from_json(fingerprint) if fingerprint else None).job
    exps = katib.experiments_from_job(prepared, name="auto")
    assert len(exps) == entries == len(prepared.search_space)
    minimum = 2 if task == "image_classification" else 5
    for exp in exps:
        spec = exp["spec"]
        assert katib.check_experiment(exp) == []
        assert spec["earlyStopping"]["algorithmName"] == "asha"
        assert {"name": "min_resource", "value": str(minimum)} in spec["earlyStopping"]["algorithmSettings"]
        params = {p["name"]: p for p in spec["parameters"]}
        assert params["augmentation"]["parameterType"] == "categorical"
        assert params["learning_rate"]["feasibleSpace"]["distribution"] == "logUniform"
        assert spec["maxTrialCount"] == 1000 // entries  # the budget, not the trial count, ends the sweep
    # without the data (the katib command on a remote URI) the space is the unknown-data one, the same way
    assert len(katib.experiments_from_job(job, name="auto")) == len(prepare_automode(job).job.search_space)
