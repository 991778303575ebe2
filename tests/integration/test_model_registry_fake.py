"""The real Kubeflow Model Registry client (``model_registry.ModelRegistry``) against ``FakeModelRegistry``, the
stand-in built from the registry's published OpenAPI description: registration with metadata, the reads,
the pager, updates, not-found, auth failures and an injected server failure surface as the client's own
results and exceptions; a malformed raw request is refused with 400; and no request the client sent was
refused, nor any answer of the fake off the description.

The client takes the port from an ``http://`` URL (a ``port`` argument is then ignored) and logs a warning
through ``logging`` when that port does not end in 80; with a token given it raises no Python warning. The
tests pass ``log_level=ERROR`` except where that log line is checked. Its other side effects on the test
process: ``nest_asyncio2.apply()`` in the constructor and ``logging.basicConfig`` at import."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import urllib.error
import urllib.request

import mr_openapi.api.model_registry_service_api as generated_api
import pytest
from model_registry import ModelRegistry
from model_registry.core import ModelRegistryAPIClient
from model_registry.exceptions import StoreError
from model_registry.types import RegisteredModel
from model_registry_fake import PREFIX, FakeModelRegistry, serving
from mr_openapi.exceptions import (
    ConflictException,
    ForbiddenException,
    ServiceException,
    UnauthorizedException,
)

METADATA = {"dataset": "bccd", "epochs": 12, "map50": 0.734, "champion": True}


def connect(url: str, token: str = "t", **kwargs) -> ModelRegistry:
    return ModelRegistry(url, author="tester", is_secure=False, user_token=token, log_level=logging.ERROR, **kwargs)


def register(mr: ModelRegistry, version: str, name: str = "det", **kwargs):
    return mr.register_model(name, f"s3://models/{name}/{version}", version=version, model_format_name="onnx",
                             model_format_version="1", **kwargs)


def assert_clean(fake: FakeModelRegistry) -> None:
    """No request refused, no answer off the API description."""
    assert fake.rejected == []
    assert fake.bad_responses == []


@pytest.fixture(autouse=True)
def no_ca_bundle(monkeypatch):
    """The client builds a TLS context for every call, http:// too, loading the system CA bundle (~25 ms):
    an empty bundle instead, as nothing here is TLS."""
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)
    monkeypatch.setenv("SSL_CERT_DIR", os.devnull)


@pytest.fixture
def fake():
    return FakeModelRegistry()


@pytest.fixture
def url(fake):
    with serving(fake) as base:
        yield base


def raw(url: str, method: str, path: str, body=None, token: str | None = "t") -> tuple[int, dict]:
    request = urllib.request.Request(url + PREFIX + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_the_installed_client_speaks_the_described_api_version():
    sent = set(re.findall(r"/api/model_registry/(v[^/\"]+)/", inspect.getsource(generated_api)))
    assert sent == {PREFIX.rsplit("/", 1)[1]}, (
        f"model_registry calls /api/model_registry/{sent}/, the copied description {PREFIX}: install the client "
        "release built from that description (model-registry 0.3.14) or refresh tests/upstream/model-registry")


def test_register_and_read_back(fake, url, caplog):
    with caplog.at_level(logging.WARNING, logger="model-registry"):
        mr = ModelRegistry(url, author="tester", is_secure=False, user_token="t")  # the port comes from the URL
    port_hint = [r for r in caplog.records if "port is not 80" in r.getMessage()]
    assert len(port_hint) == (0 if url.endswith("80") else 1)

    rm = register(mr, "1.0.0", metadata=METADATA, version_description="first")
    assert (rm.name, rm.id, rm.owner, rm.state.value) == ("det", "1", "tester", "LIVE")
    assert rm.create_time_since_epoch.isdigit() and rm.last_update_time_since_epoch.isdigit()

    assert mr.get_registered_model("det").id == rm.id
    mv = mr.get_model_version("det", "1.0.0")
    # registered models and versions share one id sequence (both are contexts); artifacts have their own
    assert (mv.id, mv.registered_model_id, mv.author, mv.description, mv.state.value) == (
        "2", "1", "tester", "first", "LIVE")
    assert mv.custom_properties == METADATA
    assert {k: type(v) for k, v in mv.custom_properties.items()} == {k: type(v) for k, v in METADATA.items()}
    ma = mr.get_model_artifact("det", "1.0.0")
    assert (ma.id, ma.name, ma.uri, ma.model_format_name, ma.model_format_version, ma.state.value) == (
        "1", "det", "s3://models/det/1.0.0", "onnx", "1", "UNKNOWN")
    sent = fake.model_versions["2"]["customProperties"]
    assert sent["epochs"] == {"metadataType": "MetadataIntValue", "int_value": "12"}  # ints travel as strings
    assert mr.get_registered_model("nope") is None
    assert mr.get_model_version("det", "9.9.9") is None
    with pytest.raises(StoreError, match="Model nope does not exist"):
        mr.get_model_version("nope", "1.0.0")
    with pytest.raises(StoreError, match="Version 1.0.0 already exists"):  # checked by the client before a POST
        register(mr, "1.0.0")
    assert_clean(fake)


def test_pager_over_versions(fake, url):
    mr = connect(url)
    for version in ("1", "2", "3"):
        register(mr, version)
    assert [v.name for v in mr.get_model_versions("det")] == ["1", "2", "3"]
    assert [v.name for v in mr.get_model_versions("det").page_size(2)] == ["1", "2", "3"]
    assert [v.name for v in mr.get_model_versions("det").order_by_creation_time().descending()] == ["3", "2", "1"]
    paged = [q for m, p, q, _ in fake.requests if p.endswith("/versions") and q.get("pageSize") == "2"]
    assert [q.get("nextPageToken") for q in paged] == [None, "Mzoz", ""]  # base64 "3:3", then the end
    assert [m.name for m in mr.get_registered_models()] == ["det"]
    assert_clean(fake)


def test_update_replaces_custom_properties_when_sent_and_keeps_them_when_not(fake, url):
    mr = connect(url)
    register(mr, "1", metadata=METADATA)
    mv = mr.get_model_version("det", "1")
    mv.custom_properties = {"stage": "candidate"}
    updated = mr.update(mv)
    assert updated.custom_properties == {"stage": "candidate"}  # replaced as a whole, not merged
    assert int(updated.last_update_time_since_epoch) >= int(updated.create_time_since_epoch)
    again = mr.get_model_version("det", "1")
    assert again.custom_properties == {"stage": "candidate"}
    again.custom_properties, again.description = None, "kept"  # None: the client sends no customProperties
    assert mr.update(again).custom_properties == {"stage": "candidate"}
    assert mr.get_model_version("det", "1").description == "kept"

    rm = mr.get_registered_model("det")
    rm.description, rm.custom_properties = "detector", {"task": "detection"}
    mr.update(rm)
    assert (mr.get_registered_model("det").description, mr.get_registered_model("det").custom_properties) == (
        "detector", {"task": "detection"})
    ma = mr.get_model_artifact("det", "1")
    ma.storage_path, ma.custom_properties = "det/1", {"sha256": "ab12"}
    mr.update(ma)
    ma = mr.get_model_artifact("det", "1")
    assert (ma.storage_path, ma.custom_properties, ma.uri) == ("det/1", {"sha256": "ab12"}, "s3://models/det/1")
    assert [m for m, *_ in fake.requests].count("PATCH") == 4
    assert_clean(fake)


def test_auth_failures_surface_as_client_exceptions():
    fake = FakeModelRegistry(tokens={"w": "write", "r": "read"})
    with serving(fake) as url:
        with pytest.raises(UnauthorizedException) as unknown:  # the constructor lists registered models
            connect(url, token="stolen")
        assert unknown.value.status == 401 and unknown.value.data.code == "Unauthorized"
        reader = connect(url, token="r")
        with pytest.raises(ForbiddenException) as forbidden:
            register(reader, "1")
        assert forbidden.value.status == 403 and json.loads(forbidden.value.body)["code"] == "Forbidden"
        register(connect(url, token="w"), "1")
        assert reader.get_model_version("det", "1").name == "1"
        assert raw(url, "GET", "/registered_models", token=None)[0] == 401
    assert fake.registered_models.keys() == {"1"}
    assert_clean(fake)


def test_injected_failure_half_way_leaves_the_store_as_it_was(fake, url):
    mr = connect(url)
    fake.fail_next("POST", r"/model_versions/\d+/artifacts$", status=500)
    with pytest.raises(ServiceException) as failed:
        register(mr, "1")
    assert failed.value.status == 500 and "injected failure" in failed.value.data.message
    assert (len(fake.registered_models), len(fake.model_versions), len(fake.artifacts)) == (1, 1, 0)
    with pytest.raises(StoreError, match="Version 1 already exists"):  # a plain retry cannot finish it
        register(mr, "1")
    register(mr, "2")  # the fault was used up
    assert len(fake.artifacts) == 1
    assert_clean(fake)


def test_duplicate_name_is_409_conflict(fake, url):
    mr = connect(url)
    register(mr, "1")
    api = ModelRegistryAPIClient.insecure_connection(url, int(url.rsplit(":", 1)[1]), "t")
    with pytest.raises(ConflictException) as conflict:
        mr.async_runner(api.upsert_registered_model(RegisteredModel(name="det")))
    assert conflict.value.data.message == "registered model with name det already exists: conflict"
    assert_clean(fake)


def test_malformed_requests_are_refused_with_400(fake, url):
    status, body = raw(url, "POST", "/registered_models", {"name": 5})
    assert status == 400 and body["code"] == "Bad Request" and "5 is not of type 'string'" in body["message"]
    status, body = raw(url, "POST", "/registered_models", {"name": "m", "labels": {}})
    assert status == 400 and "unknown field(s) in the request body: labels" in body["message"]
    too_big = {"customProperties": {"n": {"metadataType": "MetadataIntValue", "int_value": "3000000000"}}}
    assert raw(url, "POST", "/model_versions", {"name": "v", "registeredModelId": "1", **too_big})[0] == 400
    assert raw(url, "GET", "/registered_models?pageSize=0")[0] == 400
    assert raw(url, "GET", "/registered_models/abc")[0] == 400
    assert raw(url, "PUT", "/registered_models/1", {"name": "m"})[0] == 400
    assert raw(url, "GET", "/no_such_path")[0] == 404
    assert len(fake.rejected) == 7 and fake.registered_models == {} and fake.model_versions == {}
    status, body = raw(url, "POST", "/registered_models", {"name": "m"})
    assert status == 201 and body["state"] == "LIVE" and body["id"] == "1"
    assert raw(url, "GET", "/registered_model?name=nope") == (
        404, {"code": "Not Found", "message": "no registered models found for name=nope, externalId=: not found"})
    assert len(fake.rejected) == 7 and fake.bad_responses == []
