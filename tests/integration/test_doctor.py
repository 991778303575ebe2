"""``automl-vision doctor`` against a stand-in cluster: the real ``kubernetes`` client reads a local
stand-in of the Kubernetes API (tests/kube_cluster_fake.py) through a kubeconfig, ``requests`` asks a
stand-in Pipelines endpoint behind a bearer token, and ``minio`` talks to a real S3 server on 127.0.0.1
(moto). A cluster in a good state passes every check; each broken state makes its own check report a
PROBLEM with its fix, and the command exit 2.

What this cannot show: RBAC as a real API server enforces it (refusals are scripted), Katib, KServe or
the NVIDIA driver actually working (only what the cluster's objects say about them)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kube_cluster_fake import (FakeCluster, FakePipelines, config_map, crd, namespace, node, secret, serve_http,
                               service_account)
from kube_testserver import write_kubeconfig

from automl_vision import doctor
from automl_vision.cli import main
from automl_vision.doctor import OK, PROBLEM, WARN, Finding, tolerates, untolerated_taints
from automl_vision.pipeline.pipeline import OLDEST_KFP_BACKEND
from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
NS, SERVING = "kubeflow", DEFAULT_SERVING_NAMESPACE
TOKEN = "kfp-token-7f3a"
BUCKET = "automl-trials"
ACCESS_KEY, SECRET_KEY = "AKIADOCTORTEST12345", "doctor-secret-key-never-printed"
STORAGE = "automl-vision-storage"
GPU_LABELS = {"kubernetes.azure.com/accelerator": "nvidia", "nvidia.com/cuda.driver-version.major": "570",
              "nvidia.com/cuda.driver-version.full": "570.172.08", "nvidia.com/cuda.driver.major": "570"}
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
KATIB_DEFAULT_EARLY_STOPPING = {"algorithmName": "medianstop",
                                "image": "ghcr.io/kubeflow/katib/earlystopping-medianstop:v0.19.0"}
OUR_EARLY_STOPPING = [{"algorithmName": name, "image": "registry.example.com/ml/automl-vision-earlystopping:0.1.0"}
                      for name in ("bandit", "truncation-selection", "asha", "hyperband")]


def katib_config(early_stoppings) -> dict:
    doc = {"apiVersion": "config.kubeflow.org/v1beta1", "kind": "KatibConfig",
           "init": {"controller": {"webhookPort": 8443, "trialResources": ["Job.v1.batch"]}},
           "runtime": {"suggestions": [{"algorithmName": "random",
                                        "image": "ghcr.io/kubeflow/katib/suggestion-hyperopt:v0.19.0"}],
                       "earlyStoppings": early_stoppings}}
    return config_map("katib-config", NS, {"katib-config.yaml": yaml.safe_dump(doc, sort_keys=False)})


def storage_values(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": endpoint}


def serving_secret(ns: str, endpoint: str) -> dict:
    """The Secret as manifests/ generate it: the keys, and the endpoint as KServe's annotations."""
    return secret(STORAGE, ns, storage_values(endpoint), {"serving.kserve.io/s3-endpoint": endpoint.split("://")[1],
                                                          "serving.kserve.io/s3-usehttps": "0"})


def good_state(fake: FakeCluster, s3_endpoint: str) -> None:
    """A cluster a first run works on: a standalone Kubeflow Pipelines in kubeflow, Katib with our
    early stopping, an AKS-style tainted GPU pool labelled by GPU feature discovery, the Secret, KServe."""
    fake.core.clear()
    fake.objects.clear()
    fake.fail.clear()
    fake.put(node("aks-system-0"))
    fake.put(node("aks-gpunc-0", labels=GPU_LABELS, taints=[GPU_TAINT],
                  allocatable={"nvidia.com/gpu": "1", "cpu": "23660m", "memory": "214400480Ki"}))
    fake.put(namespace(NS, {"katib.kubeflow.org/metrics-collector-injection": "enabled"}))
    fake.put(namespace(SERVING))
    for plural, kind in (("experiments", "Experiment"), ("trials", "Trial"), ("suggestions", "Suggestion")):
        fake.put(crd("kubeflow.org", plural, kind))
    fake.put(crd("serving.kserve.io", "inferenceservices", "InferenceService"))
    fake.put(katib_config([KATIB_DEFAULT_EARLY_STOPPING, *OUR_EARLY_STOPPING]))
    for ns in (NS, SERVING):
        fake.put(serving_secret(ns, s3_endpoint))
    fake.put(service_account("automl-vision-serving", SERVING, secrets=[STORAGE]))


