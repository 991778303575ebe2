"""Stand-ins for a cluster in tests: Katib's controller scripted over the local Kubernetes API server
of ``kube_api_fake`` (which the real Katib SDK client and the ``kubernetes`` client talk to), and a
kubeconfig pointing at it for code that builds its own client the way a pod or a laptop does
(``KatibClient()`` and ``deploy_model`` read ``$KUBECONFIG``). Imported by the tests (``tests/`` is
on ``sys.path`` through its conftest)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml
from kube_api_fake import FakeKubernetesAPI, now, serving

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
