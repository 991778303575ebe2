"""The early-stopping service over gRPC on 127.0.0.1, with recorded observations served by a Katib
DBManager gRPC server (Katib's own stubs): its rules decide as the local sweep's policy functions.
Its SetTrialStatus against the stand-in Kubernetes API server (tests/kube_api_fake.py), with Katib's
controller writing the trial between the service's read and its write."""

from __future__ import annotations

import math
import random
import socket

import grpc
import numpy as np
import pytest

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

from kubeflow.katib import katib_api_pb2 as pb2  # noqa: E402
from kubeflow.katib import katib_api_pb2_grpc as pb2_grpc  # noqa: E402
from kube_api_fake import FakeKubernetesAPI, JSONPatchError, json_patch, serving  # noqa: E402

from automl_vision.earlystopping import rules as es  # noqa: E402
from automl_vision.earlystopping.collector import RuleSet  # noqa: E402
from automl_vision.earlystopping.service import EarlyStoppingService, serve  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep.katib import experiments_from_job  # noqa: E402
from automl_vision.spec.policies import decide  # noqa: E402

# Recorded objective values of earlier trials, one per reported interval (as Katib's DB holds them).
RECORDED = {
    "exp-4k2j9xqw": [0.41, 0.55, 0.62, 0.70],
    "exp-8dj2kq0a": [0.30, 0.33, 0.35],
    "exp-b7x0pz1m": [0.52, 0.61, 0.66, 0.69, 0.71],
    "exp-q0w9e8r7": [0.20, 0.45],
    "exp-zz1x2c3v": [0.60, 0.58, 0.74, 0.77],
}
UNAVAILABLE_TRIAL = "exp-metricsx0"  # the collector found no objective: Katib stores "unavailable"
RUNNING_TRIAL = "exp-running01"  # still running: nothing in the DB yet
NEW = "zz-new-trial"  # sorts after the recorded ids: the later trial on ties, as Katib's new trial is