@pytest.fixture(scope="module")
def s3_endpoint():
    from minio import Minio
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    Minio(f"{host}:{port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False).make_bucket(BUCKET)
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def servers(s3_endpoint):
    """One stand-in cluster and one Pipelines endpoint for the module; each test starts from the good state."""
    cluster, pipelines = FakeCluster(), FakePipelines(tag_name=OLDEST_KFP_BACKEND, token=TOKEN)
    with serve_http(cluster.handler()) as host, serve_http(pipelines.handler()) as kfp_url:
        yield cluster, host, pipelines, kfp_url


@pytest.fixture
def cluster(servers, s3_endpoint, tmp_path, monkeypatch):
    fake, host, pipelines, kfp_url = servers
    good_state(fake, s3_endpoint)
    pipelines.tag_name, pipelines.multi_user, pipelines.token = OLDEST_KFP_BACKEND, False, TOKEN
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", host, namespace=NS)))
    for name in ("KUBERNETES_SERVICE_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN",
                 "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = tmp_path / "cluster.yaml"
    settings.write_text(yaml.safe_dump({"registry": "registry.example.com/ml",
                                        "trial_outputs": f"s3://{BUCKET}/trials"}))
    return {"fake": fake, "pipelines": pipelines, "kfp_url": kfp_url, "settings": settings, "s3": s3_endpoint,
            "token_file": tmp_path / "token"}


def doctor_json(cluster, capsys, *extra: str, token: bool = True) -> tuple[int, list[Finding]]:
    """Run the command in this process, with the token file (as run --kubeflow takes it) unless not ``token``."""
    argv = ["doctor", "--json", "--kubeflow", cluster["kfp_url"], "--cluster-settings", str(cluster["settings"]),
            "--timeout", "5", *(["--token-file", str(cluster["token_file"])] if token else []), *extra]
    code = main(argv)
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == code
    return code, [Finding(**f) for f in out["findings"]]


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    found = [f for f in findings if f.check == check]
    assert found, f"no finding of {check}: {findings}"
    return found


def only_problem(findings: list[Finding], check: str) -> Finding:
    """The one PROBLEM, which must be of ``check``; every other finding OK."""
    problems = [f for f in findings if f.status == PROBLEM]
    assert [f.check for f in problems] == [check], findings
    assert all(f.status == OK for f in findings if f.status != PROBLEM), findings
    assert problems[0].fix, problems[0]
    return problems[0]


# --- the good state --------------------------------------------------------------------------------

def test_a_cluster_in_a_good_state_passes_every_check(cluster, capsys):
    code, findings = doctor_json(cluster, capsys)
    assert code == 0
    assert [f.status for f in findings] == [OK] * len(findings), findings
    assert [f.check for f in findings] == [
        "pipelines", "kubernetes", "katib", "katib-early-stopping", "katib-metrics-label", "gpu-nodes", "gpu-driver",
        "object-store", "kserve", "serving-namespace", "serving-account"]
    text = {f.check: f.message for f in findings}
    assert text["pipelines"] == (f"Pipelines API at {cluster['kfp_url']} answers with the token from --token-file "
                                 f"{cluster['token_file']}: release {OLDEST_KFP_BACKEND}, single-user")
    assert "1 of 1 GPU node(s) take a GPU step" in text["gpu-nodes"] and "aks-gpunc-0" in text["gpu-nodes"]
    assert "570.172.08" in text["gpu-driver"]
    assert f"bucket(s) {BUCKET} (trial_outputs) exist" in text["object-store"]
    assert "bandit" in text["katib-early-stopping"] and "truncation-selection" in text["katib-early-stopping"]
    assert SECRET_KEY not in json.dumps([f.to_dict() for f in findings])
    # the token went to the Pipelines API as a bearer token
    assert cluster["pipelines"].requests[-1] == ("/apis/v2beta1/healthz", f"Bearer {TOKEN}")


def test_the_text_report_has_one_line_per_finding_and_a_summary(cluster, capsys):
    code = main(["doctor", "--kubeflow", cluster["kfp_url"], "--token-file", str(cluster["token_file"]),
                 "--cluster-settings", str(cluster["settings"])])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 12 and all(line.startswith("OK ") for line in lines[:-1]), lines
    assert lines[-1] == "11 OK, 0 WARN, 0 PROBLEM: a run can start"


def test_doctor_as_a_command(cluster):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KF_PIPELINES_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "automl_vision", "doctor", "--kubeflow", cluster["kfp_url"],
                           "--cluster-settings", str(cluster["settings"])],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].endswith("0 PROBLEM: a run can start"), done.stdout

    cluster["fake"].remove("ServiceAccount", "automl-vision-serving", SERVING)
    done = subprocess.run([sys.executable, "-m", "automl_vision", "doctor", "--kubeflow", cluster["kfp_url"],
                           "--cluster-settings", str(cluster["settings"])],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(r"^PROBLEM\s+serving-account\s+ServiceAccount automl-vision-serving/automl-vision-serving does "
                     r"not exist", done.stdout, re.M), done.stdout
    assert f"fix: kubectl create serviceaccount automl-vision-serving -n {SERVING}" in done.stdout


# --- the Pipelines API -----------------------------------------------------------------------------

def test_no_token_meets_the_login_redirect(cluster, capsys):
    code, findings = doctor_json(cluster, capsys, token=False)
    problem = only_problem(findings, "pipelines")
    assert code == 2
    assert problem.message == (f"{cluster['kfp_url']}/apis/v2beta1/healthz redirects (302) without a token to "
                               "/oauth2/start?rd=/apis/v2beta1/healthz: a login page in front of the API")
    assert problem.fix.startswith("give a token: set KF_PIPELINES_TOKEN") and "--token-file FILE" in problem.fix
    assert cluster["pipelines"].requests[-1][1] is None


def test_a_wrong_token_is_refused(cluster, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "not-the-token")
    code, findings = doctor_json(cluster, capsys, token=False)
    problem = only_problem(findings, "pipelines")
    assert code == 2
    assert problem.message == ("the Pipelines API refused the request with the token from $KF_PIPELINES_TOKEN "
                               "(403: RBAC: access denied)")
    assert "create token default-editor" in problem.fix
    assert cluster["pipelines"].requests[-1][1] == "Bearer not-the-token"


def test_the_token_file_kfp_reads_in_a_pod_is_used(cluster, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(cluster["token_file"]))
    code, findings = doctor_json(cluster, capsys, token=False)
    assert code == 0, findings
    assert cluster["pipelines"].requests[-1][1] == f"Bearer {TOKEN}"
    assert f"with the token from the ServiceAccount token {cluster['token_file']}" in findings[0].message


def test_an_older_pipelines_release_is_a_problem(cluster, capsys):
    cluster["pipelines"].tag_name = "2.3.0"
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "pipelines")
    assert code == 2
    assert f"release 2.3.0; the pipeline needs {OLDEST_KFP_BACKEND} or later" in problem.message
    assert "cluster-scoped-resources?ref=VERSION" in problem.fix and "env/platform-agnostic" in problem.fix


