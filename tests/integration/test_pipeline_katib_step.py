"""The sweep step with ``backend="katib"``: the component's function run as a pod runs it (a Python
process whose Kubernetes credentials come from its environment, here ``$KUBECONFIG``), against the
local stand-in for the Kubernetes API and Katib's controller (tests/kube_testserver.py) and a real S3
endpoint on 127.0.0.1 (moto). The Experiment is created from the job's URIs and the cluster settings;
a trial's command, exactly as Katib's controller substitutes it, runs here for real and uploads its
folder to the cluster's trial_outputs; the step reads every trial's record and the best trial's model
back from there, training nothing itself. No Katib controller, trial pod or cluster is involved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

from kfp.dsl import Dataset, Metrics  # noqa: E402
from kube_testserver import FakeKubernetes, container_env, object_store, serve, write_kubeconfig  # noqa: E402

from automl_vision.data.storage import StorageConfig, upload_folder  # noqa: E402
from automl_vision.pipeline.components import ingest  # noqa: E402
from automl_vision.spec.cluster import ClusterSettings  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep import katib  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = {"number_of_epochs": 1, "pretrained": False, "training_batch_size": 2, "train_crop_size": 16,
         "valid_resize_size": 16, "valid_crop_size": 16}
SEARCH_SPACE = [{"model_name": {"type": "choice", "values": ["resnet18"]},
                 "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1},
                 "optimizer": {"type": "choice", "values": ["sgd", "adam"]}}]
LIMITS = {"max_trials": 4.0, "max_concurrent_trials": 2.0}  # kfp passes numbers as floats
TRAIN_URI = "s3://automl/colours/train.jsonl"
CPU_TRIALS = {"gpus": 0}  # this machine has no GPU: the trial's own command runs here as it is
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
def ingested(tmp_path_factory) -> tuple[Path, Path]:
    """(the training JSONL, the ingest step's manifest folder)."""
    from conftest import make_classification_dataset

    root = tmp_path_factory.mktemp("katib-step")
    data = make_classification_dataset(root / "data", n_per_class=3, size=16)
    dataset = Dataset(uri=str(root / "dataset"))
    ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                       validation=Dataset(uri=str(root / "validation")), statistics=Metrics(uri=str(root / "stats")),
                       training_parameters=SMALL)
    return data, Path(dataset.path)


