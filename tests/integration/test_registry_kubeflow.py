"""Registering in a Kubeflow Model Registry: the product's registry code, through the real ``model-registry``
client, against ``FakeModelRegistry`` (the registry's REST API built from its published OpenAPI description,
refusing any request off it): the register step's versions, metadata, gate and champion; a registration
that fails half-way and its retry; concurrent numbering; tokens, permissions and an unreachable registry;
``automl-vision register`` uploading to a real S3 endpoint (moto's server on 127.0.0.1); ``deploy`` of a
registered version on the Kubernetes API stand-in, recorded on the version."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from kube_testserver import ReadyOnRead, object_store, serve, write_kubeconfig
from model_registry_fake import FakeModelRegistry, serving

from automl_vision.pipeline.registration import register_model_step
from automl_vision.data.storage import list_prefixes
from automl_vision.registry.gate import decide
from automl_vision.registry.register import register_run, resolve_version
from automl_vision.registry.store import CHAMPION_PROPERTY, RegistryError, open_registry

TOKEN = "registry-token"


@pytest.fixture(autouse=True)
def quiet_client(monkeypatch):
    """The client loads the system CA bundle for every call, http:// too (~25 ms): an empty one, as nothing
    here is TLS; and its hint about ports not ending in 80 stays out of the output."""
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)
    monkeypatch.setenv("SSL_CERT_DIR", os.devnull)
    logging.getLogger("model-registry").setLevel(logging.ERROR)


@pytest.fixture
def fake():
    return FakeModelRegistry(tokens={TOKEN: "write", "reader": "read"})


@pytest.fixture
def url(fake):
    with serving(fake) as base:
        yield base


@pytest.fixture(scope="module")
def package(reference_library_run, tmp_path_factory):
    """A trained package (the session's library run's best model), copied: these tests only read it."""
    folder = tmp_path_factory.mktemp("package") / "model"
    shutil.copytree(reference_library_run.run / "best_model", folder)
    return folder


def _evaluation(folder, accuracy: float, champion: tuple[str, float] | None = None):
    """What the evaluate step leaves for the register step: the metrics, and the champion's score."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "images": 8, "labels": ["blue", "red"]}))
    if champion is not None:
        (folder / "champion.json").write_text(json.dumps({"version": champion[0], "metric": "accuracy",
                                                          "value": champion[1], "uri": "s3://models/x"}))
    return folder


def _register(url, package, tmp_path, run_id: str, accuracy: float, champion=None, **kwargs):
    os.environ["AUTOML_VISION_REGISTRY_TOKEN_FILE"] = str(tmp_path / "token")
    (tmp_path / "token").write_text(TOKEN + "\n")
    try:
        return register_model_step(url, "shapes", package, _evaluation(tmp_path / f"eval-{run_id}", accuracy, champion),
                                   tmp_path / f"out-{run_id}", run_id=run_id,
                                   package_uri=f"s3://mlpipeline/v2/artifacts/{run_id}/package/model",
                                   training_data="s3://data/shapes/train.jsonl", image="registry.example.com/cpu:1",
                                   job_name="shapes", echo=lambda s: None, **kwargs)
    finally:
        del os.environ["AUTOML_VISION_REGISTRY_TOKEN_FILE"]


def _versions(fake):
    return sorted(fake.model_versions.values(), key=lambda v: int(v["name"]))


