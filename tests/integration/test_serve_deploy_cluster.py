"""deploy_model with the real ``kubernetes`` client against a local HTTP server on 127.0.0.1 that speaks
the Kubernetes custom-object endpoints (tests/kube_api_fake.py), and ``automl-vision deploy`` run as a
command. A scripted stand-in for KServe's controller marks an InferenceService Ready after a few reads;
the namespaces exist with the labels each test gives them (KServe skips those labelled control-plane).
There is no KServe controller, webhook, storage initializer or predictor pod here: whether the image
starts, downloads the package and answers is what only a cluster shows."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kserve_crd import check_inference_service
from kube_api_fake import FakeKubernetesAPI, serving
from kubernetes import client as k8s

from automl_vision.errors import ConfigError
from automl_vision.serving.deploy import (
    DEFAULT_SERVING_NAMESPACE,
    DeployError,
    deploy_model,
    inference_service_manifest,
)

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/team-a/inferenceservices"
NAMESPACE_PATH = "/api/v1/namespaces/team-a"
URI = "s3://mlpipeline/v2/artifacts/automl-vision/run-1/package/model"


class FakeKServe(FakeKubernetesAPI):
    """The API server, and KServe's controller as a script: an InferenceService becomes Ready for its
    current generation on its ``ready_after``-th read at that generation (never when None)."""

    def __init__(self, ready_after: int | None = 1):
        super().__init__()
        self.ready_after = ready_after
        self.reads: dict[tuple[str, int], int] = {}
        for namespace in ("team-a", "team-b", DEFAULT_SERVING_NAMESPACE):
            self.add_namespace(namespace)

    def on_get(self, plural: str, obj: dict) -> None:
        if plural != "inferenceservices":
            return
        meta = obj["metadata"]
        key = (meta["name"], meta["generation"])
        n = self.reads[key] = self.reads.get(key, 0) + 1
        status = obj.setdefault("status", {})
        if self.ready_after is not None and n >= self.ready_after:
            status.update(observedGeneration=meta["generation"],
                          url=f"http://{meta['name']}.{meta['namespace']}.example.com",
                          conditions=[{"type": "PredictorReady", "status": "True"},
                                      {"type": "Ready", "status": "True"}])
        elif status.get("observedGeneration") != meta["generation"] or not status.get("conditions"):
            # Still rolling out the new spec: the old Ready=True, if any, stays (it describes the old generation).
            status.setdefault("conditions", [{"type": "PredictorReady", "status": "False", "reason": "RevisionMissing",
                                              "message": "Configuration is waiting for a Revision to become ready"},
                                             {"type": "Ready", "status": "False", "reason": "RevisionMissing"}])


@pytest.fixture
def fake_cluster():
    fake = FakeKServe()
    with serving(fake) as config:
        yield fake, config


def stored(fake, name="fridge", namespace="team-a"):
    return fake.objects[(namespace, "inferenceservices", name)]


def test_creates_the_inference_service(fake_cluster):
    fake, config = fake_cluster
    result = deploy_model(URI, "fridge", "team-a", service_account="automl-vision-serving", client=config)
    assert (result["name"], result["namespace"], result["action"]) == ("fridge", "team-a", "created")
    assert result["url"] is None  # not known until the controller sets status.url
    assert result["manifest"] == inference_service_manifest(URI, "fridge", "team-a",
                                                            service_account="automl-vision-serving")
    assert check_inference_service(result["manifest"]) == []
    assert [(m, p) for m, p in fake.requests] == [("GET", NAMESPACE_PATH), ("GET", f"{ISVC_PATH}/fridge"),
                                                  ("POST", ISVC_PATH)]
    obj = stored(fake)
    assert obj["spec"] == result["manifest"]["spec"]
    assert obj["metadata"]["labels"] == result["manifest"]["metadata"]["labels"]


def test_the_same_deploy_again_changes_nothing(fake_cluster):
    fake, config = fake_cluster
    deploy_model(URI, "fridge", "team-a", client=config)
    again = deploy_model(URI, "fridge", "team-a", client=config)
    assert again["action"] == "unchanged"
    assert [m for m, _ in fake.requests] == ["GET", "GET", "POST", "GET", "GET"]
    assert stored(fake)["metadata"]["generation"] == 1


def test_a_new_model_updates_the_existing_endpoint(fake_cluster):
    fake, config = fake_cluster
    deploy_model(URI, "fridge", "team-a", node_selector={"pool": "cpu"}, client=config)
    stored(fake)["metadata"].setdefault("annotations", {})["team/owner"] = "vision"  # someone else's annotation
    stored(fake)["status"] = {"url": "http://fridge.team-a.example.com", "observedGeneration": 1,
                              "conditions": [{"type": "Ready", "status": "True"}]}
    new_uri = "s3://mlpipeline/v2/artifacts/automl-vision/run-2/package/model"
    result = deploy_model(new_uri, "fridge", "team-a", settings={"max_batch_size": 4}, memory_limit="6Gi",
                          client=config)
    assert result["action"] == "updated"
    assert result["url"] == "http://fridge.team-a.example.com"  # the endpoint stays; the model behind it changes
    method, path, content_type, body = fake.bodies[-1]
    assert (method, path, content_type) == ("PATCH", f"{ISVC_PATH}/fridge", "application/merge-patch+json")
    assert body["spec"]["predictor"]["nodeSelector"] is None  # no longer set: removed, not left behind
    obj = stored(fake)
    assert obj["spec"] == result["manifest"]["spec"]
    assert obj["metadata"]["annotations"]["team/owner"] == "vision"
    assert obj["metadata"]["generation"] == 2
    env = {e["name"]: e["value"] for e in obj["spec"]["predictor"]["containers"][0]["env"]}
    assert env == {"STORAGE_URI": new_uri, "AUTOML_VISION_SETTINGS": '{"max_batch_size": 4}'}
    assert [m for m, _ in fake.requests].count("POST") == 1


class Racing(FakeKServe):
    """Another retry of the step creates the object between our read and our create."""

    def on_request(self, method, namespace, plural, name):
        if method == "POST" and (namespace, plural, "fridge") not in self.objects:
            other = inference_service_manifest("s3://m/older", "fridge", namespace)
            other["metadata"].update(generation=1, resourceVersion="1")
            self.objects[(namespace, plural, "fridge")] = other


def test_a_create_that_loses_a_race_updates_instead():
    fake = Racing()
    with serving(fake) as config:
        result = deploy_model(URI, "fridge", "team-a", client=config)
    assert result["action"] == "updated"
    assert [m for m, _ in fake.requests] == ["GET", "GET", "POST", "GET", "PATCH"]
    assert stored(fake)["spec"] == result["manifest"]["spec"]


@pytest.mark.parametrize("method, code, reason, server_message, error, message", [
    ("POST", 403, "Forbidden",
     'inferenceservices.serving.kserve.io is forbidden: User "system:serviceaccount:team-a:default-editor" cannot '
     'create resource "inferenceservices" in API group "serving.kserve.io" in the namespace "team-a"',
     ConfigError, 'creating InferenceService team-a/fridge: forbidden (403): inferenceservices.serving.kserve.io is '
                  'forbidden: User "system:serviceaccount:team-a:default-editor" cannot create resource'),
    ("GET", 403, "Forbidden", "cannot get resource", ConfigError,
     "reading InferenceService team-a/fridge: forbidden (403): cannot get resource; the identity needs get, create "
     "and patch on inferenceservices (group serving.kserve.io) in that namespace"),
    ("GET", 401, "Unauthorized", "Unauthorized", ConfigError, "the API server refused the credentials (401"),
    ("POST", 404, "NotFound", "the server could not find the requested resource", ConfigError,
     "has no inferenceservices.serving.kserve.io/v1beta1 in namespace team-a (404: the server could not find the "
     "requested resource); is KServe installed"),
    ("POST", 400, "BadRequest", 'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the '
     "request: exactly one of predictor.containers", ConfigError,
     "the API server refused the InferenceService (400): admission webhook"),
    ("POST", 500, "InternalError", "etcdserver: request timed out", DeployError,
     "creating InferenceService team-a/fridge: the API server answered 500"),
])
def test_refusals_are_clear_errors(fake_cluster, method, code, reason, server_message, error, message):
    fake, config = fake_cluster
    fake.fail[(method, "inferenceservices")] = (code, reason, server_message)
    with pytest.raises(error) as e:
        deploy_model(URI, "fridge", "team-a", client=config)
    assert message in str(e.value)


def test_an_update_refused_is_a_clear_error(fake_cluster):
    fake, config = fake_cluster
    deploy_model(URI, "fridge", "team-a", client=config)
    fake.fail[("PATCH", "inferenceservices")] = (403, "Forbidden", "cannot patch resource")
    with pytest.raises(ConfigError) as e:
        deploy_model("s3://m/other", "fridge", "team-a", client=config)
    assert "updating InferenceService team-a/fridge: forbidden (403): cannot patch resource" in str(e.value)


def test_no_api_server_is_a_clear_error():
    config = k8s.Configuration()
    with serving(FakeKServe()) as gone:
        config.host = gone.host
    config.retries = 0
    with pytest.raises(DeployError) as e:
        deploy_model(URI, "fridge", "team-a", client=config)
    assert "reading Namespace team-a: cannot reach the Kubernetes API server" in str(e.value)


def test_wait_until_ready(fake_cluster, caplog):
    fake, config = fake_cluster
    fake.ready_after = 3
    with caplog.at_level(logging.INFO, logger="automl_vision.serving.deploy"):
        result = deploy_model(URI, "fridge", "team-a", wait=True, timeout_s=30, poll_interval_s=0.01, client=config)
    assert result["url"] == "http://fridge.team-a.example.com"
    assert fake.reads[("fridge", 1)] == 3
    lines = [r.getMessage() for r in caplog.records]
    assert f"InferenceService team-a/fridge created (model {URI})" in lines
    assert ("InferenceService team-a/fridge not ready (0 s): Ready False (RevisionMissing); PredictorReady False "
            "(RevisionMissing: Configuration is waiting for a Revision to become ready)") in lines
    assert any(line.startswith("InferenceService team-a/fridge ready after") for line in lines)


def test_wait_after_an_update_ignores_the_old_ready(fake_cluster):
    """Ready=True of the previous generation does not count: the new spec must be observed."""
    fake, config = fake_cluster
    deploy_model(URI, "fridge", "team-a", wait=True, poll_interval_s=0.01, client=config)
    fake.ready_after = 4
    result = deploy_model("s3://m/next", "fridge", "team-a", wait=True, timeout_s=30, poll_interval_s=0.01,
                          client=config)
    assert result["action"] == "updated"
    assert fake.reads[("fridge", 2)] == 4


def test_wait_times_out_with_the_reason(fake_cluster):
    fake, config = fake_cluster
    fake.ready_after = None
    with pytest.raises(DeployError) as e:
        deploy_model(URI, "fridge", "team-a", wait=True, timeout_s=0.2, poll_interval_s=0.05, client=config)
    assert ("InferenceService team-a/fridge not ready after 0.2 s: Ready False (RevisionMissing); PredictorReady "
            "False (RevisionMissing: Configuration is waiting for a Revision to become ready); see kubectl describe "
            "inferenceservice -n team-a fridge") in str(e.value)
    assert stored(fake)["spec"]  # created, left for inspection


def write_kubeconfig(path: Path, host: str, namespace: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": host}}],
        "users": [{"name": "lab", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab", "namespace": namespace}}]}))
    return path


def test_credentials_from_the_kubeconfig_and_the_serving_namespace_by_default(fake_cluster, tmp_path, monkeypatch):
    """Not the context's namespace: where the pipeline runs may be one KServe skips (kubeflow)."""
    fake, config = fake_cluster
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", config.host, "team-b")))
    result = deploy_model(URI, "fridge", client=None)
    assert (result["namespace"], result["action"]) == ("automl-vision-serving", "created")
    assert ("automl-vision-serving", "inferenceservices", "fridge") in fake.objects
    assert not any(ns == "team-b" for ns, _, _ in fake.objects)