def test_an_unknown_release_is_a_warning(cluster, capsys):
    cluster["pipelines"].tag_name = "unknown"  # an image built without TAG_NAME
    code, findings = doctor_json(cluster, capsys)
    (finding,) = by_check(findings, "pipelines")
    assert code == 0 and finding.status == WARN and "tag_name 'unknown'" in finding.message


def test_multi_user_pipelines_want_a_profile_namespace(cluster, capsys):
    cluster["pipelines"].multi_user = True
    code, findings = doctor_json(cluster, capsys)
    statuses = [(f.status, f.message) for f in by_check(findings, "pipelines")]
    assert code == 0 and statuses[0][0] == OK and "multi-user" in statuses[0][1]
    assert statuses[1][0] == WARN and "profile namespaces" in statuses[1][1]


def test_an_endpoint_that_does_not_answer(cluster, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code = main(["doctor", "--json", "--kubeflow", closed, "--cluster-settings", str(cluster["settings"]),
                 "--timeout", "2"])
    findings = [Finding(**f) for f in json.loads(capsys.readouterr().out)["findings"]]
    problem = only_problem(findings, "pipelines")
    assert code == 2 and problem.message.startswith(f"cannot reach the Pipelines API at {closed}/apis/v2beta1/healthz")
    assert "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80" in problem.fix


def test_a_url_that_is_not_the_pipelines_api(cluster, capsys, s3_endpoint):
    code = main(["doctor", "--json", "--kubeflow", f"{cluster['kfp_url']}/elsewhere", "--token-file",
                 str(cluster["token_file"]), "--cluster-settings", str(cluster["settings"])])
    findings = [Finding(**f) for f in json.loads(capsys.readouterr().out)["findings"]]
    problem = only_problem(findings, "pipelines")
    assert code == 2 and "answered 404" in problem.message and "/pipeline" in problem.fix


def test_without_an_endpoint_the_pipelines_api_is_not_checked(cluster, capsys):
    code = main(["doctor", "--json", "--cluster-settings", str(cluster["settings"])])
    findings = [Finding(**f) for f in json.loads(capsys.readouterr().out)["findings"]]
    (finding,) = by_check(findings, "pipelines")
    assert code == 0 and finding.status == WARN and "--kubeflow URL" in finding.fix


# --- Kubernetes credentials ------------------------------------------------------------------------

def test_no_kubeconfig(cluster, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    code, findings = doctor_json(cluster, capsys, "--namespace", NS)
    problem = only_problem(findings, "kubernetes")
    assert code == 2 and "no Kubernetes credentials" in problem.message and "KUBECONFIG" in problem.fix


def test_an_api_server_that_does_not_answer(cluster, capsys, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "gone", f"http://127.0.0.1:{port}")))
    code, findings = doctor_json(cluster, capsys, "--namespace", NS)
    problem = only_problem(findings, "kubernetes")
    assert code == 2 and f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}" in problem.message
    assert [f.check for f in findings] == ["pipelines", "kubernetes"]  # nothing else is asked of it


