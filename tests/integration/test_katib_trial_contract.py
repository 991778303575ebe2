"""The trial contract, run for real: a generated Experiment, one assignment substituted as Katib's
controller substitutes it, the container command run here the way Katib's StdOut collector runs it
(``sh -c "<command> 1>metrics.log 2>&1"``) with the container's environment (the storage Secret's
keys), its log parsed with Katib's regex and timestamp rule, its folder uploaded to the cluster's
trial_outputs on a real S3 endpoint (moto on 127.0.0.1); then the same trial stopped as the collector
stops it when a rule from our early-stopping service (over gRPC, from recorded observations) holds,
which still uploads what it has."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kubeflow.katib", reason="the Katib SDK (make test installs it)")

import grpc  # noqa: E402
import psutil  # noqa: E402
from kubeflow.katib import katib_api_pb2 as pb2  # noqa: E402
from kubeflow.katib import katib_api_pb2_grpc as pb2_grpc  # noqa: E402

from kube_testserver import container_env, object_store  # noqa: E402

from automl_vision.data.storage import StorageConfig, download_prefix  # noqa: E402
from automl_vision.earlystopping.collector import ZERO_TIME, RuleSet, metric_value, parse_text_log  # noqa: E402
from automl_vision.spec.cluster import ClusterSettings  # noqa: E402
from automl_vision.earlystopping.rules import StopRule  # noqa: E402
from automl_vision.earlystopping.service import EarlyStoppingService, serve  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep import katib  # noqa: E402
from automl_vision.training.reporter import KATIB_METRIC_RE  # noqa: E402

EPOCHS = 3
pytestmark = pytest.mark.slow


TRIAL_OUTPUTS = "s3://automl/trials"
CLUSTER = ClusterSettings(trial_outputs=TRIAL_OUTPUTS)


@pytest.fixture
def store():
    """The object store and the storage Secret's data (the cluster's Secret name -> keys)."""
    with object_store("automl") as secret:
        yield {CLUSTER.storage_secret.name: secret}


def _uploaded(store, trial: str, dest: Path) -> Path:
    secret = store[CLUSTER.storage_secret.name]
    config = StorageConfig(endpoint=secret["AWS_ENDPOINT_URL"], access_key=secret["AWS_ACCESS_KEY_ID"],
                           secret_key=secret["AWS_SECRET_ACCESS_KEY"])
    download_prefix(f"{TRIAL_OUTPUTS}/contract/{trial}", dest, config)
    return dest


@pytest.fixture
def experiment(tmp_path, make_dataset):
    classes = ("red", "green", "blue")
    train = make_dataset(tmp_path / "data", n_per_class=4, classes=classes, size=24, seed=0, name="train.jsonl")
    val = make_dataset(tmp_path / "data", n_per_class=2, classes=classes, size=24, seed=1, name="val.jsonl")
    job = parse_job({
        "task": "image_classification", "training_data": str(train), "validation_data": str(val),
        "limits": {"max_trials": 4, "max_concurrent_trials": 2},
        "sweep": {"sampling_algorithm": "random",
                  "early_termination": {"type": "bandit", "evaluation_interval": 1, "delay_evaluation": 2,
                                        "slack_amount": 0.01}},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18"]},
                          "learning_rate": {"type": "loguniform", "min_value": -12, "max_value": -11},
                          "optimizer": {"type": "choice", "values": ["sgd", "adam"]}}],
        "training_parameters": {"number_of_epochs": EPOCHS, "pretrained": False, "early_stopping": False,
                                "training_batch_size": 4, "train_crop_size": 32, "valid_resize_size": 32,
                                "valid_crop_size": 32},
        # The pod mounts the data where it is here, so the job's paths are valid in the trial pod.
        "compute": {"gpus": 0, "data_volume": {"claim_name": "datasets", "mount_path": str(tmp_path / "data")}},
    })
    [exp] = katib.experiments_from_job(job, name="contract", cluster=CLUSTER)
    assert katib.check_experiment(exp) == []
    return exp


def _shell_line(run_spec, log_file: Path, mark_file: Path) -> str:
    """The primary container's command as Katib's StdOut collector wraps it in ``sh -c``; the program
    ``automl-vision`` is this machine's ``python -m automl_vision``."""
    command = katib.primary_container(run_spec)["command"]
    assert command[0] == "automl-vision"
    program = f"{shlex.quote(sys.executable)} -m automl_vision"
    return f"{' '.join([program, *command[1:]])} 1>{log_file} 2>&1 && echo completed > {mark_file}"


