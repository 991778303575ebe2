"""The deploy step: the component's function run as a pod runs it (a Python process whose Kubernetes
credentials come from its environment, here ``$KUBECONFIG``), against the local Kubernetes API
stand-in the deploy library's own tests use (tests/kube_api_fake.py), with KServe's controller as a
script that marks an InferenceService Ready, and the namespaces of a full Kubeflow (``kubeflow`` labelled
control-plane) plus the serving one manifests/ create. No KServe controller, storage initializer or
predictor pod is involved: whether the package downloads and the server answers is what only a cluster
shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kserve_crd import check_inference_service
from kube_testserver import ReadyOnRead, serve, write_kubeconfig

from automl_vision.pipeline.components import deploy
from automl_vision.pipeline.pipeline import build_pipeline
from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE

MODEL_URI = "minio://mlpipeline/v2/artifacts/automl-vision/run-1/package/model"  # a KFP artifact in its MinIO
RESULT = "deploy output: "
# What the pod runs: the component's function with the step's artifacts (KFP's executor does the same),
# once per call given.
STEP = f"""
import json, sys
from kfp.dsl import Artifact, Model
from automl_vision.pipeline.components import deploy

for call in json.loads(sys.argv[1]):
    out = Artifact(uri=call.pop("out"))
    deploy.python_func(model=Model(uri=call.pop("model")), inference_service=out, **call)
    print({RESULT!r} + json.dumps({{"metadata": out.metadata, "file": json.load(open(out.path))}}), flush=True)
"""


def run_step(tmp_path: Path, host: str, calls: list[dict]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", host, namespace="kubeflow")  # where the pipeline runs
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp_path))
    for i, call in enumerate(calls):
        call.setdefault("out", str(tmp_path / f"inference_service-{i}"))
    p = subprocess.run([sys.executable, "-c", STEP, json.dumps(calls)], capture_output=True, text=True, env=env,
                       timeout=300)
    outputs = [json.loads(line.removeprefix(RESULT)) for line in p.stdout.splitlines() if line.startswith(RESULT)]
    return p, outputs


def test_deploy_creates_then_updates_the_inference_service(tmp_path):
    fake = ReadyOnRead()
    retrained = MODEL_URI.replace("run-1", "run-2")
    with serve(fake) as host:
        p, outputs = run_step(tmp_path, host, [
            {"model": MODEL_URI, "inference_service_name": "fridge", "image": "registry.example.com/ml/cpu:1"},
            {"model": MODEL_URI, "inference_service_name": "fridge", "image": "registry.example.com/ml/cpu:1"},
            {"model": retrained, "inference_service_name": "fridge", "image": "registry.example.com/ml/cpu:1"},
        ])
    assert p.returncode == 0, p.stdout + p.stderr
    assert [o["metadata"]["action"] for o in outputs] == ["created", "unchanged", "updated"]
    first = outputs[0]
    # the component's default namespace, not the pod's own (kubeflow, which KServe skips); the URL once Ready
    assert first["metadata"] == {"name": "fridge", "namespace": "automl-vision-serving", "action": "created",
                                 "url": "http://fridge.automl-vision-serving.example.com"}
    assert ("InferenceService automl-vision-serving/fridge created: "
            "http://fridge.automl-vision-serving.example.com") in p.stdout
    manifest = first["file"]
    assert check_inference_service(manifest) == []  # KServe's CRD schema
    predictor = manifest["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "automl-vision-serving"  # the identity with the storage Secret
    container = predictor["containers"][0]
    assert container["image"] == "registry.example.com/ml/cpu:1"
    # KFP's minio:// artifact URI as the s3:// URI KServe's storage initializer downloads
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/automl-vision/run-1/package/model"} \
        in container["env"]
    stored = fake.objects[("automl-vision-serving", "inferenceservices", "fridge")]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/automl-vision/run-2/package/model"} \
        in stored["spec"]["predictor"]["containers"][0]["env"]
    assert [m for m, _ in fake.requests].count("POST") == 1 and [m for m, _ in fake.requests].count("PATCH") == 1


@pytest.mark.parametrize("inputs, message", [
    ({"model": "/tmp/pipeline/package/model"},
     "model_uri '/tmp/pipeline/package/model': unsupported scheme; expected s3://, gs://, pvc:// or http(s)://"),
    ({"inference_service_name": "Fridge_1"}, "name 'Fridge_1': not a DNS-1035 label"),
    ({"namespace": "Team A"}, "namespace 'Team A': not a namespace name"),
])
def test_bad_inputs_fail_before_anything_is_sent(tmp_path, inputs, message):
    fake = ReadyOnRead()
    call = {"model": MODEL_URI, "inference_service_name": "fridge", **inputs}
    with serve(fake) as host:
        p, outputs = run_step(tmp_path, host, [call])
    assert p.returncode != 0 and outputs == []
    assert message in p.stderr
    assert fake.requests == []


def test_a_control_plane_namespace_is_refused_and_another_one_is_used(tmp_path):
    fake = ReadyOnRead()
    with serve(fake) as host:
        p, outputs = run_step(tmp_path, host, [{"model": MODEL_URI, "inference_service_name": "fridge",
                                                "namespace": "kubeflow"}])
        assert p.returncode != 0 and outputs == []
        assert "namespace 'kubeflow' is labelled control-plane=kubeflow: KServe's pod webhook skips" in p.stderr
        assert fake.objects == {}
        p, outputs = run_step(tmp_path, host, [{"model": MODEL_URI, "inference_service_name": "fridge",
                                                "namespace": "team-a"}])
    assert p.returncode == 0, p.stdout + p.stderr
    assert outputs[0]["metadata"]["namespace"] == "team-a"
    assert list(fake.objects) == [("team-a", "inferenceservices", "fridge")]


def test_the_pipeline_and_the_step_deploy_to_the_serving_namespace_by_default():
    """The pipeline's serving_namespace and the component's namespace default to the namespace
    manifests/ create, which is deploy_model's own default."""
    pipeline_inputs = build_pipeline().pipeline_spec.root.input_definitions.parameters
    assert pipeline_inputs["serving_namespace"].default_value.string_value == DEFAULT_SERVING_NAMESPACE
    component_inputs = deploy.pipeline_spec.root.input_definitions.parameters
    assert component_inputs["namespace"].default_value.string_value == DEFAULT_SERVING_NAMESPACE
