"""The InferenceService deploy_model sends: checked against KServe's CRD schema, equal to the manifests/
template for the template's values, and every bad input refused with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kserve_crd import check_inference_service

from automl_vision import __version__
from automl_vision.errors import ConfigError
from automl_vision.serving import deploy
from automl_vision.serving.deploy import (DEFAULT_SERVING_NAMESPACE, describe_status, inference_service_manifest,
                                          is_ready)

TEMPLATE = Path(__file__).resolve().parents[2] / "manifests" / "kserve" / "inferenceservice.yaml"


def test_the_template_values_give_the_template():
    template = yaml.safe_load(TEMPLATE.read_text())
    env = template["spec"]["predictor"]["containers"][0]["env"]
    (uri,) = [e["value"] for e in env if e["name"] == "STORAGE_URI"]
    built = inference_service_manifest(uri, template["metadata"]["name"], template["metadata"]["namespace"],
                                       service_account=template["spec"]["predictor"]["serviceAccountName"])
    assert built["spec"] == template["spec"]
    assert built["metadata"]["labels"] == template["metadata"]["labels"]
    assert template["spec"]["predictor"]["containers"][0]["image"] == f"automl-vision-cpu:{__version__}"
    # the namespace deploy uses by default, which manifests/pipeline creates (KServe skips `kubeflow`)
    assert template["metadata"]["namespace"] == DEFAULT_SERVING_NAMESPACE == "automl-vision-serving"


@pytest.mark.parametrize("uri, options", [
    ("s3://mlpipeline/v2/artifacts/automl-vision/run-1/package/model", {}),
    ("gs://models/fridge", {"namespace": None, "service_account": "automl-vision-serving"}),
    ("pvc://models-claim/fridge/best_model", {"min_replicas": 0, "max_replicas": 4, "cpu": "500m", "memory": "1.5Gi"}),
    ("https://example.com/packages/fridge.tar.gz", {"min_replicas": None, "max_replicas": None}),
    ("s3://models/bccd", {"gpu": 2, "settings": {"box_score_thresh": 0.4, "max_batch_size": 8, "runtime": "onnx"},
                          "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
])
def test_manifests_are_valid_for_the_crd(uri, options):
    options = {"namespace": "team-a", **options}
    namespace = options.pop("namespace")
    manifest = inference_service_manifest(uri, "fridge", namespace, **options)
    assert check_inference_service(manifest) == []
    container = manifest["spec"]["predictor"]["containers"][0]
    assert container["args"] == ["automl-vision", "serve", "--model", "/mnt/models", "--port", "8080",
                                 "--name", "fridge"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"] == uri
    if options.get("settings"):
        assert json.loads(env["AUTOML_VISION_SETTINGS"]) == options["settings"]
    else:
        assert "AUTOML_VISION_SETTINGS" not in env
    if options.get("gpu"):
        assert container["image"] == f"automl-vision-gpu:{__version__}"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(options["gpu"])
    assert ("namespace" in manifest["metadata"]) == (namespace is not None)


def test_the_hash_follows_the_spec():
    a = inference_service_manifest("s3://m/a", "fridge", "team-a")
    assert a == inference_service_manifest("s3://m/a", "fridge", "team-a")
    b = inference_service_manifest("s3://m/b", "fridge", "team-a")
    key = deploy.HASH_ANNOTATION
    assert a["metadata"]["annotations"][key] != b["metadata"]["annotations"][key]


@pytest.mark.parametrize("name, namespace, message", [
    ("Fridge", "team-a", "name 'Fridge': not a DNS-1035 label"),
    ("1fridge", "team-a", "name '1fridge': not a DNS-1035 label"),
    ("fridge-", "team-a", "name 'fridge-': not a DNS-1035 label"),
    ("fridge_model", "team-a", "name 'fridge_model': not a DNS-1035 label"),
    ("fridge.v2", "team-a", "name 'fridge.v2': not a DNS-1035 label"),
    ("", "team-a", "name: an InferenceService needs a name"),
    ("a" * 64, None, "64 characters, over the 63 of a DNS-1035 label"),
    ("a" * 48, "team-a", "KServe's host name " + "a" * 48 + "-predictor-team-a would have 65 characters"),
    ("a" * 50, "team-a", "choose a name of at most 46 characters"),
    ("fridge", "Team_A", "namespace 'Team_A': not a namespace name"),
])
def test_bad_names_are_refused(name, namespace, message):
    with pytest.raises(ConfigError) as e:
        inference_service_manifest("s3://m/fridge", name, namespace)
    assert message in str(e.value)


@pytest.mark.parametrize("uri, message", [
    ("runs/demo/best_model", "model_uri 'runs/demo/best_model': unsupported scheme; expected s3://, gs://, pvc://"),
    ("file:///models/fridge", "unsupported scheme"),
    ("hdfs://models/fridge", "unsupported scheme"),
    ("s3://", "model_uri 's3://': no bucket (s3://bucket/path)"),
    ("gs:///fridge", "model_uri 'gs:///fridge': no bucket (gs://bucket/path)"),
    ("pvc:///fridge", "no claim name (pvc://claim/path)"),
    ("https:///fridge.zip", "no host"),
    ("pvc://Models_Claim/fridge", "'Models_Claim' is not a PersistentVolumeClaim name"),
    ("https://example.com/packages/fridge/", "KServe downloads an http(s) URL as one file and unpacks only archives"),
    ("", "model_uri: empty"),
])
def test_bad_model_uris_are_refused(uri, message):
    with pytest.raises(ConfigError) as e:
        inference_service_manifest(uri, "fridge", "team-a")
    assert message in str(e.value)


@pytest.mark.parametrize("options, message", [
    ({"settings": {"box_score_tresh": 0.5}}, "unknown setting 'box_score_tresh' (did you mean 'box_score_thresh'?)"),
    ({"settings": {"model_size": "large"}}, "settings: model_size is fixed by the trained weights"),
    ({"settings": {"max_batch_size": 0}}, "max_batch_size"),
    ({"settings": {"box_score_thresh": 2.0}}, "box_score_thresh"),
    ({"cpu": "two"}, "cpu 'two': not a Kubernetes quantity"),
    ({"memory_limit": "4 GB"}, "memory_limit '4 GB': not a Kubernetes quantity"),
    ({"gpu": -1}, "gpu -1: expected a whole number of GPUs >= 0"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas 2 is below min_replicas 3"),
    ({"max_replicas": 0}, "max_replicas 0: expected a whole number >= 1"),
    ({"min_replicas": -1}, "min_replicas -1: expected a whole number >= 0"),
    ({"port": 0}, "port 0: not a port number"),
    ({"service_account": "Pipeline Runner"}, "service_account 'Pipeline Runner': not a ServiceAccount name"),
    ({"image": "automl vision"}, "image 'automl vision': not an image reference"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError) as e:
        inference_service_manifest("s3://m/fridge", "fridge", "team-a", **options)
    assert message in str(e.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        inference_service_manifest("/tmp/model", "Fridge", "team-a", cpu="x", settings={"nope": 1})
    assert len(e.value.problems) == 4


@pytest.mark.parametrize("obj, ready, text", [
    ({}, False, "waiting for the controller"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "True"}]}}, False, "waiting for the controller to observe the new spec"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "conditions": [
        {"type": "Ready", "status": "True"}]}}, True, "Ready"),
    ({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, True, "Ready"),
    ({"status": {"conditions": [
        {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": "no ready Revision"},
        {"type": "Ready", "status": "Unknown"}],
        "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no weights file"}}}},
     False, "Ready Unknown; PredictorReady False (RevisionMissing: no ready Revision); "
            "model ModelLoadFailed: no weights file"),
])
def test_readiness_and_its_description(obj, ready, text):
    assert is_ready(obj) is ready
    assert describe_status(obj) == text