# --- Katib -----------------------------------------------------------------------------------------

def test_a_missing_katib_crd(cluster, capsys):
    cluster["fake"].remove("CustomResourceDefinition", "trials.kubeflow.org")
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib")
    assert code == 2 and problem.message == "missing: trials.kubeflow.org"
    assert "katib-standalone?ref=v0.19.0" in problem.fix


def test_a_katib_crd_not_established(cluster, capsys):
    cluster["fake"].put(crd("kubeflow.org", "suggestions", "Suggestion", established=False))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib")
    assert code == 2 and "suggestions.kubeflow.org is not Established (Installing" in problem.message


def test_crds_a_user_may_not_read_are_seen_through_the_namespace(cluster, capsys):
    fake = cluster["fake"]
    fake.fail[("GET", "customresourcedefinitions")] = (403, "Forbidden", 'customresourcedefinitions is forbidden: '
                                                       'User "alice" cannot get resource "customresourcedefinitions"')
    code, findings = doctor_json(cluster, capsys)
    (katib,) = by_check(findings, "katib")
    assert code == 0 and katib.status == OK and f"seen through namespace {NS}" in katib.message
    assert ("GET", f"/apis/kubeflow.org/v1beta1/namespaces/{NS}/experiments") in fake.requests


def test_our_early_stopping_not_registered(cluster, capsys):
    cluster["fake"].put(katib_config([KATIB_DEFAULT_EARLY_STOPPING]))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib-early-stopping")
    assert code == 2 and "not registered: bandit, truncation-selection, asha, hyperband" in problem.message
    assert problem.fix.startswith(f"automl-vision katib-config --from-cluster --katib-namespace {NS} --image ")
    assert "| kubectl replace -f -" in problem.fix
    assert ("{algorithmName: bandit, image: ...} and {algorithmName: truncation-selection, image: ...} and "
            "{algorithmName: asha, image: ...} and {algorithmName: hyperband, image: ...}") in problem.fix