def test_runs_register_versions_and_only_a_better_one_is_promoted(fake, url, package, tmp_path):
    first = _register(url, package, tmp_path, "run-1", 0.75)
    assert (first["version"], first["champion"], first["created"]) == ("1", True, True)
    again = _register(url, package, tmp_path, "run-1", 0.75)  # the step retried: the same version
    assert (again["version"], again["created"]) == ("1", False)
    worse = _register(url, package, tmp_path, "run-2", 0.70, champion=("1", 0.75))
    assert (worse["version"], worse["champion"]) == ("2", False)
    assert "-5.00 points" in worse["decision"]["reason"]
    better = _register(url, package, tmp_path, "run-3", 0.80, champion=("1", 0.75), margin_points=2.0)
    assert (better["version"], better["champion"]) == ("3", True)

    assert len(fake.registered_models) == 1
    model = next(iter(fake.registered_models.values()))
    assert model["name"] == "shapes"
    assert model["customProperties"][CHAMPION_PROPERTY]["string_value"] == "3"
    versions = _versions(fake)
    assert [v["name"] for v in versions] == ["1", "2", "3"]
    assert [v["externalId"] for v in versions] == ["shapes:run-1", "shapes:run-2", "shapes:run-3"]
    labels = [v["name"] for v in versions if "champion" in v["customProperties"]]
    assert labels == ["3"]  # the label moved from version 1 to 3
    artifacts = [a for a in fake.artifacts.values() if a["artifactType"] == "model-artifact"]
    assert sorted(a["uri"] for a in artifacts) == [f"s3://mlpipeline/v2/artifacts/run-{i}/package/model"
                                                     for i in (1, 2, 3)]
    assert {a["modelFormatName"] for a in artifacts} == {"automl-vision"}
    value = {k: next(x for key, x in v.items() if key != "metadataType")
             for k, v in versions[2]["customProperties"].items()}
    assert value["task"] == "image_classification" and value["model_name"] == "resnet18"
    assert json.loads(value["hyperparameters"])["model_name"] == "resnet18"
    assert value["primary_metric"] == "accuracy" and value["metric_accuracy"] == 0.8
    assert value["training_data"] == "s3://data/shapes/train.jsonl" and value["pipeline_run_id"] == "run-3"
    assert value["image"] == "registry.example.com/cpu:1" and value["automl_vision_version"]
    assert value["code_licence"] == "BSD-3-Clause" and value["weights_licence"].startswith("none")
    assert value["gate_decision"] == "promoted" and value["gate_champion_version"] == "1"
    assert value["gate_margin_points"] == 2.0
    assert fake.rejected == [] and fake.bad_responses == []

    registry = open_registry(url, token=TOKEN)
    assert resolve_version(registry, "shapes", "champion").version == "3"
    assert resolve_version(registry, "shapes", "latest").uri.endswith("run-3/package/model")


def test_a_registration_that_failed_half_way_is_completed_by_its_retry(fake, url, package, tmp_path):
    _register(url, package, tmp_path, "run-1", 0.5)
    fake.fail_next("POST", r"/model_versions/\d+/artifacts$", 503)  # after the version was created
    with pytest.raises(RegistryError, match=r"attach the model to 'shapes' version 2: .*HTTP 503"):
        _register(url, package, tmp_path, "run-2", 0.9, champion=("1", 0.5))
    registry = open_registry(url, token=TOKEN)
    assert [v.complete for v in registry.versions("shapes")] == [True, False]
    assert resolve_version(registry, "shapes", "latest").version == "1"  # nothing deploys the half version
    fake.fail_next("PATCH", r"/registered_models/\d+$", 500)  # naming the champion fails this time
    with pytest.raises(RegistryError, match="champion"):
        _register(url, package, tmp_path, "run-2", 0.9, champion=("1", 0.5))
    done = _register(url, package, tmp_path, "run-2", 0.9, champion=("1", 0.5))
    assert (done["version"], done["champion"], done["created"]) == ("2", True, False)
    assert [v.version for v in registry.versions("shapes")] == ["1", "2"]
    assert resolve_version(registry, "shapes", "champion").version == "2"
    assert [v["name"] for v in _versions(fake) if "champion" in v["customProperties"]] == ["2"]
    assert fake.rejected == []


def test_a_version_number_taken_by_a_concurrent_run_is_not_reused(fake, url, package, tmp_path):
    _register(url, package, tmp_path, "run-1", 0.5)
    fake.fail_next("POST", r"/registered_models/\d+/versions$", 409)  # another run took the number first
    done = _register(url, package, tmp_path, "run-2", 0.4, champion=("1", 0.5))
    assert done["version"] == "2" and [v["name"] for v in _versions(fake)] == ["1", "2"]


