"""Every manifest a kustomization under manifests/ lists: core kinds validated with kubernetes-validate
(strict: unknown fields are errors), InferenceServices against KServe's CRD schema
(../shared/crds/), with unknown fields refused as ``kubectl apply --validate=strict`` refuses them."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kserve_crd import check_inference_service

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.30.0"  # a release current Kubeflow (1.9/1.10) supports


def kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def resources(kustomization: Path) -> list[tuple[Path, dict]]:
    """The documents of the files a kustomization lists (folders: their own kustomization, recursively)."""
    spec = yaml.safe_load(kustomization.read_text())
    out = []
    for entry in spec.get("resources", []):
        path = kustomization.parent / entry
        if path.is_dir():
            out += resources(path / "kustomization.yaml")
        else:
            out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def all_documents() -> list[tuple[Path, dict]]:
    seen, out = set(), []
    for k in kustomizations():
        for path, doc in resources(k):
            key = (path, doc.get("kind"), doc.get("metadata", {}).get("name"))
            if key not in seen:
                seen.add(key)
                out.append((path, doc))
    return out


def test_every_kustomization_lists_files_that_exist():
    assert kustomizations(), "no kustomization under manifests/"
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        assert spec["kind"] == "Kustomization"
        for entry in spec.get("resources", []):
            assert (k.parent / entry).exists(), f"{k}: {entry} does not exist"
        for generator in spec.get("configMapGenerator", []):
            for f in generator.get("files", []):
                assert (k.parent / f.split("=")[-1]).is_file(), f"{k}: {f} does not exist"


@pytest.mark.parametrize("path, doc", all_documents(),
                         ids=lambda x: x.name if isinstance(x, Path) else f"{x.get('kind')}/{x['metadata']['name']}")
def test_manifest_is_valid(path, doc):
    if doc["kind"] == "InferenceService":
        assert check_inference_service(doc) == []
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        pytest.skip(f"{doc['kind']} is not a core kind; checked where it is generated")


def test_the_pipeline_service_account_may_manage_inference_services_and_katib_experiments():
    docs = [d for _, d in all_documents()]
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "RoleBinding"
             and {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"} in d["subjects"]}
    rules = [r for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound for r in d["rules"]]

    def allowed(group, resource, verb):
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    for verb in ("create", "get", "patch", "watch"):
        assert allowed("serving.kserve.io", "inferenceservices", verb), verb
    for verb in ("create", "get", "watch", "delete"):
        assert allowed("kubeflow.org", "experiments", verb), verb
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert namespaces and all(n["metadata"]["labels"]["katib.kubeflow.org/metrics-collector-injection"] == "enabled"
                              for n in namespaces)


def test_the_inference_service_template_serves_the_package_with_the_storage_secret():
    (isvc,) = [d for _, d in all_documents() if d["kind"] == "InferenceService"]
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["args"][:4] == ["automl-vision", "serve", "--model", "/mnt/models"]
    assert any(e["name"] == "STORAGE_URI" for e in container["env"])
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_documents()}
    account = docs[("ServiceAccount", isvc["spec"]["predictor"]["serviceAccountName"])]
    secret = docs[("Secret", account["secrets"][0]["name"])]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])


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