def test_an_early_stopping_entry_without_an_image(cluster, capsys):
    cluster["fake"].put(katib_config([KATIB_DEFAULT_EARLY_STOPPING, OUR_EARLY_STOPPING[0],
                                      {"algorithmName": "truncation-selection", "image": " "}]))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib-early-stopping")
    assert code == 2 and "registered without an image: truncation-selection" in problem.message


def test_no_katib_config(cluster, capsys):
    cluster["fake"].remove("ConfigMap", "katib-config", NS)
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib-early-stopping")
    assert code == 2 and problem.message.startswith(f"no ConfigMap {NS}/katib-config")


def test_the_metrics_collector_label_is_missing(cluster, capsys):
    cluster["fake"].put(namespace(NS))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "katib-metrics-label")
    assert code == 2 and "it is missing" in problem.message
    assert problem.fix == (f"kubectl label namespace {NS} katib.kubeflow.org/metrics-collector-injection=enabled "
                           "--overwrite")


def test_the_namespace_does_not_exist(cluster, capsys):
    code, findings = doctor_json(cluster, capsys, "--namespace", "team-vision")
    problems = {f.check: f for f in findings if f.status == PROBLEM}
    assert code == 2
    assert problems["katib-metrics-label"].message == "namespace team-vision does not exist"
    assert problems["object-store"].message.startswith("Secret team-vision/automl-vision-storage does not exist")


# --- GPU nodes -------------------------------------------------------------------------------------

def test_no_gpu_nodes(cluster, capsys):
    cluster["fake"].remove("Node", "aks-gpunc-0")
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-nodes")
    assert code == 2 and "no node has allocatable nvidia.com/gpu (1 node(s) in the cluster)" in problem.message
    assert "gpu: null" in problem.fix and "az aks nodepool add" in problem.fix
    assert not [f for f in findings if f.check == "gpu-driver"]


def test_a_taint_the_pool_does_not_tolerate(cluster, capsys):
    gpu = cluster["fake"].get("Node", "aks-gpunc-0")
    gpu["spec"]["taints"].append({"key": "team", "value": "vision", "effect": "NoExecute"})
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-nodes")
    assert code == 2 and "aks-gpunc-0: taint team=vision:NoExecute not tolerated" in problem.message
    assert "add {key: team, operator: Equal, value: vision, effect: NoExecute} to gpu.tolerations" in problem.fix


def test_a_prefer_no_schedule_taint_does_not_keep_steps_off(cluster, capsys):
    gpu = cluster["fake"].get("Node", "aks-gpunc-0")
    gpu["spec"]["taints"].append({"key": "spot", "value": "true", "effect": "PreferNoSchedule"})
    code, findings = doctor_json(cluster, capsys)
    assert code == 0, findings


def test_gpu_nodes_without_the_pools_label(cluster, capsys):
    gpu = cluster["fake"].get("Node", "aks-gpunc-0")
    gpu["metadata"]["labels"]["kubernetes.azure.com/accelerator"] = "amd"
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-nodes")
    assert code == 2
    assert "label kubernetes.azure.com/accelerator=nvidia of gpu.node_selector missing (it has 'amd')" \
        in problem.message
    assert "kubectl label node aks-gpunc-0 kubernetes.azure.com/accelerator=nvidia --overwrite" in problem.fix


def test_gpu_nodes_too_small_for_the_requests(cluster, capsys):
    gpu = cluster["fake"].get("Node", "aks-gpunc-0")
    gpu["status"]["allocatable"].update(cpu="2900m", memory="14Gi")
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-nodes")
    assert code == 2
    assert "allocatable cpu 2.9 below the request 3" in problem.message
    assert "allocatable memory 14.0Gi below the request 16Gi" in problem.message
    assert "set gpu.cpu to at most 2.9" in problem.fix and "set gpu.memory to at most 14.0Gi" in problem.fix


