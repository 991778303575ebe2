"""The gRPC early-stopping service: Katib's ``EarlyStopping`` API with bandit, truncation selection,
ASHA and Hyperband.

Katib runs it next to an Experiment's suggestion service (port 6788) when the Experiment's
``earlyStopping.algorithmName`` is ``bandit``, ``truncation-selection``, ``asha`` or ``hyperband``
(registered in Katib's KatibConfig by ``automl-vision katib-config``,
:mod:`automl_vision.earlystopping.katib_config`). Calls:

- ``ValidateEarlyStoppingSettings``: the settings parse into the policy (else INVALID_ARGUMENT).
- ``GetEarlyStoppingRules``: before a trial is created. Reads the earlier trials' objective values
  from Katib's DB manager (``GetObservationLog``) and answers one frozen rule
  (:func:`automl_vision.earlystopping.rules.stop_rule`), or none while nothing can be compared. For
  ``asha`` and ``hyperband`` the trials are numbered in the order they were created
  (:func:`creation_order_names`), the new trial last: its number gives its bracket.
- ``SetTrialStatus``: the metrics collector stopped a trial; mark it ``EarlyStopped`` (needs get on
  ``trials`` and patch on ``trials/status``): :func:`mark_early_stopped`.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import datetime, timezone
from typing import Any

import grpc

from automl_vision.earlystopping.katib_sdk import import_katib_api
from automl_vision.earlystopping.rules import SERVICE_PORT, creation_order, policy_from_settings, stop_rule
from automl_vision.spec.policies import RUNG_POLICIES
from automl_vision.spec.termination import trial_bracket
from automl_vision.kubeapi import status_message

log = logging.getLogger(__name__)

KATIB_GROUP, KATIB_VERSION, TRIALS = "kubeflow.org", "v1beta1", "trials"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: Trials whose observation log can no longer change.
_FINISHED = ("SUCCEEDED", "KILLED", "FAILED", "METRICSUNAVAILABLE", "EARLYSTOPPED")
EARLY_STOPPED = "EarlyStopped"
JSON_PATCH = "application/json-patch+json"


class TrialStatusError(Exception):
    """Marking a trial EarlyStopped failed; ``code`` is the gRPC status the collector gets."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def early_stopped_condition(now: datetime | None = None) -> dict[str, str]:
    """The condition Katib's own medianstop service appends (same type, reason and message)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": EARLY_STOPPED, "status": "True", "reason": "TrialEarlyStopped",
            "message": "Trial is early stopped", "lastUpdateTime": stamp, "lastTransitionTime": stamp}


def is_early_stopped(trial: dict) -> bool:
    conditions = (trial.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == EARLY_STOPPED and c.get("status") == "True"
               for c in conditions)


def status_patch(trial: dict, condition: dict) -> list[dict]:
    """A JSON patch (RFC 6902) of the trial's status subresource that appends ``condition``.

    It only adds: whatever else the controller writes to the status in the meantime is kept. Its first
    operation sets ``metadata.resourceVersion`` to the version that was read, a precondition: the API
    server refuses the write with 409 Conflict when the trial changed since (its update compares the
    patched object's resourceVersion with the stored one), and the caller reads the trial again. A
    ``test`` of the resourceVersion would refuse too, but with a 422 that cannot be told apart from a
    malformed patch. ``conditions`` (or ``status``) is created when the trial has none yet.
    """
    ops: list[dict] = []
    version = (trial.get("metadata") or {}).get("resourceVersion")
    if version:
        ops.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
    status = trial.get("status")
    if not isinstance(status, dict):
        ops.append({"op": "add", "path": "/status", "value": {"conditions": [condition]}})
    elif not isinstance(status.get("conditions"), list):
        ops.append({"op": "add", "path": "/status/conditions", "value": [condition]})
    else:
        ops.append({"op": "add", "path": "/status/conditions/-", "value": condition})
    return ops


def _api_message(e: Any) -> str:
    """``404 Not Found: trials "x" not found`` (code, reason, the Status' message) from an ApiException."""
    message = status_message(e)
    return f"{e.status} {e.reason}" + (f": {message}" if message else "")


def mark_early_stopped(api: Any, namespace: str, name: str, *, attempts: int = 5, backoff_s: float = 0.2,
                       sleep: Callable[[float], None] = time.sleep) -> str:
    """Append the EarlyStopped condition to the trial ``namespace/name`` through ``api`` (a kubernetes
    ``CustomObjectsApi``); returns what was done. Nothing is written when the trial already has
    EarlyStopped True. A write refused with 409 Conflict (the controller updated the trial in between) is
    retried on a fresh read, up to ``attempts`` writes, waiting ``backoff_s`` doubling (with jitter).
    Raises TrialStatusError: NOT_FOUND (no such trial), PERMISSION_DENIED, ABORTED (still conflicting
    after every attempt), UNAVAILABLE (API server unreachable) or INTERNAL."""
    from kubernetes.client.exceptions import ApiException  # optional: the katib extra
    from urllib3.exceptions import HTTPError

    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    path = f"/apis/{KATIB_GROUP}/{KATIB_VERSION}/namespaces/{namespace}/{TRIALS}/{name}"

    def refused(e: ApiException, doing: str) -> TrialStatusError:
        if e.status == 404:
            return TrialStatusError(grpc.StatusCode.NOT_FOUND, f"no trial {name} in namespace {namespace} "
                                                               f"({doing}: {_api_message(e)})")
        if e.status in (401, 403):
            return TrialStatusError(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{doing}: {_api_message(e)}; the suggestion pod's service account needs get "
                                    "on trials and patch on trials/status (manifests/katib/rbac.yaml)")
        return TrialStatusError(grpc.StatusCode.INTERNAL, f"{doing}: {_api_message(e)}")

    def unreachable(e: HTTPError) -> TrialStatusError:
        return TrialStatusError(grpc.StatusCode.UNAVAILABLE, f"cannot reach the Kubernetes API server: {e}")

    for attempt in range(1, attempts + 1):
        try:
            trial = api.get_namespaced_custom_object(KATIB_GROUP, KATIB_VERSION, namespace, TRIALS, name)
        except ApiException as e:
            raise refused(e, "reading the trial") from None
        except HTTPError as e:
            raise unreachable(e) from None
        if is_early_stopped(trial):
            return "was already marked EarlyStopped"
        ops = status_patch(trial, early_stopped_condition())
        try:
            api.api_client.call_api(
                path + "/status", "PATCH", header_params={"Accept": "application/json", "Content-Type": JSON_PATCH},
                body=ops, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True)
        except ApiException as e:
            if e.status != 409:
                raise refused(e, "patching the trial's status") from None
            if attempt == attempts:
                raise TrialStatusError(grpc.StatusCode.ABORTED,
                                       f"the trial changed during each of {attempts} attempts "
                                       f"(409 Conflict: {_api_message(e)})") from None
            wait = backoff_s * 2 ** (attempt - 1)
            log.info("trial %s/%s changed since it was read (409 Conflict); reading it again in %.2f s",
                     namespace, name, wait)
            sleep(wait * random.uniform(0.5, 1.0))
            continue
        except HTTPError as e:
            raise unreachable(e) from None
        return "marked EarlyStopped" + (f" (attempt {attempt})" if attempt > 1 else "")
    raise AssertionError("unreachable")


def _timestamp_key(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def creation_order_names(trials) -> list[str]:
    """The names of Katib trials (``Trial`` messages) in the order they were created: by start time
    (which Katib's trial controller sets when it first sees a trial, to the second), then by name; a
    trial without one yet comes last."""
    def key(trial) -> tuple:
        stamp = trial.status.start_time
        return (0, _timestamp_key(stamp), trial.name) if stamp else (1, _timestamp_key(""), trial.name)

    return [t.name for t in sorted(trials, key=key)]


class EarlyStoppingService:
    """Katib's ``EarlyStopping`` servicer. ``custom_api``: a kubernetes ``CustomObjectsApi`` (default:
    the in-cluster one, made on first use); ``namespace``: the trials' namespace (default: the pod's)."""

    def __init__(self, *, namespace: str | None = None, custom_api: Any = None, rpc_timeout_s: float = 60.0,
                 status_attempts: int = 5, status_backoff_s: float = 0.2):
        self.pb2, self.pb2_grpc = import_katib_api()
        self._status_attempts, self._status_backoff_s = status_attempts, status_backoff_s
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
        new_trial, which = None, "the next trial"
        if isinstance(policy, RUNG_POLICIES):
            history, new_trial = creation_order(creation_order_names(request.trials), history)
            which = f"the next trial ({new_trial} in creation order, bracket {trial_bracket(policy, new_trial)})"
        rule = stop_rule(policy, metric, history, maximize=maximize, new_trial=new_trial)
        with_values = sum(1 for values in history.values() if values)
        name = request.experiment.name or "experiment"
        if rule is None:
            log.info("%s: %s, no rule for %s (%d earlier trial(s) with values)", name, policy.type, which,
                     with_values)
            return self.pb2.GetEarlyStoppingRulesReply()
        log.info("%s: %s rule for %s: stop when best %s %s %r at reported value %d "
                 "(from %d earlier trial(s) with values)", name, policy.type, which, metric,
                 "<" if rule.comparison == "less" else ">", rule.value, rule.start_step, with_values)
        comparison = self.pb2.LESS if rule.comparison == "less" else self.pb2.GREATER
        return self.pb2.GetEarlyStoppingRulesReply(early_stopping_rules=[self.pb2.EarlyStoppingRule(
            name=rule.metric, value=repr(float(rule.value)), comparison=comparison, start_step=rule.start_step)])

    def SetTrialStatus(self, request, context):  # noqa: N802
        name, namespace = request.trial_name, self.namespace()
        try:
            action = mark_early_stopped(self.custom_api(), namespace, name, attempts=self._status_attempts,
                                        backoff_s=self._status_backoff_s)
        except TrialStatusError as e:
            context.abort(e.code, f"cannot mark trial {namespace}/{name} early stopped: {e}")
        except Exception as e:  # anything else goes back to the collector too, which fails the trial loudly
            context.abort(grpc.StatusCode.INTERNAL, f"cannot mark trial {namespace}/{name} early stopped: "
                                                    f"{type(e).__name__}: {e}")
        log.info("trial %s/%s %s", namespace, name, action)
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
            from kubernetes import client, config  # optional: the katib extra

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
                                     description="Katib early-stopping service: bandit, truncation selection, ASHA, "
                                                 "Hyperband.")
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