def run_step(tmp_path: Path, host: str, dataset: Path, env: dict | None = None, **inputs) -> subprocess.CompletedProcess:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", host)
    env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    args = {"task": "image_classification", "dataset": str(dataset), "run": str(tmp_path / "run"),
            "leaderboard": str(tmp_path / "leaderboard"), "limits": LIMITS, "sweep": {"sampling_algorithm": "random"},
            "search_space": SEARCH_SPACE, "training_parameters": SMALL, "device": "cpu", "backend": "katib", **inputs}
    return subprocess.run([sys.executable, "-c", STEP, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_trials_upload_their_folders_and_the_step_reads_them_back(tmp_path, ingested):
    train, dataset = ingested
    run_id = "5c0ffee0-1b2d-4e5f-9a8b-7c6d5e4f3a2b"  # what KFP puts in for dsl.PIPELINE_JOB_ID_PLACEHOLDER
    name = katib.experiment_base_name(run_id)
    # the data on the cluster's volume, mounted where it is here; the trials keep their folders in the store
    cluster = ClusterSettings(registry="registry.example.com/ml", trial_outputs="s3://automl/trials",
                              data_volume={"claim_name": "datasets", "mount_path": str(train.parent)})
    job = parse_job({"task": "image_classification", "training_data": str(train), "limits": LIMITS,
                     "sweep": {"sampling_algorithm": "random"}, "search_space": SEARCH_SPACE,
                     "training_parameters": SMALL, "compute": CPU_TRIALS})
    [exp] = katib.experiments_from_job(job, name=name, namespace="team-a", cluster=cluster)
    best, other = f"{name}-k2j4h6g8", f"{name}-x7k2m9q4"
    with object_store("automl") as secret:
        secrets = {cluster.storage_secret.name: secret}
        # one trial pod's command as Katib's controller creates it, run here (`automl-vision` is python -m)
        run_spec = katib.substitute_trial(exp, {"learning_rate": "0.02", "optimizer": "adam"}, best, "team-a")
        container = katib.primary_container(run_spec)
        assert container["command"][-1] == f"--upload-to=s3://automl/trials/{name}/{best}"
        pod = tmp_path / "pod"
        pod.mkdir()
        trial = subprocess.run([sys.executable, "-m", "automl_vision", *container["command"][1:]], cwd=pod,
                               env={**os.environ, **container_env(container, secrets)}, capture_output=True,
                               text=True, timeout=600)
        assert trial.returncode == 0, trial.stdout + trial.stderr
        value = json.loads((pod / "outputs" / "result.json").read_text())["best_value"]
        # another trial's folder, as one Katib's early stopping ended: worse, and its model never downloaded
        stopped = tmp_path / "stopped"
        shutil.copytree(pod / "outputs", stopped)
        (stopped / "result.json").write_text(json.dumps({
            "status": "terminated", "primary_metric": "accuracy", "best_value": value / 2, "best_epoch": 1,
            "epochs_completed": 1, "duration_s": 1.0, "message": "", "history": []}))
        config = StorageConfig(endpoint=secret["AWS_ENDPOINT_URL"], access_key=secret["AWS_ACCESS_KEY_ID"],
                               secret_key=secret["AWS_SECRET_ACCESS_KEY"])
        upload_folder(stopped, f"s3://automl/trials/{name}/{other}", config)

        fake = FakeKubernetes({name: (best, value, {"learning_rate": "0.02", "optimizer": "adam"})}, polls=1)
        with serve(fake) as host:
            # the step gets the storage Secret's keys as every step does
            p = run_step(tmp_path, host, dataset, env=container_env({"env": container["env"]}, secrets),
                         katib_training_data=str(train), katib_namespace="team-a", run_id=run_id,
                         cluster=cluster.model_dump_json(), compiled_for="katib", compute=CPU_TRIALS)
    assert p.returncode == 0, p.stdout + p.stderr

    # the Experiment on the API server is the one whose trial ran above
    stored = fake.objects[("team-a", "experiments", name)]
    assert stored["spec"] == exp["spec"]

    run = tmp_path / "run"
    saved = json.loads((run / "katib.json").read_text())
    assert (saved["best_trial"], saved["best_value"], saved["namespace"]) == (best, value, "team-a")
    # the best trial's own model, not a retrained one
    assert (run / "trials" / best / "outputs" / "model.safetensors").read_bytes() == \
        (pod / "outputs" / "outputs" / "model.safetensors").read_bytes()
    assert (run / "best_model" / "model.safetensors").read_bytes() == \
        (pod / "outputs" / "outputs" / "model.safetensors").read_bytes()
    assert json.loads((run / "best_model" / "trial.json").read_text())["trial_id"] == best
    # every trial's record, for the leaderboard and the report; only the best one's model
    assert sorted(x.name for x in (run / "trials").iterdir()) == sorted([best, other])
    assert (run / "trials" / other / "metrics.jsonl").is_file() and not (run / "trials" / other / "outputs").exists()
    board = json.loads((run / "leaderboard.json").read_text())
    assert [(t["trial_id"], t["status"], t["rank"]) for t in board["trials"]] == [(best, "completed", 1),
                                                                                   (other, "terminated", 2)]
    assert board["trials"][0]["parameters"] == {"model_name": "resnet18", "learning_rate": 0.02, "optimizer": "adam"}
    assert (run / "job.yaml").is_file() and json.loads((run / "sweep.json").read_text())["backend"] == "katib"
    [result] = [line for line in p.stdout.splitlines() if line.startswith(RESULT)]
    metadata = json.loads(result.removeprefix(RESULT))
    assert metadata == {"trials": 2, "trials_completed": 1, "best_accuracy": value}
    assert f"{name}: created (4 trials, 2 at once, random)" in p.stdout
    assert "epoch" not in p.stdout.replace("best_epoch", "")  # nothing trained in the step


def test_without_a_namespace_the_step_uses_the_clients_and_does_not_take_over_another_experiment(tmp_path, ingested):
    """Off a cluster the Katib client's namespace is `default` (in a pod, the pod's own); an Experiment of
    that name that another job made there stops the step before it trains anything."""
    fake = FakeKubernetes({}, polls=1)
    fake.objects[("default", "experiments", "flowers")] = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": "flowers", "namespace": "default", "annotations": {"automl-vision/spec-hash": "0" * 16}},
        "spec": {}}
    with serve(fake) as host:
        p = run_step(tmp_path, host, ingested[1], katib_training_data=TRAIN_URI, experiment_name="flowers",
                     cluster={"trial_outputs": "s3://automl/trials"})
    assert p.returncode != 0
    assert ("an Experiment default/flowers exists and is not this job's (its spec differs); delete it "
            "(kubectl delete experiment -n default flowers) or choose another name") in p.stderr
    assert list(fake.objects) == [("default", "experiments", "flowers")]
    assert not (tmp_path / "run" / "best_model").exists()