def test_a_cordoned_or_not_ready_gpu_node(cluster, capsys):
    fake = cluster["fake"]
    fake.put(node("aks-gpunc-1", labels=GPU_LABELS, taints=[GPU_TAINT], ready=False,
                  allocatable={"nvidia.com/gpu": "1", "cpu": "23660m", "memory": "214400480Ki"}))
    fake.get("Node", "aks-gpunc-0")["spec"]["unschedulable"] = True
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-nodes")
    assert code == 2 and "aks-gpunc-0: cordoned" in problem.message
    assert "aks-gpunc-1: not Ready (Ready=False)" in problem.message
    assert "kubectl uncordon aks-gpunc-0" in problem.fix


def test_nodes_a_user_may_not_list(cluster, capsys):
    cluster["fake"].fail[("GET", "nodes")] = (403, "Forbidden", 'nodes is forbidden: User "alice" cannot list '
                                                                'resource "nodes" at the cluster scope')
    code, findings = doctor_json(cluster, capsys)
    (finding,) = by_check(findings, "gpu-nodes")
    assert code == 0 and finding.status == WARN and "cannot check the nodes" in finding.message


def test_a_cpu_only_pipeline_needs_no_gpu_nodes(cluster, capsys):
    cluster["fake"].remove("Node", "aks-gpunc-0")
    cluster["settings"].write_text(yaml.safe_dump({"gpu": None, "trial_outputs": f"s3://{BUCKET}/trials"}))
    code, findings = doctor_json(cluster, capsys)
    assert code == 0 and "gpu: null" in by_check(findings, "gpu-nodes")[0].message


def test_a_driver_too_old_for_the_image(cluster, capsys):
    labels = cluster["fake"].get("Node", "aks-gpunc-0")["metadata"]["labels"]
    labels.update({"nvidia.com/cuda.driver-version.full": "470.256.02", "nvidia.com/cuda.driver-version.major": "470",
                   "nvidia.com/cuda.driver.major": "470"})
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "gpu-driver")
    need = doctor.MIN_DRIVER_FOR_CUDA[int(doctor.GPU_IMAGE_CUDA.split(".")[0])]
    assert code == 2
    assert f"(CUDA {doctor.GPU_IMAGE_CUDA}) needs NVIDIA driver {need} or later; too old on aks-gpunc-0 " \
           "(470.256.02)" in problem.message


def test_only_the_older_driver_labels(cluster, capsys):
    labels = cluster["fake"].get("Node", "aks-gpunc-0")["metadata"]["labels"]
    for key in ("nvidia.com/cuda.driver-version.full", "nvidia.com/cuda.driver-version.major"):
        del labels[key]
    code, findings = doctor_json(cluster, capsys)
    assert code == 0 and "aks-gpunc-0 (570)" in by_check(findings, "gpu-driver")[0].message


def test_no_driver_labels_cannot_be_checked(cluster, capsys):
    labels = cluster["fake"].get("Node", "aks-gpunc-0")["metadata"]["labels"]
    for key in [k for k in labels if k.startswith("nvidia.com/cuda.")]:
        del labels[key]
    code, findings = doctor_json(cluster, capsys)
    (finding,) = by_check(findings, "gpu-driver")
    assert code == 0 and finding.status == WARN and finding.message.startswith("cannot check the driver")
    assert "feature discovery" in finding.fix


def test_the_gpu_images_cuda_release_is_the_one_pinned():
    pins = (REPO / "images" / "pin_requirements.py").read_text()
    variant = re.search(r'^CUDA_VARIANT = "cu(\d+)(\d)"', pins, re.M)
    assert variant, "images/pin_requirements.py names no CUDA_VARIANT"
    assert doctor.GPU_IMAGE_CUDA == f"{variant.group(1)}.{variant.group(2)}"


# --- toleration matching (k8s.io/api core/v1 ToleratesTaint) --------------------------------------

NO_SCHEDULE = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