def test_a_control_plane_namespace_is_refused_before_anything_is_sent(fake_cluster):
    fake, config = fake_cluster
    fake.add_namespace("kubeflow", {"control-plane": "kubeflow", "istio-injection": "enabled"})
    with pytest.raises(ConfigError) as e:
        deploy_model(URI, "fridge", "kubeflow", client=config)
    assert ("namespace 'kubeflow' is labelled control-plane=kubeflow: KServe's pod webhook skips such namespaces, "
            "so its storage initializer would never download the model") in str(e.value)
    assert "such as 'automl-vision-serving'" in str(e.value)
    assert fake.requests == [("GET", "/api/v1/namespaces/kubeflow")] and fake.objects == {}


def test_a_missing_namespace_is_a_clear_error(fake_cluster):
    fake, config = fake_cluster
    with pytest.raises(ConfigError) as e:
        deploy_model(URI, "fridge", "team-z", client=config)
    assert "namespace 'team-z' does not exist: kubectl apply -k manifests/ creates 'automl-vision-serving'" \
        in str(e.value)
    assert fake.objects == {}


def test_not_allowed_to_read_namespaces_warns_and_deploys(fake_cluster, caplog):
    fake, config = fake_cluster
    fake.fail[("GET", "namespaces")] = (403, "Forbidden", 'namespaces "team-a" is forbidden: User '
                                        '"system:serviceaccount:kubeflow:pipeline-runner" cannot get resource')
    with caplog.at_level(logging.WARNING, logger="automl_vision.serving.deploy"):
        result = deploy_model(URI, "fridge", "team-a", client=config)
    assert result["action"] == "created"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("reading Namespace team-a: forbidden (403: namespaces \"team-a\" is "
                                           "forbidden")
    assert "not checking its 'control-plane' label" in warning.getMessage()


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as e:
        deploy_model(URI, "fridge", "team-a")
    assert "no Kubernetes credentials: not running in a pod, and no usable kubeconfig" in str(e.value)
    assert "--dry-run" in str(e.value)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_dry_run_prints_the_manifest(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"serving": {"max_batch_size": 4}, "model_settings": {"box_score_thresh": 0.3}}')
    done = run_cli("deploy", "--model-uri", URI, "--name", "bccd-detector", "--namespace", "team-a", "--gpu", "1",
                   "--service-account", "automl-vision-serving", "--settings", str(settings), "--dry-run",
                   env={"KUBECONFIG": str(tmp_path / "absent")})
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(done.stdout)
    assert manifest == inference_service_manifest(URI, "bccd-detector", "team-a", gpu=1,
                                                  service_account="automl-vision-serving",
                                                  settings={"max_batch_size": 4, "box_score_thresh": 0.3})
    assert check_inference_service(manifest) == []
    assert "no --service-account" not in done.stderr