def test_tokens_permissions_and_reachability_are_named(fake, url, package, tmp_path):
    with pytest.raises(RegistryError, match=r"refused the token \(HTTP 401\).*give a valid token"):
        open_registry(url, token="wrong")
    reader = open_registry(url, token="reader")
    assert reader.versions("shapes") == []
    with pytest.raises(RegistryError, match=r"permission denied \(HTTP 403\)"):
        register_run(reader, "shapes", run_id="r", package_dir=package, metadata={}, uri="s3://m/r",
                     decision=decide("accuracy", 0.5, None))
    assert fake.registered_models == {}  # nothing half-written
    server = url.rsplit(":", 1)[0] + ":1"  # a port nothing listens on
    with pytest.raises(RegistryError, match=r"cannot reach the model registry at http://127.0.0.1:1"):
        open_registry(server, token=TOKEN)


def test_cli_register_uploads_the_package_and_deploy_records_where_it_serves(fake, url, reference_library_run,
                                                                            tmp_path, cli_main, monkeypatch):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    run = reference_library_run.run
    # a Kubeflow Model Registry records URIs: without one the command stops before writing anything
    p = cli_main("register", str(run), "--registry", url, "--registry-token-file", str(token))
    assert p.returncode == 2 and "give --upload s3://bucket/prefix" in p.stderr
    assert fake.registered_models == {}
    with object_store("models") as secret:
        for key, value in secret.items():
            monkeypatch.setenv(key, value)
        p = cli_main("register", str(run), "--registry", url, "--registry-token-file", str(token), "--name", "shapes",
                     "--upload", "s3://models/shapes/1")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "uploaded" in p.stdout and "shapes version 1 registered" in p.stdout
        assert "promoted to champion: no champion yet" in p.stdout
        assert list_prefixes("s3://models/shapes") == ["1"]
        again = cli_main("register", str(run), "--registry", url, "--registry-token-file", str(token), "--name",
                         "shapes", "--upload", "s3://models/shapes/1")
        assert again.returncode == 0 and "already registered" in again.stdout and "uploaded" not in again.stdout
    assert len(fake.model_versions) == 1

    kube = ReadyOnRead()
    with serve(kube) as host:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", host)))
        p = cli_main("deploy", "--registered-model", "shapes", "--registry", url, "--registry-token-file",
                     str(token), "--name", "shapes-model", "--service-account", "automl-vision-serving", "--wait")
        assert p.returncode == 0, p.stdout + p.stderr
    assert "shapes version 1 (champion): s3://models/shapes/1" in p.stderr
    served = kube.objects[("automl-vision-serving", "inferenceservices", "shapes-model")]
    env = {e["name"]: e.get("value") for e in served["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == "s3://models/shapes/1"
    version = next(iter(fake.model_versions.values()))
    assert version["customProperties"]["deployed_inference_service"]["string_value"] == \
        "automl-vision-serving/shapes-model"
    assert version["customProperties"]["deployed_url"]["string_value"].startswith("http://shapes-model.")
    missing = cli_main("deploy", "--registered-model", "shapes", "--model-version", "9", "--registry", url,
                       "--registry-token-file", str(token), "--name", "x")
    assert missing.returncode != 0 and "has no '9' version (versions: 1 (champion))" in missing.stderr
    assert fake.rejected == [] and fake.bad_responses == []


def test_a_run_on_this_machine_is_not_registered_in_a_cluster_registry(tmp_path, cli_main):
    job = tmp_path / "job.yaml"
    job.write_text("task: image_classification\ntraining_data: train.jsonl\n")
    p = cli_main("run", str(job), "--output-dir", str(tmp_path / "run"), "--registry", "http://127.0.0.1:9")
    assert p.returncode == 2 and "register RUN_DIR --registry URL --upload s3://" in p.stderr
    assert not (tmp_path / "run").exists()


def test_a_pipeline_for_a_cluster_refuses_a_registry_folder(tmp_path, cli_main):
    p = cli_main("compile", "--out", str(tmp_path / "p.yaml"), "--registry", str(tmp_path / "model_registry"))
    assert p.returncode == 2 and "a pipeline on a cluster records versions in a Kubeflow Model Registry" in p.stderr
    assert not (tmp_path / "p.yaml").exists()