@pytest.mark.parametrize("toleration, taint, expected", [
    ({"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, NO_SCHEDULE, True),
    ({"key": "sku", "value": "gpu", "effect": "NoSchedule"}, NO_SCHEDULE, True),  # no operator: Equal
    ({"key": "sku", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}, NO_SCHEDULE, False),
    ({"key": "sku", "operator": "Exists", "effect": "NoSchedule"}, NO_SCHEDULE, True),  # any value
    ({"key": "sku", "operator": "Exists"}, NO_SCHEDULE, True),  # no effect: every effect
    ({"key": "sku", "operator": "Equal", "value": "gpu"}, {**NO_SCHEDULE, "effect": "NoExecute"}, True),
    ({"key": "sku", "operator": "Exists", "effect": "NoExecute"}, NO_SCHEDULE, False),  # another effect
    ({"operator": "Exists"}, NO_SCHEDULE, True),  # no key with Exists: every taint
    ({"operator": "Exists", "effect": "NoExecute"}, NO_SCHEDULE, False),
    ({"key": "other", "operator": "Exists"}, NO_SCHEDULE, False),
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
     {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
    ({"key": "nvidia.com/gpu", "operator": "Equal", "effect": "NoSchedule"},
     {"key": "nvidia.com/gpu", "effect": "NoSchedule"}, True),  # both values empty
    ({"key": "sku", "operator": "Lt", "value": "5"}, {"key": "sku", "value": "3", "effect": "NoSchedule"}, False),
])
def test_tolerates_follows_kubernetes(toleration, taint, expected):
    assert tolerates(toleration, taint) is expected


def test_only_no_schedule_and_no_execute_taints_keep_a_pod_off():
    taints = [NO_SCHEDULE, {"key": "a", "effect": "PreferNoSchedule"},
              {"key": "b", "value": "1", "effect": "NoExecute"}]
    assert untolerated_taints(taints, []) == [NO_SCHEDULE, taints[2]]
    assert untolerated_taints(taints, [{"key": "sku", "operator": "Exists"}]) == [taints[2]]
    assert untolerated_taints(taints, [{"operator": "Exists"}]) == []


# --- the object store ------------------------------------------------------------------------------

def test_no_storage_secret(cluster, capsys):
    cluster["fake"].remove("Secret", STORAGE, NS)
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "object-store")
    assert code == 2 and problem.message.startswith(f"Secret {NS}/{STORAGE} does not exist")
    assert problem.fix.startswith("fill in manifests/pipeline/storage.env (from storage.env.example) and kubectl "
                                  "apply -k manifests/, or ")
    assert problem.fix.endswith(f"kubectl create secret generic {STORAGE} -n {NS} --from-literal=AWS_ACCESS_KEY_ID=... "
                                "--from-literal=AWS_SECRET_ACCESS_KEY=... --from-literal=AWS_ENDPOINT_URL=...")


def test_the_templates_placeholders(cluster, capsys):
    cluster["fake"].put(secret(STORAGE, NS, {"AWS_ACCESS_KEY_ID": "REPLACE-WITH-ACCESS-KEY",
                                             "AWS_SECRET_ACCESS_KEY": "REPLACE-WITH-SECRET-KEY",
                                             "AWS_ENDPOINT_URL": cluster["s3"]}))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "object-store")
    assert code == 2 and "placeholders in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in problem.message
    assert problem.fix.startswith(f"kubectl delete secret {STORAGE} -n {NS}; then fill in manifests/pipeline/")


def test_a_secret_without_its_keys(cluster, capsys):
    cluster["fake"].put(secret(STORAGE, NS, {"AWS_ENDPOINT_URL": cluster["s3"]}))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "object-store")
    assert code == 2 and "lacks AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in problem.message


def test_the_trial_outputs_bucket_does_not_exist(cluster, capsys):
    cluster["settings"].write_text(yaml.safe_dump({"trial_outputs": "s3://no-such-bucket/trials"}))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "object-store")
    assert code == 2 and "bucket(s) no-such-bucket (trial_outputs) do not exist" in problem.message
    assert problem.fix == f"create them: aws --endpoint-url {cluster['s3']} s3 mb s3://no-such-bucket"


def test_without_buckets_in_the_settings_the_buckets_are_listed(cluster, capsys):
    cluster["settings"].write_text(yaml.safe_dump({"registry": "registry.example.com/ml"}))
    code, findings = doctor_json(cluster, capsys)
    assert code == 0 and "bucket(s) visible" in by_check(findings, "object-store")[0].message


