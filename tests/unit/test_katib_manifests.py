"""manifests/katib (permissions), the early-stopping service's katib-config entries (checked against Katib's
own config types) with the command that adds them to a user's KatibConfig, and the service's image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from automl_vision.cli import main
from automl_vision.earlystopping import katib_config
from automl_vision.earlystopping import rules as es
from automl_vision.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests" / "katib"
DOCKERFILE = ROOT / "images" / "earlystopping" / "Dockerfile"


UPSTREAM = ROOT / "tests" / "upstream" / "katib"
GO_STRUCT = re.compile(r"^type (\w+) struct \{\n(.*?)^\}", re.M | re.S)
GO_JSON_TAG = re.compile(r'`json:"([^"]*)"`')


def upstream_fields(version: str) -> dict[str, dict[str, bool]]:
    """Katib's KatibConfig structs at ``version`` (the excerpt under tests/upstream/katib/): struct ->
    {json key: required}. An inline metav1.TypeMeta gives apiVersion and kind."""
    text = (UPSTREAM / f"config-types-v{version}.0.go.txt").read_text()
    structs = {}
    for name, body in GO_STRUCT.findall(text):
        fields = {}
        for line in body.splitlines():
            tag = GO_JSON_TAG.search(line)
            if not tag:
                continue
            key, *options = tag.group(1).split(",")
            if not key and "inline" in options and "metav1.TypeMeta" in line:
                fields.update(apiVersion=False, kind=False)
            elif key:
                fields[key] = "omitempty" not in options
        structs[name] = fields
    return structs


def _check_keys(doc: dict, fields: dict[str, dict[str, bool]]) -> list[str]:
    problems = [f"KatibConfig.{k}" for k in doc if k not in fields["KatibConfig"]]
    problems += [f"runtime.{k}" for k in doc["runtime"] if k not in fields["RuntimeConfig"]]
    for entry in doc["runtime"]["earlyStoppings"]:
        known = fields["EarlyStoppingConfig"]
        problems += [f"{entry.get('algorithmName')}.{k}: not a field" for k in entry if k not in known]
        problems += [f"{entry.get('algorithmName')}.{k}: required" for k, required in known.items()
                     if required and k not in entry]
    return problems


@pytest.mark.parametrize("version", katib_config.SUPPORTED_KATIB)
def test_our_entries_are_fields_of_katib_early_stopping_config(version):
    fields = upstream_fields(version)
    assert set(fields["EarlyStoppingConfig"]) >= {"algorithmName", "image"}  # the excerpt was read
    shipped = yaml.safe_load((MANIFESTS / "katib-config-early-stopping.yaml").read_text())
    assert shipped == katib_config.patch_document()  # the file shows exactly what the command adds
    assert _check_keys(shipped, fields) == []
    assert {e["algorithmName"] for e in shipped["runtime"]["earlyStoppings"]} == set(es.ALGORITHMS)
    # what the old whole-ConfigMap manifest set, and Katib would have dropped without a word
    old = {"apiVersion": "config.kubeflow.org/v1beta1", "kind": "KatibConfig", "runtime": {"earlyStoppings": [
        {"algorithmName": "bandit", "image": "x", "securityContext": {"runAsNonRoot": True}}]}}
    assert _check_keys(old, fields) == ["bandit.securityContext: not a field"]


def test_entries_resources_are_valid_resource_requirements():
    import kubernetes_validate

    for entry in katib_config.early_stopping_entries():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "early-stopping"},
               "spec": {"containers": [{"name": "early-stopping", "image": entry["image"],
                                        "resources": entry["resources"]}]}}
        kubernetes_validate.validate(pod, "1.30.0", strict=True)
        # Katib's default memory limit for this container is 100Mi (pkg/apis/config/v1beta1/defaults.go)
        assert entry["resources"]["limits"]["memory"] == "512Mi"


# A user's KatibConfig from Katib 0.17, customized: it must come back changed in our two entries only.
USER_CONFIG = """\
apiVersion: config.kubeflow.org/v1beta1
kind: KatibConfig
init:
  certGenerator:
    enable: true
  controller:
    webhookPort: 8443
    trialResources:
      - Job.v1.batch
      - PyTorchJob.v1.kubeflow.org
runtime:
  metricsCollectors:
    - kind: StdOut
      image: docker.io/kubeflowkatib/file-metrics-collector:v0.17.0
  suggestions:
    - algorithmName: random
      image: docker.io/kubeflowkatib/suggestion-hyperopt:v0.17.0
      resources:
        limits:
          memory: 2Gi
  earlyStoppings:
    - algorithmName: bandit
      image: registry.example.com/old-bandit:0.0.9
      imagePullPolicy: Always
    - algorithmName: medianstop
      image: docker.io/kubeflowkatib/earlystopping-medianstop:v0.17.0
