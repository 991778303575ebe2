"""The sweep step with ``backend="katib"``: the component's function run as a pod runs it (a Python
process whose Kubernetes credentials come from its environment, here ``$KUBECONFIG``), against the
local stand-in for the Kubernetes API and Katib's controller (tests/kube_testserver.py). The
Experiment is created from the job's URIs, the optimal trial is read back, and its settings are
trained once more on the ingested data. No Katib controller, trial pod or cluster is involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

from kfp.dsl import Dataset, Metrics  # noqa: E402
from kube_testserver import FakeKubernetes, serve, write_kubeconfig  # noqa: E402

from automl_vision.pipeline.components import ingest  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep import katib  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = {"number_of_epochs": 1, "pretrained": False, "training_batch_size": 2, "train_crop_size": 16,
         "valid_resize_size": 16, "valid_crop_size": 16}
SEARCH_SPACE = [{"model_name": {"type": "choice", "values": ["resnet18"]},
                 "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1},
                 "optimizer": {"type": "choice", "values": ["sgd", "adam"]}}]
LIMITS = {"max_trials": 4.0, "max_concurrent_trials": 2.0}  # kfp passes numbers as floats
TRAIN_URI, VAL_URI = "s3://automl/colours/train.jsonl", "s3://automl/colours/val.jsonl"
RESULT = "leaderboard metadata: "
# What the pod runs: the component's function with the step's artifacts (KFP's executor does the same).
STEP = f"""
import json, sys
from kfp.dsl import Artifact, Dataset, Metrics
from automl_vision.pipeline.components import sweep

args = json.loads(sys.argv[1])
leaderboard = Metrics(uri=args.pop("leaderboard"))
sweep.python_func(training_data=Dataset(uri=args.pop("dataset")), run=Artifact(uri=args.pop("run")),
                  leaderboard=leaderboard, **args)
print({RESULT!r} + json.dumps(leaderboard.metadata), flush=True)
"""


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    from conftest import make_classification_dataset

    root = tmp_path_factory.mktemp("katib-step")
    data = make_classification_dataset(root / "data", n_per_class=3, size=16)
    dataset = Dataset(uri=str(root / "dataset"))
    ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                       validation=Dataset(uri=str(root / "validation")), statistics=Metrics(uri=str(root / "stats")),
                       training_parameters=SMALL)
    return Path(dataset.path)


def run_step(tmp_path: Path, host: str, dataset: Path, **inputs) -> subprocess.CompletedProcess:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", host)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    args = {"task": "image_classification", "dataset": str(dataset), "run": str(tmp_path / "run"),
            "leaderboard": str(tmp_path / "leaderboard"), "limits": LIMITS, "sweep": {"sampling_algorithm": "random"},
            "search_space": SEARCH_SPACE, "training_parameters": SMALL, "device": "cpu", "backend": "katib", **inputs}
    return subprocess.run([sys.executable, "-c", STEP, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_katib_backend_creates_the_experiment_and_trains_the_best_trial_once_more(tmp_path, ingested):
    run_id = "5c0ffee0-1b2d-4e5f-9a8b-7c6d5e4f3a2b"  # what KFP puts in for dsl.PIPELINE_JOB_ID_PLACEHOLDER
    name = katib.experiment_base_name(run_id)
    fake = FakeKubernetes({name: ("t-7", 0.9, {"learning_rate": "0.02", "optimizer": "adam"})}, polls=1)
    with serve(fake) as host:
        p = run_step(tmp_path, host, ingested, katib_training_data=TRAIN_URI, katib_validation_data=VAL_URI,
                     katib_namespace="team-a", run_id=run_id)
    assert p.returncode == 0, p.stdout + p.stderr

    # the Experiment on the API server: the job's own, in the namespace given, its trials reading the URIs
    [(namespace, plural, created)] = list(fake.objects)
    assert (namespace, plural, created) == ("team-a", "experiments", name)
    stored = fake.objects[("team-a", "experiments", name)]
    expected = katib.experiments_from_job(parse_job({
        "task": "image_classification", "training_data": TRAIN_URI, "validation_data": VAL_URI, "limits": LIMITS,
        "sweep": {"sampling_algorithm": "random"}, "search_space": SEARCH_SPACE, "training_parameters": SMALL}),
        name=name, namespace="team-a")[0]
    assert stored["spec"] == expected["spec"]
    command = stored["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert f"--training_data={TRAIN_URI}" in command and f"--validation_data={VAL_URI}" in command

    # the run folder evaluate and package read: Katib's answer, and the best settings trained here
    run = tmp_path / "run"
    saved = json.loads((run / "katib.json").read_text())
    assert (saved["best_trial"], saved["best_value"], saved["namespace"]) == ("t-7", 0.9, "team-a")
    assert (run / "best_model" / "model.safetensors").is_file()
    [trial] = json.loads((run / "leaderboard.json").read_text())["trials"]
    assert trial["parameters"] == {"model_name": "resnet18", "learning_rate": 0.02, "optimizer": "adam"}
    [result] = [line for line in p.stdout.splitlines() if line.startswith(RESULT)]
    metadata = json.loads(result.removeprefix(RESULT))
    assert metadata["trials"] == 1 and metadata["trials_completed"] == 1 and 0 <= metadata["best_accuracy"] <= 1
    assert f"{name}: created (4 trials, 2 at once, random)" in p.stdout


def test_without_a_namespace_the_step_uses_the_clients_and_does_not_take_over_another_experiment(tmp_path, ingested):
    """Off a cluster the Katib client's namespace is `default` (in a pod, the pod's own); an Experiment of
    that name that another job made there stops the step before it trains anything."""
    fake = FakeKubernetes({}, polls=1)
    fake.objects[("default", "experiments", "flowers")] = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": "flowers", "namespace": "default", "annotations": {"automl-vision/spec-hash": "0" * 16}},
        "spec": {}}
    with serve(fake) as host:
        p = run_step(tmp_path, host, ingested, katib_training_data=TRAIN_URI, experiment_name="flowers")
    assert p.returncode != 0
    assert ("an Experiment default/flowers exists and is not this job's (its spec differs); delete it "
            "(kubectl delete experiment -n default flowers) or choose another name") in p.stderr
    assert list(fake.objects) == [("default", "experiments", "flowers")]
    assert not (tmp_path / "run" / "best_model").exists()