def test_an_object_store_that_does_not_answer(cluster, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, findings = doctor_json(cluster, capsys, "--s3-endpoint", closed)
    problem = only_problem(findings, "object-store")
    assert code == 2 and problem.message.startswith(f"cannot reach the object store at {closed}")


def test_a_cluster_internal_endpoint_is_not_checked_from_outside(cluster, capsys):
    cluster["fake"].put(secret(STORAGE, NS, storage_values("http://minio-service.kubeflow:9000")))
    code, findings = doctor_json(cluster, capsys)
    (finding,) = by_check(findings, "object-store")
    assert code == 0 and finding.status == WARN and "a name only the cluster resolves" in finding.message
    assert finding.fix.startswith("kubectl port-forward -n kubeflow svc/minio-service 9000:9000, then rerun with "
                                  "--s3-endpoint http://localhost:9000")
    # ...and with the port-forward's address given, it is checked
    code, findings = doctor_json(cluster, capsys, "--s3-endpoint", cluster["s3"])
    assert code == 0 and by_check(findings, "object-store")[0].status == OK


# --- KServe ----------------------------------------------------------------------------------------

def test_kserve_not_installed(cluster, capsys):
    cluster["fake"].remove("CustomResourceDefinition", "inferenceservices.serving.kserve.io")
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "kserve")
    assert code == 2 and problem.message == "missing: inferenceservices.serving.kserve.io"
    assert "install KServe" in problem.fix


def test_a_serving_namespace_labelled_control_plane(cluster, capsys):
    fake = cluster["fake"]
    fake.put(namespace("kf-serving", {"control-plane": "kubeflow"}))
    fake.put(serving_secret("kf-serving", cluster["s3"]))
    fake.put(service_account("automl-vision-serving", "kf-serving", secrets=[STORAGE]))
    code, findings = doctor_json(cluster, capsys, "--serving-namespace", "kf-serving")
    problem = only_problem(findings, "serving-namespace")
    assert code == 2
    assert "namespace kf-serving is labelled control-plane=kubeflow: KServe's pod webhook skips it" in problem.message
    assert f"such as {SERVING}" in problem.fix and "--serving-namespace" in problem.fix


def test_the_serving_namespace_does_not_exist(cluster, capsys):
    cluster["fake"].remove("Namespace", SERVING)
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "serving-namespace")
    assert code == 2 and problem.fix.startswith(f"kubectl create namespace {SERVING}")


def test_the_serving_account_does_not_list_the_secret(cluster, capsys):
    cluster["fake"].put(service_account("automl-vision-serving", SERVING))
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "serving-account")
    assert code == 2 and f"does not list Secret {STORAGE}" in problem.message
    assert problem.fix == (f"kubectl patch serviceaccount automl-vision-serving -n {SERVING} --type merge -p "
                           f"'{{\"secrets\": [{{\"name\": \"{STORAGE}\"}}]}}'")


def test_the_secret_is_missing_in_the_serving_namespace(cluster, capsys):
    cluster["fake"].remove("Secret", STORAGE, SERVING)
    code, findings = doctor_json(cluster, capsys)
    problem = only_problem(findings, "serving-account")
    assert code == 2 and f"which does not exist in {SERVING}" in problem.message
    assert problem.fix.endswith(f"kubectl create secret generic {STORAGE} -n {SERVING} "
                                "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=... "
                                "--from-literal=AWS_ENDPOINT_URL=...")


def test_the_serving_secret_without_kserves_endpoint_annotation(cluster, capsys):
    cluster["fake"].put(secret(STORAGE, SERVING, storage_values(cluster["s3"])))
    code, findings = doctor_json(cluster, capsys)
    (finding,) = by_check(findings, "serving-account")
    assert code == 0 and finding.status == WARN
    assert "has no serving.kserve.io/s3-endpoint annotation" in finding.message
    assert finding.fix == (f"kubectl annotate secret {STORAGE} -n {SERVING} serving.kserve.io/s3-endpoint="
                           f"{cluster['s3'].split('://')[1]} serving.kserve.io/s3-usehttps=0")
