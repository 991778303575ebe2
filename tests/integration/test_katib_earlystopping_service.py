"""The early-stopping service over gRPC on 127.0.0.1, with recorded observations served by a Katib
DBManager gRPC server (Katib's own stubs): its rules decide as the local sweep's policy functions."""

from __future__ import annotations

import random
import socket

import grpc
import numpy as np
import pytest

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

from kubeflow.katib import katib_api_pb2 as pb2  # noqa: E402
from kubeflow.katib import katib_api_pb2_grpc as pb2_grpc  # noqa: E402

from automl_vision.earlystopping import rules as es  # noqa: E402
from automl_vision.earlystopping.collector import RuleSet  # noqa: E402
from automl_vision.earlystopping.service import EarlyStoppingService, serve  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep.katib import experiments_from_job  # noqa: E402
from automl_vision.sweep.policies import decide  # noqa: E402

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


def test_no_rule_before_any_trial_finished(servers):
    stub, db_address, _ = servers
    experiment, _ = _experiment_pb({"type": "bandit", "slack_factor": 0.2})
    reply = stub.GetEarlyStoppingRules(pb2.GetEarlyStoppingRulesRequest(
        experiment=experiment, trials=[pb2.Trial(name=RUNNING_TRIAL)], db_manager_address=db_address), timeout=10)
    assert list(reply.early_stopping_rules) == []


@pytest.mark.parametrize("name, settings, message", [
    ("bandit", {"slack_factor": "0.2", "slack_amount": "0.1"}, "bandit needs exactly one of slack_factor or slack_amount"),
    ("truncation-selection", {"truncation_percentage": "0"}, "truncation_percentage: Input should be greater than or equal to 1"),
    ("hyperband", {}, "unknown early-stopping algorithm 'hyperband'"),
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