def _trial(exp, tmp_path: Path, name: str):
    assignment = katib.sample_assignment(exp, np.random.default_rng(5))
    run_spec = katib.substitute_trial(exp, assignment, name, "team-a")
    work = tmp_path / name  # the container's workingDir
    work.mkdir()
    return assignment, run_spec, work


def _env(run_spec, store) -> dict:
    import os

    return {**os.environ, **container_env(katib.primary_container(run_spec), store)}


def test_trial_reports_the_objective_katib_reads(experiment, tmp_path, store):
    assignment, run_spec, work = _trial(experiment, tmp_path, "contract-a1b2c3d4")
    log_file, mark = work / "metrics.log", work / "1.pid"
    done = subprocess.run(["sh", "-c", _shell_line(run_spec, log_file, mark)], cwd=work, timeout=600,
                          env=_env(run_spec, store))
    text = log_file.read_text()
    assert done.returncode == 0 and mark.read_text().strip() == "completed", text[-3000:]

    objective = experiment["spec"]["objective"]
    names = [objective["objectiveMetricName"], *objective["additionalMetricNames"]]
    logs = parse_text_log(text.splitlines(), names)
    accuracy = [m for m in logs if m.name == "accuracy"]
    assert len(accuracy) == EPOCHS and all(m.timestamp != ZERO_TIME for m in logs)
    assert len([m for m in logs if m.name == "loss"]) == EPOCHS
    # Only the reporter's lines carry name=value, each led by its RFC 3339 time.
    for line in text.splitlines():
        if KATIB_METRIC_RE.search(line) and any(m.group(2) for m in KATIB_METRIC_RE.finditer(line)):
            assert line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z"), line
    value = metric_value(logs, "accuracy", "max")
    result = json.loads((work / "outputs" / "result.json").read_text())
    assert value == pytest.approx(result["best_value"], abs=5e-6)
    config = json.loads((work / "outputs" / "config.json").read_text())
    assert config["hyperparameters"]["learning_rate"] == float(assignment["learning_rate"])
    assert config["hyperparameters"]["optimizer"] == assignment["optimizer"]

    # the trial folder in <trial_outputs>/<experiment>/<trial name>: the pod's emptyDir is gone after it
    kept = _uploaded(store, "contract-a1b2c3d4", tmp_path / "kept")
    for name in ("result.json", "config.json", "metrics.jsonl", "outputs/model.safetensors"):
        assert (kept / name).read_bytes() == (work / "outputs" / name).read_bytes(), name
    log_text = (work / "outputs" / "train.log").read_text()  # goes on a line after the upload
    assert log_text.startswith((kept / "train.log").read_text()) and "uploading" in log_text
    assert json.loads((kept / "result.json").read_text())["status"] == "completed"


class _RecordedDB(pb2_grpc.DBManagerServicer):
    """An earlier trial that reached accuracy 1.0 at every interval."""

    def GetObservationLog(self, request, context):  # noqa: N802
        logs = [pb2.MetricLog(time_stamp=f"2026-01-01T10:0{i}:00Z", metric=pb2.Metric(name="accuracy", value="1.0"))
                for i in range(EPOCHS)]
        return pb2.GetObservationLogReply(observation_log=pb2.ObservationLog(metric_logs=logs))


