"""The pipeline's Katib backend (run_katib_sweep) with the real Katib SDK client, against a local HTTP
server on 127.0.0.1 that speaks the Kubernetes API endpoints KatibClient calls (custom objects:
create, get, list, delete, status patch). The server stores what it is sent; a scripted stand-in for
Katib's controller moves each Experiment to Running, then Succeeded with an optimal trial. There is
no Katib controller, webhook or trial here: what runs on a cluster past the API calls is not tested."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

from kubernetes import client as k8s  # noqa: E402
from kube_testserver import FakeKubernetes, serve  # noqa: E402

from automl_vision.errors import AutoMLError, ConfigError  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep import katib  # noqa: E402
from spec_example import SPEC_10  # noqa: E402


@pytest.fixture
def cluster():
    with contextlib.ExitStack() as servers:
        def start(fake: FakeKubernetes):
            config = k8s.Configuration()
            config.host = servers.enter_context(serve(fake))
            return katib.katib_client("team-a", client_configuration=config), config

        yield start


OPTIMAL = {
    "bccd-0": ("bccd-0-k2j4h6g8", 0.61, {"learning_rate": "0.0042", "model_size": "small"}),
    "bccd-1": ("bccd-1-x7k2m9q4", 0.72, {"learning_rate": "0.00031", "optimizer": "adamw", "min_size": "800"}),
}


def job(**limits):
    data = yaml.safe_load(SPEC_10)
    data["limits"].update(limits)
    return parse_job(data)


def test_creates_waits_and_hands_on_the_best_trial(cluster):
    fake = FakeKubernetes(OPTIMAL, polls=3)
    client, _ = cluster(fake)
    lines: list[str] = []
    result = katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lines.append)
    assert (result.best_experiment, result.best_trial, result.best_value) == ("bccd-1", "bccd-1-x7k2m9q4", 0.72)
    assert result.parameters == {"model_name": "fasterrcnn_resnet50_fpn", "learning_rate": 0.00031,
                                 "optimizer": "adamw", "min_size": 800}
    assert result.metrics == {"mean_average_precision": 0.72, "loss": 0.42}
    assert not result.timed_out and not result.deleted and result.namespace == "team-a"
    # What reached the API server is what `automl-vision katib` writes, in the client's namespace.
    expected = katib.experiments_from_job(job(), name="bccd", namespace="team-a")
    for exp in expected:
        stored = fake.objects[("team-a", "experiments", exp["metadata"]["name"])]
        assert stored["spec"] == exp["spec"] and stored["metadata"]["annotations"] == exp["metadata"]["annotations"]
    posts = [p for m, p in fake.requests if m == "POST"]
    assert posts == ["/apis/kubeflow.org/v1beta1/namespaces/team-a/experiments"] * 2
    assert "bccd-0: created (5 trials, 1 at once, random)" in lines
    assert any(line.startswith("bccd-1: 5/5 succeeded, 0 running, best mean_average_precision 0.7200") for line in lines)
    assert json.loads(json.dumps(result.to_json()))["parameters"]["min_size"] == 800


def test_a_retried_step_reattaches(cluster):
    fake = FakeKubernetes(OPTIMAL, polls=1)
    client, _ = cluster(fake)
    first = katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lambda s: None)
    posts = sum(1 for m, _ in fake.requests if m == "POST")
    lines: list[str] = []
    again = katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lines.append)
    assert sum(1 for m, _ in fake.requests if m == "POST") == posts == 2  # nothing created the second time
    assert "bccd-0: re-attaching to the existing Experiment" in lines
    assert again.to_json() == first.to_json()


def test_an_experiment_of_another_job_is_not_taken_over(cluster):
    fake = FakeKubernetes(OPTIMAL)
    client, _ = cluster(fake)
    other = katib.experiments_from_job(job(max_trials=4), name="bccd", namespace="team-a")[0]
    client.create_experiment(other, "team-a")
    with pytest.raises(ConfigError) as e:
        katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lambda s: None)
    assert ("an Experiment team-a/bccd-0 exists and is not this job's (its spec differs); delete it "
            "(kubectl delete experiment -n team-a bccd-0) or choose another name") in str(e.value)


def test_time_limit_keeps_the_best_so_far_and_stops_spending(cluster):
    fake = FakeKubernetes({}, polls=1)  # never succeeds on its own
    client, _ = cluster(fake)
    single = job(timeout_minutes=1)
    for exp in katib.experiments_from_job(single, name="bccd", namespace="team-a"):
        client.create_experiment(exp, "team-a")
    # As if a previous attempt created them two minutes ago, and one trial has finished since.
    for key, obj in fake.objects.items():
        obj["metadata"]["creationTimestamp"] = (datetime.now(timezone.utc) - timedelta(minutes=2)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    fake.objects[("team-a", "experiments", "bccd-0")]["status"] = {
        "conditions": [{"type": "Running", "status": "True"}],
        "currentOptimalTrial": {"bestTrialName": "bccd-0-aaaa1111",
                                "parameterAssignments": [{"name": "learning_rate", "value": "0.001"},
                                                         {"name": "model_size", "value": "medium"}],
                                "observation": {"metrics": [{"name": "mean_average_precision", "max": "0.5",
                                                             "min": "0.2", "latest": "0.5"}]}}}
    lines: list[str] = []
    result = katib.run_katib_sweep(single, name="bccd", client=client, poll_interval_s=0.01, echo=lines.append)
    assert result.timed_out and result.deleted
    assert (result.best_trial, result.best_value) == ("bccd-0-aaaa1111", 0.5)
    assert result.parameters == {"model_name": "yolov5", "learning_rate": 0.001, "model_size": "medium"}
    assert fake.objects == {}  # deleted: no more trials start
    assert "sweep time limit of 1 min reached; keeping the best trial so far" in lines


def test_fewer_concurrent_trials_than_experiments_runs_them_in_turn(cluster):
    fake = FakeKubernetes(OPTIMAL, polls=2)
    client, _ = cluster(fake)
    result = katib.run_katib_sweep(job(max_concurrent_trials=1), name="bccd", client=client, poll_interval_s=0.01,
                                   cleanup=True, echo=lambda s: None)
    assert fake.created == [("bccd-0", []), ("bccd-1", ["bccd-0"])]  # bccd-1 only once bccd-0 succeeded
    assert result.best_trial == "bccd-1-x7k2m9q4" and result.deleted and fake.objects == {}


def test_no_trial_with_a_metric_is_an_error(cluster):
    fake = FakeKubernetes({}, polls=1)
    client, _ = cluster(fake)
    for exp in katib.experiments_from_job(job(), name="bccd", namespace="team-a"):
        exp["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "max failed trials reached"}]}
        client.create_experiment(exp, "team-a")
    for obj in fake.objects.values():
        obj["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "max failed trials reached"}]}
    lines: list[str] = []
    with pytest.raises(AutoMLError) as e:
        katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lines.append)
    assert "no trial of bccd-0, bccd-1 reported mean_average_precision" in str(e.value)
    assert "bccd-0: failed: max failed trials reached" in lines


def test_early_stopping_service_marks_the_trial_over_grpc(cluster):
    """SetTrialStatus (what the metrics collector calls after stopping a trial) against the same API server."""
    import grpc
    from kubeflow.katib import katib_api_pb2 as pb2
    from kubeflow.katib import katib_api_pb2_grpc as pb2_grpc

    from automl_vision.earlystopping.service import EarlyStoppingService, serve

    fake = FakeKubernetes()
    _, config = cluster(fake)
    fake.objects[("team-a", "trials", "bccd-0-k2j4h6g8")] = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "metadata": {"name": "bccd-0-k2j4h6g8"},
        "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    service = EarlyStoppingService(namespace="team-a",
                                   custom_api=k8s.CustomObjectsApi(k8s.ApiClient(config)))
    server, port = serve(service, port=0, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.EarlyStoppingStub(channel)
            stub.SetTrialStatus(pb2.SetTrialStatusRequest(trial_name="bccd-0-k2j4h6g8"), timeout=10)
            with pytest.raises(grpc.RpcError) as e:
                stub.SetTrialStatus(pb2.SetTrialStatusRequest(trial_name="missing"), timeout=10)
    finally:
        server.stop(None)
    conditions = fake.objects[("team-a", "trials", "bccd-0-k2j4h6g8")]["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Running", "EarlyStopped"]
    assert conditions[-1]["reason"] == "TrialEarlyStopped" and conditions[-1]["status"] == "True"
    assert ("PATCH", "/apis/kubeflow.org/v1beta1/namespaces/team-a/trials/bccd-0-k2j4h6g8/status") in fake.requests
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "cannot mark trial team-a/missing early stopped" in e.value.details()


def _small_job(training_data: str):
    return parse_job({"task": "image_classification", "training_data": training_data,
                      "limits": {"max_trials": 4, "max_concurrent_trials": 2},
                      "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]},
                                        "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}]})


def test_the_pipeline_backend_needs_trial_outputs_before_it_creates_anything(cluster, tmp_path):
    from automl_vision.spec.cluster import ClusterSettings

    fake = FakeKubernetes({}, polls=1)
    client, _ = cluster(fake)
    with pytest.raises(ConfigError) as e:
        katib.run_katib_backend(_small_job("s3://automl/colours/train.jsonl"), tmp_path / "run",
                                cluster=ClusterSettings(), name="colours", client=client, poll_interval_s=0.01,
                                echo=lambda s: None)
    assert "the Katib backend needs the cluster setting trial_outputs: an s3://bucket/prefix where each trial " \
           "uploads its model" in str(e.value)
    assert fake.requests == [] and not (tmp_path / "run").exists()


def test_a_best_trial_that_uploaded_nothing_is_an_error_naming_where(cluster, tmp_path, monkeypatch):
    """Nothing is trained in the step any more: without the best trial's upload there is no model."""
    from kube_testserver import object_store

    from automl_vision.spec.cluster import ClusterSettings

    fake = FakeKubernetes({"colours": ("colours-t1", 0.9, {"learning_rate": "0.02"})}, polls=1)
    client, _ = cluster(fake)
    with object_store("automl") as secret:
        for k, v in secret.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(AutoMLError) as e:
            katib.run_katib_backend(_small_job("s3://automl/colours/train.jsonl"), tmp_path / "run",
                                    cluster=ClusterSettings(trial_outputs="s3://automl/trials"), name="colours",
                                    client=client, poll_interval_s=0.01, echo=lambda s: None)
    assert "Katib's best trial colours-t1 left no model package in s3://automl/trials/colours/colours-t1/outputs/" \
        in str(e.value)
    assert json.loads((tmp_path / "run" / "katib.json").read_text())["best_trial"] == "colours-t1"
    assert not (tmp_path / "run" / "best_model").exists()