"""


def test_merge_changes_only_our_entries():
    user = yaml.safe_load(USER_CONFIG)
    image = "registry.example.com/automl-vision-earlystopping:0.1.0"
    out, changes, versions = katib_config.update_document(user, image)
    assert changes == ["replaced bandit", "added truncation-selection", "added asha", "added hyperband"]
    assert versions == {"0.17"}
    assert user == yaml.safe_load(USER_CONFIG)  # the input is not modified
    assert {k: v for k, v in out.items() if k != "runtime"} == {k: v for k, v in user.items() if k != "runtime"}
    assert out["runtime"]["suggestions"] == user["runtime"]["suggestions"]
    assert out["runtime"]["metricsCollectors"] == user["runtime"]["metricsCollectors"]
    stoppings = out["runtime"]["earlyStoppings"]
    assert [e["algorithmName"] for e in stoppings] == ["bandit", "medianstop", "truncation-selection", "asha",
                                                       "hyperband"]
    assert stoppings[1] == user["runtime"]["earlyStoppings"][1]
    assert stoppings[0] == {"algorithmName": "bandit", "image": image, "resources": katib_config.RESOURCES}
    again, changes, _ = katib_config.update_document(out, image)
    assert again == out and changes == ["unchanged bandit", "unchanged truncation-selection", "unchanged asha",
                                        "unchanged hyperband"]


def _configmap(config_text: str, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "katib-config", "namespace": "kubeflow", "resourceVersion": "4711", "uid": "u-1",
                         "labels": {"app.kubernetes.io/component": "katib"},
                         "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
            "data": {"katib-config.yaml": config_text, **data}}


def test_configmap_keeps_its_identity_and_other_keys():
    import kubernetes_validate

    out, _, _ = katib_config.update_document(_configmap(USER_CONFIG, notes="kept"))
    kubernetes_validate.validate(out, "1.30.0", strict=True)
    assert out["metadata"] == {"name": "katib-config", "namespace": "kubeflow", "resourceVersion": "4711",
                               "labels": {"app.kubernetes.io/component": "katib"}}
    assert out["data"]["notes"] == "kept"
    config = yaml.safe_load(out["data"]["katib-config.yaml"])
    assert config == katib_config.update_document(yaml.safe_load(USER_CONFIG))[0]


@pytest.mark.parametrize("doc, message", [
    (_configmap("x", **{"early-stopping": "{}", "suggestion": "{}"}) | {"data": {"early-stopping": "{}"}},
     "ConfigMap katib-config has early-stopping but no katib-config.yaml: that is the format of Katib before 0.16"),
    ({**_configmap(USER_CONFIG), "metadata": {"name": "katib-config-old"}},
     "ConfigMap 'katib-config-old': Katib reads its settings from the ConfigMap 'katib-config'"),
    (yaml.safe_load(USER_CONFIG.replace("- algorithmName: medianstop", "- algorithmName: bandit")),
     "runtime.earlyStoppings: 2 entries named 'bandit'"),
    ({"apiVersion": "v1", "kind": "Secret"}, "expected the ConfigMap katib-config or a KatibConfig, got kind 'Secret'"),
    (_configmap("apiVersion: v1\nkind: List\n"), "not a KatibConfig: apiVersion 'v1', kind 'List'"),
])
def test_what_cannot_be_merged_is_refused(doc, message):
    with pytest.raises(ConfigError) as e:
        katib_config.update_document(doc)
    assert str(e.value).startswith(message)


def test_command_rewrites_a_kustomize_katib_config_in_place(tmp_path, capsys):
    path = tmp_path / "katib-config.yaml"
    path.write_text(USER_CONFIG)
    assert main(["katib-config", "-f", str(path), "--in-place", "--image", "r.example.com/es:1"]) == 0
    assert yaml.safe_load(path.read_text()) == katib_config.update_document(yaml.safe_load(USER_CONFIG),
                                                                              "r.example.com/es:1")[0]
    out = capsys.readouterr()
    assert out.out == "" and ("replaced bandit, added truncation-selection, added asha, added hyperband; "
                              "image r.example.com/es:1") in out.err
    path.write_text("kind: ConfigMap\napiVersion: v1\nmetadata: {name: katib-config}\ndata: {suggestion: '{}'}\n")
    assert main(["katib-config", "-f", str(path)]) == 2
    assert "that is the format of Katib before 0.16" in capsys.readouterr().err


def test_command_reads_the_live_configmap(tmp_path, monkeypatch, capsys):
    """--from-cluster: the real kubernetes client, its kubeconfig pointing at a local HTTP server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kube_testserver import write_kubeconfig

    live = _configmap(USER_CONFIG)
    seen = []

    class ConfigMapServer(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            found = self.path == "/api/v1/namespaces/kubeflow/configmaps/katib-config"
            body = json.dumps(live if found else {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                  "reason": "NotFound", "code": 404}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), ConfigMapServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", host)))
        assert main(["katib-config", "--from-cluster"]) == 0
        out = capsys.readouterr()
        printed = yaml.safe_load(out.out)
        assert printed["metadata"]["resourceVersion"] == "4711"  # kubectl replace fails if it changed since
        assert yaml.safe_load(printed["data"]["katib-config.yaml"]) == \
            katib_config.update_document(yaml.safe_load(USER_CONFIG))[0]
        assert "kubectl replace -f -" in out.err and "no restart of katib-controller is needed" in out.err
        assert main(["katib-config", "--from-cluster", "--katib-namespace", "katib"]) == 1
        assert "no ConfigMap katib-config in namespace katib: is Katib installed there?" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize)")