class RecordedDBManager(pb2_grpc.DBManagerServicer):
    """Katib's DBManager API answering GetObservationLog from recorded values (shuffled, timestamped)."""

    def __init__(self):
        self.calls: list[str] = []

    def GetObservationLog(self, request, context):  # noqa: N802
        self.calls.append(request.trial_name)
        logs = []
        if request.trial_name == UNAVAILABLE_TRIAL:
            logs.append(pb2.MetricLog(time_stamp="0001-01-01T00:00:00Z",
                                      metric=pb2.Metric(name="accuracy", value="unavailable")))
        for i, v in enumerate(RECORDED.get(request.trial_name, [])):
            ts = f"2026-01-01T10:{i:02d}:00Z"
            logs.append(pb2.MetricLog(time_stamp=ts, metric=pb2.Metric(name="accuracy", value=repr(v))))
            logs.append(pb2.MetricLog(time_stamp=ts, metric=pb2.Metric(name="loss", value="1.0")))
        random.Random(request.trial_name).shuffle(logs)  # the service must order by time itself
        return pb2.GetObservationLogReply(observation_log=pb2.ObservationLog(metric_logs=logs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def servers():
    from concurrent import futures

    db = RecordedDBManager()
    db_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_DBManagerServicer_to_server(db, db_server)
    db_port = db_server.add_insecure_port("127.0.0.1:0")
    db_server.start()
    service = EarlyStoppingService(namespace="test", rpc_timeout_s=5)
    server, port = serve(service, port=0, host="127.0.0.1")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb2_grpc.EarlyStoppingStub(channel), f"127.0.0.1:{db_port}", db
    channel.close()
    server.stop(None)
    db_server.stop(None)
    service.close()


def _experiment_pb(policy_yaml: dict) -> tuple[pb2.Experiment, object]:
    """The Experiment the controller sends, built from what `automl-vision katib` generates."""
    job = parse_job({"task": "image_classification", "training_data": "s3://data/train.jsonl",
                     "limits": {"max_trials": 8, "max_concurrent_trials": 2},
                     "sweep": {"sampling_algorithm": "random", "early_termination": policy_yaml},
                     "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]},
                                       "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}]})
    spec = experiments_from_job(job, name="exp")[0]["spec"]
    es_spec = spec["earlyStopping"]
    experiment = pb2.Experiment(name="exp", spec=pb2.ExperimentSpec(
        objective=pb2.ObjectiveSpec(type=pb2.MAXIMIZE, objective_metric_name=spec["objective"]["objectiveMetricName"]),
        early_stopping=pb2.EarlyStoppingSpec(
            algorithm_name=es_spec["algorithmName"],
            algorithm_settings=[pb2.EarlyStoppingSetting(name=s["name"], value=s["value"])
                                for s in es_spec["algorithmSettings"]])))
    return experiment, job.sweep.early_termination


def _trials() -> list[pb2.Trial]:
    finished = pb2.TrialStatus(condition=pb2.TrialStatus.SUCCEEDED)
    out = [pb2.Trial(name=name, status=finished) for name in RECORDED]
    out.append(pb2.Trial(name=UNAVAILABLE_TRIAL, status=pb2.TrialStatus(condition=pb2.TrialStatus.METRICSUNAVAILABLE)))
    out.append(pb2.Trial(name=RUNNING_TRIAL, status=pb2.TrialStatus(condition=pb2.TrialStatus.RUNNING)))
    return out


def _stops(reply, values) -> bool:
    rules = [es.StopRule(r.name, "less" if r.comparison == pb2.LESS else "greater", float(r.value), r.start_step)
             for r in reply.early_stopping_rules]
    checker = RuleSet(rules, "accuracy", maximize=True)
    for v in values:
        checker.update("accuracy", v)
    return checker.stop


@pytest.mark.parametrize("policy_yaml, expected_rule", [
    ({"type": "bandit", "evaluation_interval": 1, "delay_evaluation": 2, "slack_factor": 0.2}, (0.61 / 1.2, 2)),
    ({"type": "bandit", "evaluation_interval": 2, "delay_evaluation": 3, "slack_amount": 0.1}, (0.77 - 0.1, 4)),
    ({"type": "truncation_selection", "evaluation_interval": 1, "delay_evaluation": 2,
      "truncation_percentage": 40}, (0.45, 2)),  # cut 2 of 6
])
def test_rules_over_grpc_match_the_policy_functions(servers, policy_yaml, expected_rule):
    stub, db_address, db = servers
    experiment, policy = _experiment_pb(policy_yaml)
    request = pb2.GetEarlyStoppingRulesRequest(experiment=experiment, trials=_trials(), db_manager_address=db_address)
    reply = stub.GetEarlyStoppingRules(request, timeout=10)
    [rule] = reply.early_stopping_rules
    assert (rule.name, rule.comparison, rule.start_step) == ("accuracy", pb2.LESS, expected_rule[1])
    assert float(rule.value) == pytest.approx(expected_rule[0])

    rng = np.random.default_rng(3)
    k = rule.start_step
    outcomes = set()
    for _ in range(200):
        values = sorted(rng.uniform(0.2, 0.8, k + 2).round(3))  # improving: value at k is the best so far
        terminate = decide(policy, NEW, {**RECORDED, NEW: values[:k]}).terminate
        assert _stops(reply, values) == terminate, values
        outcomes.add(terminate)
    assert outcomes == {True, False}

    # Finished trials are read from the DB once; the running one every time.
    assert sorted(db.calls) == sorted([*RECORDED, UNAVAILABLE_TRIAL, RUNNING_TRIAL])
    stub.GetEarlyStoppingRules(request, timeout=10)
    assert db.calls.count(RUNNING_TRIAL) == 2 and db.calls.count(next(iter(RECORDED))) == 1


# When Katib's trial controller first saw each trial (RFC 3339, to the second): the creation order is
# exp-b7x0pz1m and exp-zz1x2c3v (same second: by name), exp-8dj2kq0a, exp-q0w9e8r7, exp-4k2j9xqw, then the
# running trial, which has no start time yet; the trial being created comes after them all (trial-0006).
STARTED = {"exp-zz1x2c3v": "2026-01-01T09:00:00Z", "exp-b7x0pz1m": "2026-01-01T09:00:00Z",
           "exp-8dj2kq0a": "2026-01-01T09:05:00Z", "exp-q0w9e8r7": "2026-01-01T09:07:00Z",
           "exp-4k2j9xqw": "2026-01-01T09:10:00Z"}
CREATED = ["exp-b7x0pz1m", "exp-zz1x2c3v", "exp-8dj2kq0a", "exp-q0w9e8r7", "exp-4k2j9xqw", RUNNING_TRIAL]


def _started_trials() -> list[pb2.Trial]:
    finished = pb2.TrialStatus.SUCCEEDED
    out = [pb2.Trial(name=name, status=pb2.TrialStatus(condition=finished, start_time=STARTED[name]))
           for name in reversed(RECORDED)]
    out.append(pb2.Trial(name=RUNNING_TRIAL, status=pb2.TrialStatus(condition=pb2.TrialStatus.RUNNING)))
    return out


@pytest.mark.parametrize("policy_yaml, expected_rule", [
    # rung 1, the 5 finished trials' values there: 0.52, 0.60, 0.30, 0.20, 0.41; k = 6, the best 2 continue
    ({"type": "asha"}, (0.52, 1)),
    # rung 3: bests over 1..3 of the 4 trials with 3 values: 0.66, 0.74, 0.35, 0.62; k = 5, the best 2 continue
    ({"type": "asha", "min_resource": 3, "max_resource": 10}, (0.66, 3)),
    # 5 brackets (1, 2, 4, 8, 16 up to 17): trial-0006 is in bracket 1 (first rung 2) with trial-0001 only
    # (exp-zz1x2c3v, best over 1..2: 0.60); k = 2, the best 1 continues. By name order instead of creation
    # order, bracket 1 would hold exp-8dj2kq0a (0.33).
    ({"type": "hyperband", "max_resource": 17, "reduction_factor": 2}, (0.60, 2)),
])
def test_rung_rules_over_grpc_match_the_policy_function(servers, policy_yaml, expected_rule):
    stub, db_address, _ = servers
    experiment, policy = _experiment_pb(policy_yaml)
    request = pb2.GetEarlyStoppingRulesRequest(experiment=experiment, trials=_started_trials(),
                                               db_manager_address=db_address)
    reply = stub.GetEarlyStoppingRules(request, timeout=10)
    [rule] = reply.early_stopping_rules
    assert (rule.name, rule.comparison, rule.start_step) == ("accuracy", pb2.LESS, expected_rule[1])
    assert float(rule.value) == math.nextafter(expected_rule[0], 1)  # best <= threshold: the new trial loses ties

    history, new = es.creation_order(CREATED, RECORDED)
    assert new == "trial-0006"
    rng = np.random.default_rng(5)
    n = rule.start_step
    outcomes = set()
    for _ in range(200):
        values = list(rng.choice(np.round(np.arange(0.2, 0.8, 0.02), 2), n + 2))
        terminate = decide(policy, new, {**history, new: values[:n]}).terminate
        assert _stops(reply, values) == terminate, values
        outcomes.add(terminate)
    assert outcomes == {True, False}


def test_no_rule_before_any_trial_finished(servers):
    stub, db_address, _ = servers
    experiment, _ = _experiment_pb({"type": "bandit", "slack_factor": 0.2})
    reply = stub.GetEarlyStoppingRules(pb2.GetEarlyStoppingRulesRequest(
        experiment=experiment, trials=[pb2.Trial(name=RUNNING_TRIAL)], db_manager_address=db_address), timeout=10)
    assert list(reply.early_stopping_rules) == []


@pytest.mark.parametrize("name, settings, message", [
    ("bandit", {"slack_factor": "0.2", "slack_amount": "0.1"}, "bandit needs exactly one of slack_factor or slack_amount"),
    ("truncation-selection", {"truncation_percentage": "0"}, "truncation_percentage: Input should be greater than or equal to 1"),
    ("asha", {"evaluation_interval": "2"}, "asha: unknown setting(s) 'evaluation_interval'"),
    ("hyperband", {"min_resource": "2"}, "hyperband needs max_resource"),
    ("pbt", {}, "unknown early-stopping algorithm 'pbt'"),
])
def test_validate_settings_over_grpc(servers, name, settings, message):
    stub, _, _ = servers
    request = pb2.ValidateEarlyStoppingSettingsRequest(early_stopping=pb2.EarlyStoppingSpec(
        algorithm_name=name, algorithm_settings=[pb2.EarlyStoppingSetting(name=k, value=v) for k, v in settings.items()]))
    with pytest.raises(grpc.RpcError) as e:
        stub.ValidateEarlyStoppingSettings(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    ok = pb2.ValidateEarlyStoppingSettingsRequest(early_stopping=pb2.EarlyStoppingSpec(
        algorithm_name="bandit", algorithm_settings=[pb2.EarlyStoppingSetting(name="slack_factor", value="0.2")]))
    stub.ValidateEarlyStoppingSettings(ok, timeout=10)


def test_db_manager_unreachable_is_an_error(servers):
    stub, _, _ = servers
    experiment, _ = _experiment_pb({"type": "bandit", "slack_factor": 0.2})
    dead = f"127.0.0.1:{_free_port()}"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetEarlyStoppingRules(pb2.GetEarlyStoppingRulesRequest(
            experiment=experiment, trials=_trials(), db_manager_address=dead), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"cannot read observation logs from the Katib DB manager at {dead}" in e.value.details()


# --- SetTrialStatus: marking the trial EarlyStopped on the API server --------------------------------

TRIAL = ("test", "trials", "exp-4k2j9xqw")
TRIAL_PATH = "/apis/kubeflow.org/v1beta1/namespaces/test/trials/exp-4k2j9xqw"


class RacingController(FakeKubernetesAPI):
    """The API server, with Katib's trial controller writing the trial's status between the service's read
    and its write, ``races`` times (it records the metrics and refreshes its Running condition)."""

    def __init__(self, races: int):
        super().__init__()
        self.races = races

    def before_write(self, method, namespace, plural, name, subresource):
        if self.races and (namespace, plural, name) == TRIAL:
            self.races -= 1
            self.update_object(TRIAL, self.controller_writes)

    @staticmethod
    def controller_writes(trial):
        status = trial.setdefault("status", {})
        status["observation"] = {"metrics": [{"name": "accuracy", "latest": "0.41", "max": "0.41", "min": "0.41"}]}
        conditions = status.setdefault("conditions", [])
        running = next((c for c in conditions if c["type"] == "Running"), None)
        if running is None:
            conditions.append({"type": "Running", "status": "True", "reason": "TrialRunning"})
        else:
            running["message"] = "Trial is running, metrics collected"


def _trial(status: dict | None) -> dict:
    trial = {"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
             "metadata": {"name": TRIAL[2], "namespace": "test", "resourceVersion": "7", "generation": 1},
             "spec": {"objective": {"objectiveMetricName": "accuracy"}}}
    if status is not None:
        trial["status"] = status
    return trial


@pytest.fixture
def trial_server():
    """``start(fake, **service options)`` -> an EarlyStopping stub whose service talks to ``fake``."""
    from contextlib import ExitStack

    from kubernetes import client as k8s

    with ExitStack() as stack:
        def start(fake: FakeKubernetesAPI, **options):
            config = stack.enter_context(serving(fake))
            service = EarlyStoppingService(namespace="test", custom_api=k8s.CustomObjectsApi(k8s.ApiClient(config)),
                                           status_backoff_s=0.01, **options)
            server, port = serve(service, port=0, host="127.0.0.1")
            stack.callback(server.stop, None)
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
            return pb2_grpc.EarlyStoppingStub(channel)

        yield start


def _set_status(stub, name=TRIAL[2]):
    return stub.SetTrialStatus(pb2.SetTrialStatusRequest(trial_name=name), timeout=20)


@pytest.mark.parametrize("status", [
    {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]},
    None,  # a trial the controller has not written a status for yet: the race creates it
], ids=["conditions", "no-status"])
def test_a_concurrent_controller_update_is_kept(trial_server, status):
    fake = RacingController(races=1)
    fake.objects[TRIAL] = _trial(status)
    _set_status(trial_server(fake))
    trial = fake.objects[TRIAL]
    types = [c["type"] for c in trial["status"]["conditions"]]
    assert types[-1] == "EarlyStopped" and types.count("EarlyStopped") == 1
    assert "Running" in types  # the controller's condition, written in between, is still there
    assert trial["status"]["observation"]["metrics"][0]["latest"] == "0.41"
    stopped = trial["status"]["conditions"][-1]
    assert (stopped["status"], stopped["reason"], stopped["message"]) == ("True", "TrialEarlyStopped",
                                                                          "Trial is early stopped")
    # read, write refused (the trial changed), read again, write: a JSON patch of the status both times
    assert [m for m, p in fake.requests] == ["GET", "PATCH", "GET", "PATCH"]
    patches = [(ctype, ops) for m, p, ctype, ops in fake.bodies if p == TRIAL_PATH + "/status"]
    assert len(patches) == 2 and all(ctype == "application/json-patch+json" for ctype, _ in patches)
    assert trial["spec"] == _trial(None)["spec"] and trial["metadata"]["generation"] == 1


def test_an_early_stopped_trial_is_not_marked_twice(trial_server):
    fake = FakeKubernetesAPI()
    conditions = [{"type": "Running", "status": "False"},
                  {"type": "EarlyStopped", "status": "True", "reason": "TrialEarlyStopped"}]
    fake.objects[TRIAL] = _trial({"conditions": conditions})
    stub = trial_server(fake)
    _set_status(stub)
    _set_status(stub)
    assert fake.objects[TRIAL]["status"]["conditions"] == conditions
    assert [m for m, _ in fake.requests] == ["GET", "GET"]  # nothing written


def test_a_trial_changing_at_every_attempt_is_an_aborted_call(trial_server):
    fake = RacingController(races=99)
    fake.objects[TRIAL] = _trial({"conditions": [{"type": "Running", "status": "True"}]})
    with pytest.raises(grpc.RpcError) as e:
        _set_status(trial_server(fake, status_attempts=3))
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert e.value.details().startswith("cannot mark trial test/exp-4k2j9xqw early stopped: the trial changed "
                                        "during each of 3 attempts (409 Conflict")
    assert [m for m, _ in fake.requests] == ["GET", "PATCH"] * 3
    assert "EarlyStopped" not in [c["type"] for c in fake.objects[TRIAL]["status"]["conditions"]]


def test_a_missing_trial_is_not_found(trial_server):
    with pytest.raises(grpc.RpcError) as e:
        _set_status(trial_server(FakeKubernetesAPI()), "exp-gone0001")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == ("cannot mark trial test/exp-gone0001 early stopped: no trial exp-gone0001 in "
                                 "namespace test (reading the trial: 404 Not Found: trials \"exp-gone0001\" not found)")


def test_a_refused_status_write_names_the_permission(trial_server):
    fake = FakeKubernetesAPI()
    fake.objects[TRIAL] = _trial({"conditions": []})
    fake.fail[("PATCH", "trials")] = (403, "Forbidden", 'trials.kubeflow.org "exp-4k2j9xqw" is forbidden: User '
                                      '"system:serviceaccount:test:exp" cannot patch resource "trials/status"')
    with pytest.raises(grpc.RpcError) as e:
        _set_status(trial_server(fake))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot patch resource \"trials/status\"" in e.value.details()
    assert "needs get on trials and patch on trials/status (manifests/katib/rbac.yaml)" in e.value.details()


# The stand-in API server's JSON patches, against examples of RFC 6902 (appendix A).
@pytest.mark.parametrize("doc, ops, expected", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}], {"foo": ["bar", ["abc", "def"]]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
])
def test_stand_in_json_patch(doc, ops, expected):
    assert json_patch(doc, ops) == expected


@pytest.mark.parametrize("doc, ops", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}]),  # A.12: no parent
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}]),  # A.9
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/2", "value": 1}]),
    ({"foo": 1}, [{"op": "replace", "path": "/bar", "value": 1}]),
])
def test_stand_in_json_patch_refusals(doc, ops):
    with pytest.raises(JSONPatchError):
        json_patch(doc, ops)