# --- the compute budget (limits.budget) ---------------------------------------------------------------

def budget_job(**limits):
    """The section 10 job with a budget and no max_trials: the budget ends the sweep (maxTrialCount 500 each)."""
    data = yaml.safe_load(SPEC_10)
    data["limits"].pop("max_trials")
    data["limits"].update(limits)
    return parse_job(data)


def colours_job(**limits):
    """One search-space entry: one Experiment."""
    return parse_job({"task": "image_classification", "training_data": "s3://automl/colours/train.jsonl",
                      "limits": limits,
                      "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]},
                                        "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}]})


def patches(fake):
    return [(path.rsplit("/", 1)[-1], ctype, body) for method, path, ctype, body in fake.bodies if method == "PATCH"]


def test_a_budget_stops_new_trials_once_the_next_would_not_fit(cluster):
    from kube_testserver import KatibTrials

    # Trials of one GPU-hour each, one at a time per Experiment; the clock moves half an hour per poll.
    fake = KatibTrials({"bccd-0": [1.0], "bccd-1": [1.0]}, step=0.5, optimal={
        "bccd-0": ("bccd-0-t1", 0.61, {"learning_rate": "0.0042", "model_size": "small"}),
        "bccd-1": ("bccd-1-t2", 0.72, {"learning_rate": "0.00031", "optimizer": "adamw", "min_size": "800"})})
    client, _ = cluster(fake)
    lines: list[str] = []
    result = katib.run_katib_sweep(budget_job(budget=8), name="bccd", client=client, poll_interval_s=0.01,
                                   echo=lines.append)
    created = {e["metadata"]["name"]: e for e in katib.experiments_from_job(budget_job(budget=8), name="bccd",
                                                                          namespace="team-a")}
    assert created["bccd-0"]["spec"]["maxTrialCount"] == 500
    # At 4 GPU-hours used (two trials ended, two just started, an hour each), the two Katib still starts after
    # them and one more would make 9 > 8: maxTrialCount goes to one more than created, never to what is created
    # (Katib's webhook refuses that), so 4 trials each, 8 GPU-hours in all.
    assert ("compute budget: 4.00 of 8 GPU-hours used, 2.00 more expected for 2 running trial(s), a trial takes "
            "about 1.00 (median of 4 ended): after the 2 trial(s) Katib still starts, another would not fit; "
            "stopping new trials") in lines
    assert "bccd-0: maxTrialCount lowered from 500 to 4 (3 trial(s) created; Katib takes no less than one more " \
           "than created)" in lines
    # the edit that reached the API server is the SDK's: the whole Experiment as a merge patch, the count changed
    sent = patches(fake)
    assert [(name, ctype) for name, ctype, _ in sent] == [("bccd-0", "application/merge-patch+json"),
                                                          ("bccd-1", "application/merge-patch+json")]
    for name, _, body in sent:
        assert body["kind"] == "Experiment" and body["metadata"]["name"] == name
        assert body["spec"] == {**created[name]["spec"], "maxTrialCount": 4}
        assert fake.objects[("team-a", "experiments", name)]["spec"]["maxTrialCount"] == 4
    assert fake.refused == []
    assert ("trials", "katib.kubeflow.org/experiment=bccd-0") in fake.selectors
    # the Experiments then ended by themselves (ExperimentMaxTrialsReached), nothing deleted
    assert [len(fake.runs[n]) for n in ("bccd-0", "bccd-1")] == [4, 4]
    assert not result.timed_out and not result.deleted
    assert (result.best_trial, result.best_value) == ("bccd-1-t2", 0.72)
    figures = json.loads(json.dumps(result.to_json()))["budget"]
    assert figures["budget"] == 8 and figures["unit"] == "GPU-hours" and figures["spent"] is False
    assert figures["used"] == pytest.approx(8.0, abs=0.01) and figures["trials"] == 8
    assert figures["stopped_new_trials_at"] == pytest.approx(4.0, abs=0.01)
    assert figures["estimate_when_stopped"] == pytest.approx(1.0, abs=0.01)
    assert figures["max_trial_count"] == {"bccd-0": 4, "bccd-1": 4}


def test_a_budget_spent_while_trials_run_ends_the_sweep_keeping_the_best(cluster):
    from kube_testserver import KatibTrials

    from automl_vision.spec.cluster import ClusterSettings

    # CPU trials (no GPU pool): each counts one trial-hour an hour. Two short trials, then two long ones that
    # run past the estimate the short ones gave.
    fake = KatibTrials({"colours": [0.5, 0.5, 4.0]}, step=0.25,
                       optimal={"colours": ("colours-t1", 0.9, {"learning_rate": "0.02"})})
    client, _ = cluster(fake)
    lines: list[str] = []
    result = katib.run_katib_sweep(colours_job(budget=3.2, max_concurrent_trials=2), name="colours", client=client,
                                   cluster=ClusterSettings(gpu=None), poll_interval_s=0.01, echo=lines.append)
    unit = "trial-hours (hours of the CPU trial pods)"
    # new trials stop at 2.5 used (2 ended, 2 running past their estimate, and one more: 3.5 > 3.2) ...
    assert any(line.startswith(f"compute budget: 2.50 of 3.2 {unit} used") for line in lines)
    assert [(name, body["spec"]["maxTrialCount"]) for name, _, body in patches(fake)] == [("colours", 5)]
    # ... and at 3.5 used, the two running trials are still going: the sweep ends as at the time limit
    assert f"compute budget of 3.2 {unit} spent (3.50 used) while trials still run; keeping the best trial so far" \
        in lines
    assert result.deleted and not result.timed_out and "deleted colours" in lines
    assert fake.objects == {}  # the Experiment and its Trials: no more compute spent
    assert (result.best_trial, result.best_value) == ("colours-t1", 0.9)
    assert result.parameters == {"model_name": "resnet18", "learning_rate": 0.02}
    figures = result.to_json()["budget"]
    assert figures["spent"] is True and figures["unit"] == unit and figures["devices_per_trial"] == 1
    assert figures["used"] >= 3.2 and figures["stopped_new_trials_at"] == pytest.approx(2.5, abs=0.01)


def test_a_refused_edit_is_tried_again_with_the_trials_created_since(cluster):
    from kube_testserver import KatibTrials

    class TrialStartsMeanwhile(KatibTrials):
        """The controller starts a trial between the SDK's read of the Experiment and its edit."""

        def on_request(self, method, namespace, plural, name):
            if (method, plural) == ("PATCH", "experiments") and not self.refused:
                self.tick(namespace, name, 1.0)

    fake = TrialStartsMeanwhile({"colours": [1.0]}, step=0.5,
                                optimal={"colours": ("colours-t1", 0.9, {"learning_rate": "0.02"})})
    client, _ = cluster(fake)
    lines: list[str] = []
    result = katib.run_katib_sweep(colours_job(budget=3), name="colours", client=client, poll_interval_s=0.01,
                                   echo=lines.append)
    refusal = ('admission webhook "validator.experiment.katib.kubeflow.org" denied the request: spec.maxTrialCount: '
               'Invalid value: 3: must be greater than status.trials count')
    assert fake.refused == [refusal]
    assert f"colours: could not lower maxTrialCount to 3: {refusal}; trying again at the next poll" in lines
    assert [body["spec"]["maxTrialCount"] for _, _, body in patches(fake)] == [3, 4]
    assert result.budget["max_trial_count"] == {"colours": 4}
    # the trial that started meanwhile went past the budget: it is deleted once the budget is spent
    assert result.budget["spent"] is True and result.deleted and result.best_trial == "colours-t1"


def test_a_budget_spent_creates_no_later_experiment(cluster):
    from kube_testserver import KatibTrials

    fake = KatibTrials({"bccd-0": [1.0], "bccd-1": [1.0]}, step=0.5,
                       optimal={"bccd-0": ("bccd-0-t1", 0.61, {"learning_rate": "0.0042", "model_size": "small"})})
    client, _ = cluster(fake)
    lines: list[str] = []
    result = katib.run_katib_sweep(budget_job(budget=3, max_concurrent_trials=1), name="bccd", client=client,
                                   poll_interval_s=0.01, echo=lines.append)
    assert fake.created == [("bccd-0", [])]  # one after another, and the budget ends after the first
    assert "bccd-0: maxTrialCount lowered from 500 to 3 (2 trial(s) created; Katib takes no less than one more " \
           "than created)" in lines
    assert "not creating bccd-1: new trials are stopped by the budget" in lines
    assert len(fake.runs["bccd-0"]) == 3 and not result.deleted and result.best_trial == "bccd-0-t1"
    assert result.budget["used"] == pytest.approx(3.0, abs=0.01) and result.budget["spent"] is False


def test_without_a_budget_no_trials_are_listed(cluster):
    from kube_testserver import KatibTrials

    fake = KatibTrials({"bccd-0": [1.0], "bccd-1": [1.0]}, step=0.5, clock_on="get", optimal={
        "bccd-0": ("bccd-0-t1", 0.61, {"learning_rate": "0.0042", "model_size": "small"}),
        "bccd-1": ("bccd-1-t2", 0.72, {"learning_rate": "0.00031", "optimizer": "adamw", "min_size": "800"})})
    client, _ = cluster(fake)
    result = katib.run_katib_sweep(job(), name="bccd", client=client, poll_interval_s=0.01, echo=lambda s: None)
    assert [len(fake.runs[n]) for n in ("bccd-0", "bccd-1")] == [5, 5]  # maxTrialCount as created
    assert not any("/trials" in path for _, path in fake.requests)
    assert [plural for plural, _ in fake.selectors] == ["experiments"] * len(fake.selectors)
    assert patches(fake) == [] and result.budget is None and result.to_json()["budget"] is None
    assert result.best_trial == "bccd-1-t2"


def test_the_run_folder_records_the_budget(cluster, tmp_path, monkeypatch):
    from kube_testserver import KatibTrials, object_store

    from automl_vision.spec.cluster import ClusterSettings

    fake = KatibTrials({"colours": [1.0]}, step=0.5,
                       optimal={"colours": ("colours-t1", 0.9, {"learning_rate": "0.02"})})
    client, _ = cluster(fake)
    with object_store("automl") as secret:
        for k, v in secret.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(AutoMLError):  # the stand-in trials upload nothing
            katib.run_katib_backend(colours_job(budget=3), tmp_path / "run",
                                    cluster=ClusterSettings(trial_outputs="s3://automl/trials"), name="colours",
                                    client=client, poll_interval_s=0.01, echo=lambda s: None)
    saved = json.loads((tmp_path / "run" / "katib.json").read_text())["budget"]
    assert (saved["budget"], saved["unit"], saved["max_trial_count"], saved["spent"]) == (3, "GPU-hours",
                                                                                          {"colours": 3}, False)
    assert saved["used"] == pytest.approx(3.0, abs=0.01)
    assert saved["stopped_new_trials_at"] == pytest.approx(1.0, abs=0.01)
    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert sweep["budget"] == saved
    assert sweep["stopped_because"] == "the budget of 3 GPU-hours is spent: 3.00 used; no new trials after 1.00"