def test_kustomization_builds_valid_objects():
    import kubernetes_validate

    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    # no ConfigMap: Katib's katib-config is the user's, changed by `automl-vision katib-config` only
    assert kinds == [("ClusterRole", "automl-vision-katib-early-stopping"),
                     ("ClusterRole", "automl-vision-katib-launcher"), ("RoleBinding", "automl-vision-katib-launcher")]
    for d in docs:
        kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
    rules = {(r["apiGroups"][0], res): set(r["verbs"]) for d in docs if d["metadata"]["name"].endswith("early-stopping")
             for r in d["rules"] for res in r["resources"]}
    # what EarlyStoppingService.SetTrialStatus calls: get a trial, patch its status
    assert "get" in rules[("kubeflow.org", "trials")] and "patch" in rules[("kubeflow.org", "trials/status")]
    launcher = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("launcher"))
    experiments = next(r for r in launcher["rules"] if "experiments" in r["resources"])
    # what run_katib_sweep calls through KatibClient: list, create, get, delete
    assert {"create", "get", "list", "delete"} <= set(experiments["verbs"])


def _dockerfile_requirements() -> list[str]:
    """The distributions the Dockerfile's ``pip install`` lines name: quoted requirements, or the pinned
    ``--requirement`` files it copies from images/."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    names = []
    for line in text.splitlines():
        if line.startswith("RUN ") and "pip install" in line:
            for part in line.split("&&"):
                if "pip install" in part and " . " not in part + " ":
                    names += re.findall(r'"([A-Za-z0-9_.\-]+)[^"]*"', part)
                    for pinned in re.findall(r"(?:--requirement|-r)[ =](\S+)", part):
                        lines = (ROOT / "images" / Path(pinned).name).read_text().splitlines()
                        names += [m.group(1) for m in map(re.compile(r"^([A-Za-z0-9_.\-]+)==").match, lines) if m]
    return names


def _closure(names: list[str]) -> set[str]:
    """The distributions ``names`` install with pip (their requirements, recursively), from this venv."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == "kubeflow-katib":
            continue  # installed with --no-deps
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


def test_image_installs_what_the_service_imports():
    """Import the service in a fresh interpreter and map every loaded module to its distribution: all
    must be installed by the Dockerfile (or be automl-vision or the standard library); no torch."""
    requirements = _dockerfile_requirements()
    assert "kubeflow-katib" in requirements and "grpcio" in requirements
    installed = _closure(requirements) | {"automl-vision"}
    code = ("import sys, json, automl_vision.earlystopping.service as s; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    owners = metadata.packages_distributions()
    optional = {"grpc_tools", "grpc_health"}  # grpcio imports these when present, in a try/except ImportError
    missing = set()
    for m in modules:
        if m in owners and m not in sys.stdlib_module_names and m != "automl_vision" and m not in optional:
            candidates = {d.lower().replace("_", "-") for d in owners[m]}
            if not candidates & installed:  # a top-level name several distributions share: any one will do
                missing.add(m)
    assert "torch" not in modules and "kfp" not in modules
    assert missing == set(), f"imported but not installed by the image: {sorted(missing)}"
    assert 'ENTRYPOINT ["python", "-m", "automl_vision.earlystopping"]' in DOCKERFILE.read_text()
