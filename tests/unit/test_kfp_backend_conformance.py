"""The compiled pipeline holds only fields the oldest supported Kubeflow Pipelines backend knows.

Backends 2.4.0 and older parse each step's Kubernetes settings strictly: a field their
kubernetes_executor_config.proto lacks fails the step (``unknown field "optional" in
kfp_kubernetes.SecretAsEnv``). The messages here are built at test time from that backend's own .proto
files (tests/upstream/, the versions its go.mod pins) in a descriptor pool of their own, apart from the
newer ones the installed kfp carries, and every document is parsed without ignoring unknown fields.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from automl_vision.pipeline.pipeline import OLDEST_KFP_BACKEND, compile_pipeline, for_oldest_backend
from automl_vision.spec.cluster import ClusterSettings
from automl_vision.pipeline.specs import PIPELINE_FILE, PIPELINES_DIR

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream" / "kfp-backend-2.4.1"
#: A cluster using every setting that reaches the platform spec.
FULL_SETTINGS = {
    "registry": "registry.example.com/ml",
    "gpu": {"accelerator_limit": 2, "node_selector": {"agentpool": "gpunc"}, "cpu": "3500m", "memory": "20Gi",
            "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
                            {"key": "spot", "operator": "Exists", "effect": "NoExecute", "toleration_seconds": 60}]},
    "storage_secret": {"name": "object-store", "keys": {"KEY": "AWS_ACCESS_KEY_ID", "SECRET": "AWS_SECRET_ACCESS_KEY"}},
    "data_volume": {"claim_name": "training-images", "mount_path": "/data"},
    "weights": "s3://models/pretrained",
    "cpu_steps": {"cpu": "500m", "memory": "2Gi"},
    "shm_size": "4Gi",
    "trial_outputs": "s3://models/trials",
}


class Backend:
    """The message classes of one backend's protos, from their own descriptor pool."""

    def __init__(self, folder: Path, out: Path):
        from google.rpc import status_pb2  # googleapis-common-protos ships google/rpc/status.proto beside it
        from grpc_tools import protoc

        well_known = Path(protoc.__file__).parent / "_proto"
        googleapis = Path(status_pb2.__file__).parents[2]
        descriptor_set = out / "backend.pb"
        protos = sorted(p.name for p in folder.glob("*.proto"))
        rc = protoc.main(["protoc", f"-I{folder}", f"-I{well_known}", f"-I{googleapis}", "--include_imports",
                          f"--descriptor_set_out={descriptor_set}", *protos])
        assert rc == 0, f"protoc failed on {protos} in {folder}"
        pool = descriptor_pool.DescriptorPool()
        for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
            pool.Add(file)
        self._pool = pool

    def parse(self, full_name: str, data: dict, where: str):
        message = message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full_name))()
        try:
            return json_format.ParseDict(data, message)  # no ignore_unknown_fields: an unknown field is an error
        except json_format.ParseError as e:
            raise AssertionError(f"{where}: not a {full_name} of Kubeflow Pipelines {OLDEST_KFP_BACKEND}: {e}") \
                from None


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Backend:
    return Backend(UPSTREAM, tmp_path_factory.mktemp("protos"))


def check_package(backend: Backend, path: Path) -> list[str]:
    """Parse a compiled package as the backend does; returns the executors whose Kubernetes settings were parsed."""
    documents = list(yaml.safe_load_all(path.read_text()))
    spec = documents[0]
    backend.parse("ml_pipelines.PipelineSpec", spec, f"{path.name}: pipeline spec")
    # deploymentSpec is a Struct in PipelineSpec: its executors (container, image, resources, env) are read
    # as PipelineDeploymentConfig, and each container by the driver as PipelineContainerSpec
    backend.parse("ml_pipelines.PipelineDeploymentConfig", spec.get("deploymentSpec", {}),
                  f"{path.name}: deploymentSpec")
    parsed = []
    if len(documents) > 1:
        backend.parse("ml_pipelines.PlatformSpec", documents[1], f"{path.name}: platform spec")
        executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, config in executors.items():
            backend.parse("kfp_kubernetes.KubernetesExecutorConfig", config, f"{path.name}: {name}")
            parsed.append(name)
    return parsed


def test_the_protos_are_the_backends_own_and_strict(backend):
    # the field that broke older drivers is unknown to this backend, and reported as such
    with pytest.raises(AssertionError, match=r'exec-x: .*no field named "optional"'):
        backend.parse("kfp_kubernetes.KubernetesExecutorConfig",
                      {"secretAsEnv": [{"secretName": "s", "keyToEnv": [], "optional": False}]}, "exec-x")
    # string resource fields (which 2.3.0's pipeline_spec lacks) are known to it
    backend.parse("ml_pipelines.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec",
                  {"resourceCpuRequest": "1", "accelerator": {"resourceType": "nvidia.com/gpu", "resourceCount": "1"}},
                  "resources")
    for proto in UPSTREAM.glob("*.proto"):
        assert "github.com/kubeflow/pipelines" in proto.read_text()[:600], f"{proto.name} names its source"


def test_the_committed_pipeline_fits_the_oldest_backend(backend):
    parsed = check_package(backend, ROOT / PIPELINES_DIR / PIPELINE_FILE)
    assert "exec-sweep" in parsed and "exec-ingest" in parsed


@pytest.mark.parametrize("sweep_backend", ["local", "katib"])
def test_a_pipeline_with_every_cluster_setting_fits_the_oldest_backend(backend, tmp_path, sweep_backend):
    path = compile_pipeline(tmp_path / "full.yaml", settings=ClusterSettings.model_validate(FULL_SETTINGS),
                            backend=sweep_backend)
    parsed = check_package(backend, path)
    platform = list(yaml.safe_load_all(path.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(parsed) == 8
    # what the settings asked for is still there, in the fields this backend reads
    evaluate, ingest = platform["exec-evaluate"], platform["exec-ingest"]
    for config in (evaluate, ingest):
        assert config["secretAsEnv"] == [{"secretName": "object-store", "keyToEnv": [
            {"secretKey": "KEY", "envVar": "AWS_ACCESS_KEY_ID"},
            {"secretKey": "SECRET", "envVar": "AWS_SECRET_ACCESS_KEY"}]}]
        assert config["pvcMount"] == [{"constant": "training-images", "mountPath": "/data"}]
    assert {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "60"} \
        in evaluate["tolerations"]
    assert evaluate["nodeSelector"] == {"labels": {"agentpool": "gpunc"}}
    assert evaluate["emptyDirMounts"][0]["sizeLimit"] == "4Gi"


def test_a_parameterized_name_is_kept_for_the_conformance_test_to_name():
    parameter = {"componentInputParameter": "secret"}
    config = {"secretAsEnv": [{"secretName": "", "secretNameParameter": parameter, "keyToEnv": [], "optional": True}],
              "pvcMount": [{"constant": "a", "mountPath": "/a",
                            "pvcNameParameter": {"runtimeValue": {"constant": "a"}}}]}
    assert for_oldest_backend(config) == {
        "secretAsEnv": [{"secretName": "", "secretNameParameter": parameter, "keyToEnv": []}],
        "pvcMount": [{"constant": "a", "mountPath": "/a"}]}