def test_stand_in_refuses_writes_of_a_stale_resource_version():
    """What the old whole-object status write ran into: 409 once the controller has written in between."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    fake = FakeKubernetesAPI()
    fake.objects[TRIAL] = _trial({"conditions": []})
    with serving(fake) as config:
        api = k8s.CustomObjectsApi(k8s.ApiClient(config))
        read = api.get_namespaced_custom_object("kubeflow.org", "v1beta1", "test", "trials", TRIAL[2])
        fake.update_object(TRIAL, RacingController.controller_writes)  # resourceVersion 7 -> 8
        read["status"]["conditions"].append({"type": "EarlyStopped", "status": "True"})
        for write in (api.patch_namespaced_custom_object_status, api.replace_namespaced_custom_object_status,
                      api.replace_namespaced_custom_object):
            with pytest.raises(ApiException) as e:
                write("kubeflow.org", "v1beta1", "test", "trials", TRIAL[2], read)
            assert e.value.status == 409 and "the object has been modified" in e.value.body
        assert fake.objects[TRIAL]["metadata"]["resourceVersion"] == "8"
        fresh = api.get_namespaced_custom_object("kubeflow.org", "v1beta1", "test", "trials", TRIAL[2])
        fresh["status"]["conditions"].append({"type": "EarlyStopped", "status": "True"})
        fresh["spec"]["objective"]["goal"] = 0.9
        written = api.replace_namespaced_custom_object_status("kubeflow.org", "v1beta1", "test", "trials", TRIAL[2],
                                                              fresh)
        assert written["metadata"]["resourceVersion"] == "9" and "goal" not in written["spec"]  # status only
        assert written["status"]["observation"] and written["status"]["conditions"][-1]["type"] == "EarlyStopped"
