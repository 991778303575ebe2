"""The gRPC early-stopping service: Katib's ``EarlyStopping`` API with bandit and truncation selection.

Katib runs it next to an Experiment's suggestion service (port 6788) when the Experiment's
``earlyStopping.algorithmName`` is ``bandit`` or ``truncation-selection`` (registered in katib-config,
see ``manifests/katib/``). Calls:

- ``ValidateEarlyStoppingSettings``: the settings parse into the policy (else INVALID_ARGUMENT).
- ``GetEarlyStoppingRules``: before a trial is created. Reads the earlier trials' objective values
  from Katib's DB manager (``GetObservationLog``) and answers one frozen rule
  (:func:`automl_vision.earlystopping.rules.stop_rule`), or none while nothing can be compared.
- ``SetTrialStatus``: the metrics collector stopped a trial; mark it ``EarlyStopped`` (needs get and
  patch on ``trials`` and ``trials/status``).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
from concurrent import futures
from datetime import datetime, timezone
from typing import Any

import grpc

from automl_vision.earlystopping.katib_sdk import import_katib_api
from automl_vision.earlystopping.rules import SERVICE_PORT, policy_from_settings, stop_rule

log = logging.getLogger(__name__)

KATIB_GROUP, KATIB_VERSION, TRIALS = "kubeflow.org", "v1beta1", "trials"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: Trials whose observation log can no longer change.
_FINISHED = ("SUCCEEDED", "KILLED", "FAILED", "METRICSUNAVAILABLE", "EARLYSTOPPED")


def _timestamp_key(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


class EarlyStoppingService:
    """Katib's ``EarlyStopping`` servicer. ``custom_api``: a kubernetes ``CustomObjectsApi`` (default:
    the in-cluster one, made on first use); ``namespace``: the trials' namespace (default: the pod's)."""

    def __init__(self, *, namespace: str | None = None, custom_api: Any = None, rpc_timeout_s: float = 60.0):
        self.pb2, self.pb2_grpc = import_katib_api()
        self._namespace = namespace
        self._custom_api = custom_api
        self._timeout = rpc_timeout_s
        self._lock = threading.Lock()
        self._finished: dict[tuple[str, str], list[float]] = {}  # (trial, metric) -> values
        self._channels: dict[str, grpc.Channel] = {}

    # -- the API -------------------------------------------------------------------------------

    def ValidateEarlyStoppingSettings(self, request, context):  # noqa: N802 (gRPC method name)
        spec = request.early_stopping
        try:
            policy_from_settings(spec.algorithm_name, {s.name: s.value for s in spec.algorithm_settings})
        except ValueError as e:
            log.error("invalid early-stopping settings: %s", e)
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(e))
        return self.pb2.ValidateEarlyStoppingSettingsReply()

    def GetEarlyStoppingRules(self, request, context):  # noqa: N802
        spec = request.experiment.spec
        try:
            policy = policy_from_settings(spec.early_stopping.algorithm_name,
                                          {s.name: s.value for s in spec.early_stopping.algorithm_settings})
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        metric = spec.objective.objective_metric_name
        maximize = spec.objective.type == self.pb2.MAXIMIZE
        try:
            history = self.history(request.trials, metric, request.db_manager_address)
        except grpc.RpcError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"cannot read observation logs from the Katib DB manager at "
                          f"{request.db_manager_address}: {e.code().name} {e.details()}")
        rule = stop_rule(policy, metric, history, maximize=maximize)
        name = request.experiment.name or "experiment"
        if rule is None:
            log.info("%s: %s, no rule yet (%d earlier trial(s) with values)", name, policy.type, len(history))
            return self.pb2.GetEarlyStoppingRulesReply()
        log.info("%s: %s rule for the next trial: stop when best %s %s %.6g at reported value %d "
                 "(from %d earlier trial(s))", name, policy.type, metric,
                 "<" if rule.comparison == "less" else ">", rule.value, rule.start_step, len(history))
        comparison = self.pb2.LESS if rule.comparison == "less" else self.pb2.GREATER
        return self.pb2.GetEarlyStoppingRulesReply(early_stopping_rules=[self.pb2.EarlyStoppingRule(
            name=rule.metric, value=repr(float(rule.value)), comparison=comparison, start_step=rule.start_step)])

    def SetTrialStatus(self, request, context):  # noqa: N802
        name, namespace = request.trial_name, self.namespace()
        try:
            api = self.custom_api()
            trial = api.get_namespaced_custom_object(KATIB_GROUP, KATIB_VERSION, namespace, TRIALS, name)
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            status = trial.setdefault("status", {})
            status.setdefault("conditions", []).append({
                "type": "EarlyStopped", "status": "True", "reason": "TrialEarlyStopped",
                "message": "Trial is early stopped", "lastUpdateTime": now, "lastTransitionTime": now,
            })
            api.patch_namespaced_custom_object_status(KATIB_GROUP, KATIB_VERSION, namespace, TRIALS, name, trial)
        except Exception as e:  # any failure goes back to the collector, which fails loudly
            context.abort(grpc.StatusCode.INTERNAL, f"cannot mark trial {namespace}/{name} early stopped: {e}")
        log.info("trial %s/%s marked EarlyStopped", namespace, name)
        return self.pb2.SetTrialStatusReply()

    # -- helpers -------------------------------------------------------------------------------

    def history(self, trials, metric: str, db_manager_address: str) -> dict[str, list[float]]:
        """Each trial's values of ``metric`` in reporting order (trials without values left out)."""
        out: dict[str, list[float]] = {}
        for trial in trials:
            key = (trial.name, metric)
            with self._lock:
                values = self._finished.get(key)
            if values is None:
                values = self._observations(trial.name, metric, db_manager_address)
                condition = self.pb2.TrialStatus.TrialConditionType.Name(trial.status.condition)
                if condition in _FINISHED:
                    with self._lock:
                        self._finished[key] = values
            if values:
                out[trial.name] = values
        return out

    def _observations(self, trial_name: str, metric: str, address: str) -> list[float]:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.insecure_channel(address)
        stub = self.pb2_grpc.DBManagerStub(channel)
        reply = stub.GetObservationLog(self.pb2.GetObservationLogRequest(trial_name=trial_name, metric_name=metric),
                                       timeout=self._timeout)
        logs = sorted(reply.observation_log.metric_logs, key=lambda m: _timestamp_key(m.time_stamp))
        values = []
        for m in logs:
            if m.metric.name != metric:
                continue
            try:
                v = float(m.metric.value)
            except ValueError:  # "unavailable": the trial never reported the metric
                continue
            if not math.isnan(v):
                values.append(v)
        return values

    def namespace(self) -> str:
        if self._namespace is None:
            try:
                with open(NAMESPACE_FILE) as f:
                    self._namespace = f.read().strip()
            except OSError:
                self._namespace = "default"
        return self._namespace

    def custom_api(self):
        if self._custom_api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._custom_api = client.CustomObjectsApi()
        return self._custom_api

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def serve(service: EarlyStoppingService, port: int = SERVICE_PORT, host: str = "[::]") -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``service``; returns it and the port it listens on (``port=0``: any free one)."""
    _, pb2_grpc = import_katib_api()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb2_grpc.add_EarlyStoppingServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m automl_vision.earlystopping",
                                     description="Katib early-stopping service: bandit and truncation selection.")
    parser.add_argument("--port", type=int, default=SERVICE_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, port = serve(EarlyStoppingService(), args.port)
    log.info("early-stopping service listening on port %d", port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop(grace=5).wait()
    return 0