def test_cli_says_when_s3_has_no_service_account(tmp_path):
    done = run_cli("deploy", "--model-uri", "s3://models/fridge/best_model", "--name", "fridge", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "note: no --service-account: KServe's storage initializer downloads s3:// without credentials" in done.stderr
    assert "serviceAccountName" not in done.stdout
    # what a deploy without --namespace would send, not a manifest kubectl would put in the context's namespace
    assert yaml.safe_load(done.stdout)["metadata"]["namespace"] == DEFAULT_SERVING_NAMESPACE


@pytest.mark.parametrize("args, message", [
    (["--model-uri", "runs/demo/best_model", "--name", "fridge"],
     "model_uri 'runs/demo/best_model': unsupported scheme"),
    (["--model-uri", URI, "--name", "Fridge"], "name 'Fridge': not a DNS-1035 label"),
    (["--model-uri", URI, "--name", "fridge"], "no Kubernetes credentials"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    done = run_cli("deploy", *args, env={"KUBECONFIG": str(tmp_path / "absent"), "KUBERNETES_SERVICE_HOST": ""})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_cli_deploys_and_waits(fake_cluster, tmp_path):
    fake, config = fake_cluster
    kubeconfig = write_kubeconfig(tmp_path / "config", config.host, "team-a")
    done = run_cli("deploy", "--model-uri", URI, "--name", "fridge", "--wait", "--timeout", "60",
                   env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("InferenceService automl-vision-serving/fridge created: "
                                   "http://fridge.automl-vision-serving.example.com")
    assert stored(fake, namespace="automl-vision-serving")["spec"] == \
        inference_service_manifest(URI, "fridge", "automl-vision-serving")["spec"]


def test_cli_refuses_a_control_plane_namespace(fake_cluster, tmp_path):
    fake, config = fake_cluster
    fake.add_namespace("kubeflow", {"control-plane": "kubeflow"})
    kubeconfig = write_kubeconfig(tmp_path / "config", config.host, "kubeflow")
    done = run_cli("deploy", "--model-uri", URI, "--name", "fridge", "--namespace", "kubeflow",
                   env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""})
    assert done.returncode == 2, done.stderr
    assert "namespace 'kubeflow' is labelled control-plane=kubeflow" in done.stderr
    assert fake.objects == {}
