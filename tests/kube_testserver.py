"""Stand-ins for a cluster in tests: Katib's controller scripted over the local Kubernetes API server
of ``kube_api_fake`` (which the real Katib SDK client and the ``kubernetes`` client talk to), and a
kubeconfig pointing at it for code that builds its own client the way a pod or a laptop does
(``KatibClient()`` and ``deploy_model`` read ``$KUBECONFIG``). Imported by the tests (``tests/`` is
on ``sys.path`` through its conftest)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit
from pathlib import Path

import yaml
from kube_api_fake import FakeKubernetesAPI, merge_patch, now, serving

from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE


class FakeKubernetes(FakeKubernetesAPI):
    """The API server, and Katib's controller as a script: an Experiment runs for ``polls`` GETs, then
    succeeds with the optimal trial ``optimal[name]`` = (trial, objective value, assignments)."""

    def __init__(self, optimal=None, polls: int = 2):
        super().__init__()
        self.optimal = optimal or {}
        self.polls = polls
        self.gets: dict[str, int] = {}
        self.created: list[tuple[str, list[str]]] = []  # (name, Experiments succeeded at that time)

    def on_create(self, plural: str, obj: dict) -> None:
        if plural == "experiments":
            self.created.append((obj["metadata"]["name"], sorted(self.succeeded())))

    def on_get(self, plural: str, obj: dict) -> None:
        if plural == "experiments":
            self.advance(obj)

    def succeeded(self) -> list[str]:
        return [name for (_, plural, name), o in self.objects.items() if plural == "experiments" and any(
            c["type"] == "Succeeded" and c["status"] == "True" for c in o.get("status", {}).get("conditions", []))]

    def advance(self, exp: dict) -> None:
        name = exp["metadata"]["name"]
        n = self.gets[name] = self.gets.get(name, 0) + 1
        status = exp.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if any(c["type"] in ("Succeeded", "Failed") for c in conditions):
            return
        if n == 1:
            conditions.append({"type": "Running", "status": "True", "reason": "ExperimentRunning",
                               "message": "Experiment is running", "lastUpdateTime": now()})
            status.update(trials=1, trialsRunning=1)
        if n >= self.polls and name in self.optimal:
            trial, value, assignments = self.optimal[name]
            for c in conditions:
                c["status"] = "False"
            conditions.append({"type": "Succeeded", "status": "True", "reason": "ExperimentMaxTrialsReached",
                               "message": "Experiment has succeeded", "lastUpdateTime": now()})
            total = exp["spec"]["maxTrialCount"]
            status.update(trials=total, trialsRunning=0, trialsSucceeded=total, currentOptimalTrial={
                "bestTrialName": trial,
                "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
                "observation": {"metrics": [
                    {"name": exp["spec"]["objective"]["objectiveMetricName"], "latest": str(value - 0.01), "max": str(value),
                     "min": "0.1"},
                    {"name": "loss", "latest": "0.42", "max": "1.3", "min": "0.40"}]}})


#: The label Katib's controller puts on a Experiment's Trials, which KatibClient.list_trials selects on.
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
#: Katib's validating webhook for Experiments (manifests/v1beta1/components/webhook/webhooks.yaml).
KATIB_WEBHOOK = "validator.experiment.katib.kubeflow.org"


class KatibTrials(FakeKubernetes):
    """Katib's controller with Trials, on a clock of its own in hours. Each Experiment's trials run for the
    hours ``durations[name]`` lists (in the order they are created; the last one repeats), as the
    controller creates them (ReconcileTrials: while fewer than parallelTrialCount are active, up to
    maxTrialCount - completed active, read from the stored spec, so an edit takes effect). The clock of an
    Experiment moves ``step`` hours whenever its trials are listed (``clock_on="trials"``) or it is read
    (``"get"``). Trials are stored with the label Katib's SDK lists them by and status.startTime /
    completionTime at those hours before now; the Experiment's status counts them, and it succeeds
    (ExperimentMaxTrialsReached) once maxTrialCount trials completed, with ``optimal[name]`` as its
    current optimal trial once that trial has succeeded. Deleting an Experiment deletes its Trials (their
    ownerReference). An edit of an Experiment passes the checks of Katib's validating webhook for an
    edit (pkg/webhook/v1beta1/experiment/validator/validator.go) or is refused with its message
    (``refused``); list requests are recorded as (plural, labelSelector) in ``selectors``."""

    def __init__(self, durations: dict[str, list[float]], step: float, optimal=None, clock_on: str = "trials"):
        super().__init__(optimal, polls=1)
        self.durations, self.step, self.clock_on = durations, step, clock_on
        self.clock: dict[str, float] = {}
        self.runs: dict[str, list[list]] = {}  # Experiment -> [trial name, start, end or None] in creation order
        self.selectors: list[tuple[str, str | None]] = []
        self.refused: list[str] = []

    def on_create(self, plural: str, obj: dict) -> None:
        super().on_create(plural, obj)
        if plural == "experiments" and obj["metadata"]["name"] in self.durations:
            name = obj["metadata"]["name"]
            self.clock[name], self.runs[name] = 0.0, []
            self.tick(obj["metadata"]["namespace"], name, 0.0)

    def advance(self, exp: dict) -> None:
        name = exp["metadata"]["name"]
        if name not in self.durations:
            return super().advance(exp)
        if self.clock_on == "get":
            self.tick(exp["metadata"]["namespace"], name, self.step)

    def tick(self, namespace: str, name: str, hours: float) -> None:
        """Move the Experiment's clock on by ``hours``: trials end, the controller starts the next ones."""
        exp = self.objects[(namespace, "experiments", name)]
        if self._succeeded(exp):
            return
        runs, t, until = self.runs[name], self.clock[name], self.clock[name] + hours
        while True:
            spec = exp["spec"]
            completed = sum(1 for r in runs if r[2] is not None)
            if completed >= spec["maxTrialCount"]:
                break
            active = len(runs) - completed
            if active < spec["parallelTrialCount"]:
                for _ in range(min(spec["maxTrialCount"] - completed, spec["parallelTrialCount"]) - active):
                    runs.append([f"{name}-t{len(runs) + 1}", t, None])
            ends = [r[1] + self._duration(name, i) for i, r in enumerate(runs) if r[2] is None]
            if not ends or min(ends) > until + 1e-9:
                break
            t = min(ends)
            for i, r in enumerate(runs):
                if r[2] is None and r[1] + self._duration(name, i) <= t + 1e-9:
                    r[2] = t
        self.clock[name] = until
        self._write(namespace, name)

    def _duration(self, name: str, index: int) -> float:
        hours = self.durations[name]
        return hours[min(index, len(hours) - 1)]

    @staticmethod
    def _succeeded(exp: dict) -> bool:
        return any(c["type"] == "Succeeded" and c["status"] == "True"
                   for c in exp.get("status", {}).get("conditions", []))

    def _write(self, namespace: str, name: str) -> None:
        exp = self.objects[(namespace, "experiments", name)]
        wall = datetime.now(timezone.utc)

        def stamp(hours: float | None) -> str | None:
            if hours is None:
                return None
            return (wall - timedelta(hours=self.clock[name] - hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

        succeeded = []
        for trial, start, end in self.runs[name]:
            conditions = [{"type": "Created", "status": "True", "reason": "TrialCreated",
                           "lastTransitionTime": stamp(start), "lastUpdateTime": stamp(start)},
                          {"type": "Running", "status": "False" if end is not None else "True",
                           "reason": "TrialRunning", "lastTransitionTime": stamp(start),
                           "lastUpdateTime": stamp(start)}]
            if end is not None:
                succeeded.append(trial)
                conditions.append({"type": "Succeeded", "status": "True", "reason": "TrialSucceeded",
                                   "lastTransitionTime": stamp(end), "lastUpdateTime": stamp(end)})
            self.objects[(namespace, "trials", trial)] = {
                "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
                "metadata": {"name": trial, "namespace": namespace, "labels": {EXPERIMENT_LABEL: name},
                             "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                                  "name": name, "uid": exp["metadata"].get("uid", "")}]},
                "status": {"startTime": stamp(start), "completionTime": stamp(end), "conditions": conditions}}
        runs = self.runs[name]
        status = exp.setdefault("status", {})
        status.update(trials=len(runs), trialsRunning=len(runs) - len(succeeded), trialsSucceeded=len(succeeded),
                      runningTrialList=[r[0] for r in runs if r[2] is None], succeededTrialList=succeeded)
        if name in self.optimal and self.optimal[name][0] in succeeded:
            trial, value, assignments = self.optimal[name]
            status["currentOptimalTrial"] = {
                "bestTrialName": trial,
                "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
                "observation": {"metrics": [{"name": exp["spec"]["objective"]["objectiveMetricName"],
                                             "latest": str(value), "max": str(value), "min": str(value)}]}}
        done = len(succeeded) >= exp["spec"]["maxTrialCount"]
        reason, message = (("ExperimentMaxTrialsReached", "Experiment has succeeded because max trial count has "
                            "reached") if done else ("ExperimentRunning", "Experiment is running"))
        status["conditions"] = [{"type": "Created", "status": "True", "reason": "ExperimentCreated"},
                                {"type": "Running", "status": "False" if done else "True",
                                 "reason": "ExperimentRunning", "lastUpdateTime": now()}]
        if done:
            status["conditions"].append({"type": "Succeeded", "status": "True", "reason": reason,
                                         "message": message, "lastUpdateTime": now()})
        meta = exp["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)

    def admission(self, old: dict, new: dict) -> str | None:
        """The webhook's answer to an edit of a stored Experiment: None, or why it is refused."""
        spec, before = new.get("spec", {}), old.get("spec", {})
        if spec == before:
            return None
        errors = []
        most, parallel, failed = spec.get("maxTrialCount"), spec.get("parallelTrialCount"), \
            spec.get("maxFailedTrialCount")
        if most is not None and most <= 0:
            errors.append(f"spec.maxTrialCount: Invalid value: {most}: must be greater than 0")
        if failed is not None and most is not None and failed > most:
            errors.append(f"spec.maxFailedTrialCount: Invalid value: {failed}: should be less than or equal to "
                          "spec.maxTrialCount")
        if parallel is not None and most is not None and parallel > most:
            errors.append(f"spec.parallelTrialCount: Invalid value: {parallel}: should be less than or equal to "
                          "spec.maxTrialCount")
        if self._succeeded(old) or any(c["type"] == "Failed" and c["status"] == "True"
                                       for c in old.get("status", {}).get("conditions", [])):
            errors.append(f"spec.resumePolicy: Invalid value: {spec.get('resumePolicy')!r}: Experiment can be "
                          "restarted if it is in succeeded state by reaching max trials and spec.resumePolicy = "
                          "LongRunning or spec.resumePolicy = FromVolume, when experiment is completed")
        if most is not None and most <= old.get("status", {}).get("trials", 0):
            errors.append(f"spec.maxTrialCount: Invalid value: {most}: must be greater than status.trials count")
        editable = ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")
        if {k: v for k, v in spec.items() if k not in editable} != \
                {k: v for k, v in before.items() if k not in editable}:
            errors.append("spec: Forbidden: only spec.parallelTrialCount, spec.maxTrialCount and "
                          "spec.maxFailedTrialCount are editable")
        if not errors:
            return None
        joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        return f'admission webhook "{KATIB_WEBHOOK}" denied the request: {joined}'

    def handler(self):
        fake, base = self, super().handler()

        class Handler(base):
            def _handle(self, method, api_version, ns, plural, name, sub, body):
                if method == "GET" and name is None:
                    selector = parse_qs(urlsplit(self.path).query).get("labelSelector", [None])[0]
                    fake.selectors.append((plural, selector))
                    wanted = dict(part.split("=", 1) for part in selector.split(",")) if selector else {}
                    if plural == "trials" and fake.clock_on == "trials" and wanted.get(EXPERIMENT_LABEL) in fake.clock:
                        fake.tick(ns, wanted[EXPERIMENT_LABEL], fake.step)
                    items = [copy.deepcopy(o) for (n, p, _), o in fake.objects.items() if (n, p) == (ns, plural)
                             and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
                    return self._send(200, {"apiVersion": api_version, "kind": "List", "metadata": {},
                                            "items": items})
                key = (ns, plural, name)
                if method == "PATCH" and plural == "experiments" and sub is None and key in fake.objects \
                        and self.headers.get("Content-Type", "").startswith("application/merge-patch+json"):
                    old = fake.objects[key]
                    refusal = fake.admission(old, merge_patch(old, {k: v for k, v in body.items() if k != "status"}))
                    if refusal:
                        fake.refused.append(refusal)
                        return self._status(400, "BadRequest", refusal)
                if method == "DELETE" and plural == "experiments":
                    for trial in [k for k, o in fake.objects.items() if k[:2] == (ns, "trials")
                                  and (o["metadata"].get("labels") or {}).get(EXPERIMENT_LABEL) == name]:
                        del fake.objects[trial]
                return super()._handle(method, api_version, ns, plural, name, sub, body)

        return Handler


class ReadyOnRead(FakeKubernetesAPI):
    """KServe's controller as a script: an InferenceService is Ready, with its URL, once it is read; the
    namespaces of a full Kubeflow (``kubeflow`` labelled control-plane), ``team-a`` and the serving one
    manifests/ create."""

    def __init__(self):
        super().__init__()
        self.add_namespace("kubeflow", {"control-plane": "kubeflow", "istio-injection": "enabled"})
        self.add_namespace("team-a")
        self.add_namespace(DEFAULT_SERVING_NAMESPACE, {"app.kubernetes.io/part-of": "automl-vision"})

    def on_get(self, plural: str, obj: dict) -> None:
        if plural == "inferenceservices":
            meta = obj["metadata"]
            obj["status"] = {"observedGeneration": meta["generation"],
                             "url": f"http://{meta['name']}.{meta['namespace']}.example.com",
                             "conditions": [{"type": "Ready", "status": "True"}]}


@contextlib.contextmanager
def serve(fake: FakeKubernetesAPI) -> Iterator[str]:
    """Serve ``fake`` on 127.0.0.1 for the duration of the block; yields its URL."""
    with serving(fake) as config:
        yield config.host


def write_kubeconfig(path: Path, host: str, namespace: str | None = None) -> Path:
    """A kubeconfig whose current context is the server at ``host`` (no credentials)."""
    context = {"cluster": "stand-in", "user": "stand-in", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": host}}],
        "users": [{"name": "stand-in", "user": {}}],
        "contexts": [{"name": "stand-in", "context": context}],
    }))
    return path


# --- an object store and a container's environment, for trial pods run on this machine ---------------------

STORE_ACCESS_KEY, STORE_SECRET_KEY = "AKIATRIALSTORE0001", "trial-store-secret-not-shown"


@contextlib.contextmanager
def object_store(*buckets: str) -> Iterator[dict[str, str]]:
    """A real S3 endpoint on 127.0.0.1 (moto's server) with ``buckets`` created; yields the data of the
    storage Secret a cluster would hold for it (the AWS_* names the data layer reads)."""
    import logging

    from minio import Minio
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        client = Minio(f"{host}:{port}", access_key=STORE_ACCESS_KEY, secret_key=STORE_SECRET_KEY, secure=False)
        for bucket in buckets:
            client.make_bucket(bucket)
        yield {"AWS_ACCESS_KEY_ID": STORE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": STORE_SECRET_KEY,
               "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    finally:
        server.stop()


def container_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``envFrom`` Secrets whole, then ``env`` entries
    (values, or ``secretKeyRef`` looked up in ``secrets``: Secret name -> its data; an optional reference to
    a missing Secret or key is left out)."""
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        out.update(secrets[source["secretRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            out[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None and not ref.get("optional"):
            raise KeyError(f"Secret {ref['name']} has no key {ref['key']}: the pod would not start")
        if value is not None:
            out[entry["name"]] = value
    return out
