"""manifests/katib (the early-stopping service's registration and permissions) and its image."""

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

from automl_vision import __version__
from automl_vision.earlystopping import rules as es
from automl_vision.sweep import katib

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests" / "katib"
DOCKERFILE = ROOT / "images" / "earlystopping" / "Dockerfile"


def test_katib_config_registers_the_service():
    config = yaml.safe_load((MANIFESTS / "katib-config.yaml").read_text())
    assert (config["apiVersion"], config["kind"]) == ("config.kubeflow.org/v1beta1", "KatibConfig")
    stoppings = {e["algorithmName"]: e for e in config["runtime"]["earlyStoppings"]}
    assert set(stoppings) == set(katib.EARLY_STOPPING_ALGORITHMS)
    for name in es.ALGORITHMS:
        assert stoppings[name]["image"] == f"automl-vision-earlystopping:{__version__}"
        assert stoppings[name]["securityContext"]["runAsNonRoot"] is True
    # every algorithm the generated Experiments may name, and the StdOut collector they use
    assert set(katib.SUGGESTION_SERVICES) == {s["algorithmName"] for s in config["runtime"]["suggestions"]}
    assert "StdOut" in {c["kind"] for c in config["runtime"]["metricsCollectors"]}
    assert "Job.v1.batch" in config["init"]["controller"]["trialResources"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize)")
def test_kustomization_builds_valid_objects():
    import kubernetes_validate

    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [("ClusterRole", "automl-vision-katib-early-stopping"), ("ClusterRole", "automl-vision-katib-launcher"),
                     ("ConfigMap", "katib-config"), ("RoleBinding", "automl-vision-katib-launcher")]
    for d in docs:
        kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["namespace"] == "kubeflow"
    assert yaml.safe_load(cm["data"]["katib-config.yaml"]) == yaml.safe_load((MANIFESTS / "katib-config.yaml").read_text())
    rules = {(r["apiGroups"][0], res): set(r["verbs"]) for d in docs if d["metadata"]["name"].endswith("early-stopping")
             for r in d["rules"] for res in r["resources"]}
    # what EarlyStoppingService.SetTrialStatus calls: get a trial, patch its status
    assert "get" in rules[("kubeflow.org", "trials")] and "patch" in rules[("kubeflow.org", "trials/status")]
    launcher = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("launcher"))
    experiments = next(r for r in launcher["rules"] if "experiments" in r["resources"])
    # what run_katib_sweep calls through KatibClient: list, create, get, delete
    assert {"create", "get", "list", "delete"} <= set(experiments["verbs"])


def _dockerfile_requirements() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    names = []
    for line in text.splitlines():
        if line.startswith("RUN ") and "pip install" in line:
            for part in line.split("&&"):
                if "pip install" in part and " . " not in part + " ":
                    names += re.findall(r'"([A-Za-z0-9_.\-]+)[^"]*"', part)
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