def _rules_from_service(exp) -> list[StopRule]:
    db = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb2_grpc.add_DBManagerServicer_to_server(_RecordedDB(), db)
    db_port = db.add_insecure_port("127.0.0.1:0")
    db.start()
    service = EarlyStoppingService(namespace="team-a")
    server, port = serve(service, port=0, host="127.0.0.1")
    try:
        spec = exp["spec"]
        request = pb2.GetEarlyStoppingRulesRequest(
            experiment=pb2.Experiment(name="contract", spec=pb2.ExperimentSpec(
                objective=pb2.ObjectiveSpec(type=pb2.MAXIMIZE, objective_metric_name="accuracy"),
                early_stopping=pb2.EarlyStoppingSpec(
                    algorithm_name=spec["earlyStopping"]["algorithmName"],
                    algorithm_settings=[pb2.EarlyStoppingSetting(name=s["name"], value=s["value"])
                                        for s in spec["earlyStopping"]["algorithmSettings"]]))),
            trials=[pb2.Trial(name="contract-earlier1", status=pb2.TrialStatus(condition=pb2.TrialStatus.SUCCEEDED))],
            db_manager_address=f"127.0.0.1:{db_port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb2_grpc.EarlyStoppingStub(channel).GetEarlyStoppingRules(request, timeout=10)
    finally:
        server.stop(None)
        db.stop(None)
        service.close()
    return [StopRule(r.name, "less" if r.comparison == pb2.LESS else "greater", float(r.value), r.start_step)
            for r in reply.early_stopping_rules]


def test_collector_stops_the_trial_when_the_services_rule_holds(experiment, tmp_path, store):
    rules = _rules_from_service(experiment)
    assert rules == [StopRule("accuracy", "less", 0.99, 2)]  # bandit: 1.0 - slack_amount, from interval 2
    _, run_spec, work = _trial(experiment, tmp_path, "contract-e5f6g7h8")
    log_file, mark = work / "metrics.log", work / "1.pid"
    main = subprocess.Popen(["sh", "-c", _shell_line(run_spec, log_file, mark)], cwd=work, env=_env(run_spec, store))
    checker = RuleSet(rules, "accuracy", maximize=True)
    seen, stopped_at = 0, None
    deadline = time.monotonic() + 600
    try:
        while main.poll() is None and time.monotonic() < deadline:
            lines = log_file.read_text().splitlines() if log_file.exists() else []
            for line in lines[seen:]:
                checker.update_line(line)
            seen = len(lines)
            if checker.stop:
                # As the collector: mark the trial early stopped, terminate the main process's child.
                mark.write_text("early-stopped")
                [child] = psutil.Process(main.pid).children()
                child.terminate()
                stopped_at = sum(1 for ln in lines if " accuracy=" in ln)
                break
            time.sleep(0.05)
        main.wait(timeout=60)
    finally:
        if main.poll() is None:
            main.kill()
    assert stopped_at == 2, log_file.read_text()[-3000:]
    assert main.returncode != 0 and mark.read_text() == "early-stopped"  # `&& echo completed` never ran
    reported = [ln for ln in log_file.read_text().splitlines() if " accuracy=" in ln]
    assert len(reported) < EPOCHS
    assert main.returncode == 128 + 15  # the trial process ended on the SIGTERM, after its upload
    # what the stopped trial had is kept: its reports, and the model of its best epoch so far
    kept = _uploaded(store, "contract-e5f6g7h8", tmp_path / "kept")
    result = json.loads((kept / "result.json").read_text())
    assert result["status"] == "terminated" and result["epochs_completed"] == stopped_at < EPOCHS
    saved = json.loads((kept / "outputs" / "config.json").read_text())
    assert result["best_epoch"] == saved["epoch"] and (kept / "outputs" / "model.safetensors").is_file()
    assert (kept / "metrics.jsonl").read_text() == (work / "outputs" / "metrics.jsonl").read_text()
