"""A stand-in for the Kubeflow Model Registry REST server on 127.0.0.1, built from the registry's published
OpenAPI description (``tests/upstream/model-registry/model-registry.yaml``, API ``v1alpha3``), for driving
the real ``model_registry.ModelRegistry`` client in tests.

Every request is checked against the description with ``openapi_core`` (path, method, query parameters, JSON
body) and its body's top-level fields against those its schema names (the upstream server decodes with
``DisallowUnknownFields``). A request that does not match gets 400 with the validation error in an Error body
(404 for a path the description lacks) and is recorded in ``rejected``; each answer to a valid request is
checked too, a mismatch recorded in ``bad_responses``. Tests assert both empty. Two allowances: the Bearer
security requirement is left to the token check (``tokens``: 401, 403), and an empty ``nextPageToken``, which
the description forbids (no ``allowEmptyValue``) but the official client's pager sends after the last page and
the server reads as "no token", is let through.

Semantics follow upstream kubeflow/model-registry (now kubeflow/hub) at commit bd07139a60e2:

- ``internal/server/openapi/api_model_registry_service.go`` and ``helpers.go``: bodies decode onto defaults
  (``state`` LIVE for a registered model or version, UNKNOWN for an artifact); errors answer
  ``{"code": <status text>, "message": <error>}``.
- ``internal/core/registered_model.go``, ``model_version.go``, ``artifact.go``: a find by params (``name``,
  ``externalId``, ``parentResourceId``) with no match, or several, is 404; without its parameters 400 (a name
  wins over an externalId); a duplicate name is 409 Conflict ("... with name X already exists: conflict"); an
  artifact posted to a version without a name gets a generated one, and with an ``id`` updates it (200).
- ``internal/converter/openapi_reconciler.go`` (and ``generated/``) with the core files: PATCH sets each field
  the body carries (absent: kept); ``customProperties``, when sent, REPLACES the stored map as a whole
  (``{}`` clears it), when absent is kept; id, name, the times, ``registeredModelId`` and ``artifactType`` are
  not editable; ``lastUpdateTimeSinceEpoch`` moves on every write.
- ``internal/platform/db/repository/generic_repository.go``, ``internal/platform/db/scopes/paginate.go``,
  ``internal/platform/db/entity/pagination.go``: times are ms since the epoch (strings in JSON); no pageSize is
  no limit (``pageSize: 0`` in the answer); order by ID (default), CREATE_TIME or LAST_UPDATE_TIME, ASC
  (default) or DESC, ties by id; ``nextPageToken`` is base64 of ``"<id>:<value>"`` of the page's last item,
  ``""`` after the last page; ``size`` is the number of items returned.
- ``internal/db/service/registered_model.go``, ``model_version.go``, ``artifact.go`` and the MySQL migrations
  (``Context``, ``Artifact`` tables): registered models and versions are contexts sharing one id sequence,
  artifacts have their own; names match with SQL ``LIKE`` (``%`` and ``_`` are wildcards; case-sensitive
  here, as on PostgreSQL); a version's name is unique within its registered model, an artifact's within its
  version; an ``externalId`` is unique among all contexts, and among all artifacts.

Not modelled: ``filterQuery`` (answered 500); metrics' and parameters' upsert by name; the other entities
(experiments, serving environments, inference services: 501, which ``bad_responses`` then reports).
Imported by the tests (``tests/`` is on ``sys.path`` through its conftest)."""

from __future__ import annotations

import base64
import contextlib
import functools
import http
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from jsonschema.exceptions import best_match
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.validators import V30RequestBodyValidator, V30RequestParametersValidator

SPEC = Path(__file__).parent / "upstream" / "model-registry" / "model-registry.yaml"
PREFIX = "/api/model_registry/v1alpha3"
SPEC_HOST = "http://localhost:8080"  # a server the description lists: request URLs are matched against it
NOT_EDITABLE = {"id", "name", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch", "registeredModelId", "artifactType"}


class Reply(Exception):
    """An error answer: the status and the Error body's message; ``described=False`` for the answers the
    description does not cover (injected faults, the auth proxy's 403), whose check is skipped."""

    def __init__(self, status: int, message: str, described: bool = True):
        super().__init__(message)
        self.status, self.described = status, described


@functools.cache
def _spec() -> tuple[OpenAPI, dict, V30RequestParametersValidator, V30RequestBodyValidator]:
    api = OpenAPI.from_file_path(str(SPEC))  # checks the description itself too
    # Parameters and body only: the Bearer requirement is left to the fake's own token check (401/403).
    validators = V30RequestParametersValidator(api.spec), V30RequestBodyValidator(api.spec)
    return api, yaml.safe_load(SPEC.read_text()), *validators


def _fields(raw: dict, schema: dict, body: dict) -> set[str]:
    """The property names a schema allows, through $ref, allOf and (by the discriminator) oneOf."""
    if "$ref" in schema:
        return _fields(raw, raw["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], body)
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= _fields(raw, part, body)
    if "oneOf" in schema:  # the variant the discriminator names, else any
        discriminator = schema.get("discriminator", {})
        ref = discriminator.get("mapping", {}).get(body.get(discriminator.get("propertyName")))
        for part in [{"$ref": ref}] if ref else schema["oneOf"]:
            names |= _fields(raw, part, body)
    return names


def _explain(exc: BaseException) -> str:
    """An openapi_core error, with the schema errors behind it (for a oneOf, the likeliest variant's too)."""
    cause: BaseException | None = exc
    while cause is not None and not getattr(cause, "schema_errors", None):
        cause = cause.__cause__
    if cause is None:
        return str(exc)
    details = "; ".join(dict.fromkeys(  # the same error may come through several allOf branches
        f"{'/'.join(map(str, e.absolute_path)) or '(value)'}: {e.message}"
        + (f" ({best_match(e.context).message})" if e.context else "") for e in cause.schema_errors))
    return f"{str(exc).replace(str(cause), '').rstrip(': ') or type(exc).__name__}: {details}"


def _like(pattern: str, value: str) -> bool:
    """SQL LIKE: ``%`` any run of characters, ``_`` any one character."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _now() -> str:
    return str(time.time_ns() // 1_000_000)


class FakeModelRegistry:
    """The store (registered models, model versions, artifacts, as the JSON the API returns) and the REST
    handling; ``serving(fake)`` puts it on a port. ``tokens``: bearer token -> ``"write"`` or ``"read"``;
    when given, a request without a known token gets 401 and a read token's POST or PATCH 403."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})
        self.registered_models: dict[str, dict] = {}
        self.model_versions: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.artifact_parent: dict[str, str | None] = {}  # artifact id -> model version id
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []  # (method, path, query, body)
        self.rejected: list[tuple[str, str, str]] = []  # (method, path, validation error)
        self.bad_responses: list[tuple[str, str, int, str]] = []  # (method, path, status, validation error)
        self._faults: list[list] = []  # [method, regex, status, times left]
        self._context_ids, self._artifact_ids = itertools.count(1), itertools.count(1)
        self._lock = threading.Lock()

    def fail_next(self, method: str, path_suffix_regex: str, status: int = 500, times: int = 1) -> None:
        """Make the next ``times`` requests of ``method`` whose path matches (``re.search``) fail with ``status``
        and an Error body, after their validation and without touching the store."""
        self._faults.append([method.upper(), re.compile(path_suffix_regex), status, times])

    # --- the HTTP exchange -------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], data: bytes) -> tuple[int, dict]:
        """Answer one request (``target``: path and query string): the status and the JSON body."""
        url, headers = urlsplit(target), {k.lower(): v for k, v in headers.items()}
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = data.decode("utf-8", "replace")
        with self._lock:
            self.requests.append((method, url.path, query, body))
            request = None  # the request as validated: its answer is checked too
            try:
                self._authorize(method, headers.get("authorization", ""))
                request = self._validate(method, url.path, query, headers, data, body)
                for fault in self._faults:
                    if fault[3] > 0 and fault[0] == method and fault[1].search(url.path):
                        fault[3] -= 1
                        raise Reply(fault[2], f"injected failure of {method} {url.path}", described=False)
                status, answer = self._route(method, url.path.removeprefix(PREFIX), query, body)
            except Reply as e:
                status, answer = e.status, {"code": http.HTTPStatus(e.status).phrase, "message": str(e)}
                request = request if e.described else None
            if request is not None:
                response = MockResponse(json.dumps(answer).encode(), status_code=status)
                errors = [_explain(e) for e in _spec()[0].iter_response_errors(request, response)]
                if errors:
                    self.bad_responses.append((method, url.path, status, "; ".join(errors)))
        return status, answer

    def _authorize(self, method: str, authorization: str) -> None:
        if not self.tokens:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise Reply(401, "missing or unknown bearer token")
        if method in ("POST", "PATCH") and self.tokens[token] != "write":
            raise Reply(403, f"token may not {method}", described=False)

    def _validate(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], data: bytes,
                  body: Any) -> MockRequest:
        _, raw, parameters, body_validator = _spec()
        # The official client's pager asks again with an empty nextPageToken after the last page (the server
        # reads it as "no token", and the pager stops when the first page's token comes back); the description
        # does not allow empty values, so that one parameter is let through when empty.
        args = {k: v for k, v in query.items() if not (k == "nextPageToken" and v == "")}
        request = MockRequest(SPEC_HOST, method, path, args=args, headers=headers, data=data or None,
                              content_type=headers.get("content-type", "application/json").split(";")[0])
        errors = [*parameters.iter_errors(request), *body_validator.iter_errors(request)]
        if any(isinstance(e, PathNotFound) for e in errors):
            self.rejected.append((method, path, str(errors[0])))
            raise Reply(404, f"{method} {path}: no such path in the API description")
        messages = list(dict.fromkeys(_explain(e) for e in errors))  # an operation error comes from both
        operation = next((item.get(method.lower(), {}) for pattern, item in raw["paths"].items()
                          if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", pattern), path)), {})
        content = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {})
        if isinstance(body, dict) and "schema" in content:
            unknown = sorted(set(body) - _fields(raw, content["schema"], body))
            if unknown:
                messages.append(f"unknown field(s) in the request body: {', '.join(unknown)}")
        if messages:
            self.rejected.append((method, path, "; ".join(messages)))
            raise Reply(400, "; ".join(messages))
        return request

    # --- the REST operations -----------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict]:
        if "filterQuery" in query:
            raise Reply(500, "filterQuery is not implemented by FakeModelRegistry")
        parts = path.strip("/").split("/")
        match method, parts:
            case "GET", ["registered_models"]:
                return 200, self._page(self.registered_models.values(), query)
            case "POST", ["registered_models"]:
                return 201, self._create_registered_model(body)
            case "GET", ["registered_models", rm_id]:
                return 200, self._get(self.registered_models, rm_id, "registered model")
            case "PATCH", ["registered_models", rm_id]:
                return 200, self._patch(self._get(self.registered_models, rm_id, "registered model"), body)
            case "GET", ["registered_models", rm_id, "versions"]:
                versions = [v for v in self.model_versions.values() if v["registeredModelId"] == rm_id
                            and all(v.get(k) == query[k] for k in ("name", "externalId") if k in query)]
                return 200, self._page(versions, query)
            case "POST", ["registered_models", rm_id, "versions"]:
                self._get(self.registered_models, rm_id, "registered model")
                return 201, self._create_model_version({**body, "registeredModelId": rm_id})
            case "GET", ["registered_model"]:
                return 200, self._find("registered model", [(m, None) for m in self.registered_models.values()], query)
            case "GET", ["model_versions"]:
                return 200, self._page(self.model_versions.values(), query)
            case "POST", ["model_versions"]:
                if body["registeredModelId"] not in self.registered_models:  # upstream does not check it
                    raise Reply(400, f"no registered model found for id {body['registeredModelId']}: bad request")
                return 201, self._create_model_version(body)
            case "GET", ["model_versions", mv_id]:
                return 200, self._get(self.model_versions, mv_id, "model version")
            case "PATCH", ["model_versions", mv_id]:
                return 200, self._patch(self._get(self.model_versions, mv_id, "model version"), body)
            case "GET", ["model_version"]:
                versions = [(v, v["registeredModelId"]) for v in self.model_versions.values()]
                return 200, self._find("model version", versions, query)
            case "GET", ["model_versions", mv_id, "artifacts"]:
                found = [a for i, a in self.artifacts.items() if self.artifact_parent[i] == mv_id
                         and all(a.get(k) == query[k] for k in ("name", "externalId", "artifactType") if k in query)]
                return 200, self._page(found, query)
            case "POST", ["model_versions", mv_id, "artifacts"]:
                self._get(self.model_versions, mv_id, "model version")
                if body.get("id"):
                    if body["id"] not in self.artifacts:
                        raise Reply(400, f"mismatched types, artifact with id {body['id']} is not a model artifact: "
                                         "bad request")
                    return 200, self._patch(self.artifacts[body["id"]], body)
                return 201, self._create_artifact(body, mv_id)
            case "GET", ["model_artifacts"]:
                models = [a for a in self.artifacts.values() if a["artifactType"] == "model-artifact"]
                return 200, self._page(models, query)
            case "POST", ["model_artifacts"]:
                return 201, self._create_artifact({**body, "artifactType": "model-artifact"}, None)
            case "GET", ["model_artifacts", ma_id]:
                return 200, self._get_model_artifact(ma_id)
            case "PATCH", ["model_artifacts", ma_id]:
                return 200, self._patch(self._get_model_artifact(ma_id), body)
            case "GET", ["model_artifact"]:
                artifacts = [(a, self.artifact_parent[i]) for i, a in self.artifacts.items()]
                return 200, self._find("model artifact", artifacts, query)
        raise Reply(501, f"FakeModelRegistry does not implement {method} {PREFIX}{path}")

    def _get(self, store: dict[str, dict], id_: str, kind: str) -> dict:
        if id_ not in store:
            raise Reply(404, f"no {kind} found for id {id_}: not found")
        return store[id_]

    def _get_model_artifact(self, id_: str) -> dict:
        artifact = self._get(self.artifacts, id_, "model artifact")
        if artifact["artifactType"] != "model-artifact":
            raise Reply(404, f"no model artifact found for id {id_}: not found")
        return artifact

    def _new(self, body: dict, ids: Iterator[int], external_ids: list[str], **defaults: Any) -> dict:
        if body.get("externalId") is not None and body["externalId"] in external_ids:
            raise Reply(409, f"externalId {body['externalId']} already exists: conflict")
        now = _now()
        entity = {**defaults, **{k: v for k, v in body.items() if v is not None}}
        entity.update(id=str(next(ids)), createTimeSinceEpoch=now, lastUpdateTimeSinceEpoch=now)
        if not entity.get("customProperties"):
            entity.pop("customProperties", None)
        return entity

    def _context_external_ids(self) -> list[str]:
        return [e.get("externalId") for e in [*self.registered_models.values(), *self.model_versions.values()]]

    def _create_registered_model(self, body: dict) -> dict:
        if any(m["name"] == body["name"] for m in self.registered_models.values()):
            raise Reply(409, f"registered model with name {body['name']} already exists: conflict")
        entity = self._new(body, self._context_ids, self._context_external_ids(), state="LIVE")
        self.registered_models[entity["id"]] = entity
        return entity

    def _create_model_version(self, body: dict) -> dict:
        if any(v["registeredModelId"] == body["registeredModelId"] and v["name"] == body["name"]
               for v in self.model_versions.values()):
            raise Reply(409, f"model version with name {body['name']} already exists: conflict")
        entity = self._new(body, self._context_ids, self._context_external_ids(), state="LIVE")
        self.model_versions[entity["id"]] = entity
        return entity

    def _create_artifact(self, body: dict, model_version_id: str | None) -> dict:
        name = body.get("name") or str(uuid.uuid4())
        if model_version_id and any(a["name"] == name and self.artifact_parent[i] == model_version_id
                                    for i, a in self.artifacts.items()):
            raise Reply(409, f"{body['artifactType'].replace('-', ' ')} with name {name} already exists: conflict")
        external_ids = [a.get("externalId") for a in self.artifacts.values()]
        entity = self._new({**body, "name": name}, self._artifact_ids, external_ids, state="UNKNOWN")
        self.artifacts[entity["id"]] = entity
        self.artifact_parent[entity["id"]] = model_version_id
        return entity

    def _patch(self, entity: dict, body: dict) -> dict:
        for key, value in body.items():
            if value is not None and key not in NOT_EDITABLE:
                entity[key] = value
        if not entity.get("customProperties"):
            entity.pop("customProperties", None)
        entity["lastUpdateTimeSinceEpoch"] = _now()
        return entity

    def _find(self, kind: str, candidates: list[tuple[dict, str | None]], query: dict[str, str]) -> dict:
        """Upstream's Get...ByParams over (entity, parent id) pairs: by name (SQL LIKE; within a parent for the
        parented kinds), else by externalId; exactly one match, else 404."""
        parented = kind != "registered model"
        name, external_id = query.get("name"), query.get("externalId")
        parent = query.get("parentResourceId") if parented else None
        if (name is None or (parented and parent is None)) and external_id is None:
            either = "(name and parentResourceId), or" if parented else "name or"
            raise Reply(400, f"invalid parameters call, supply either {either} externalId: bad request")
        found = [e for e, p in candidates if (parent is None or p == parent)
                 and (_like(name, e["name"]) if name is not None else e.get("externalId") == external_id)]
        params = ", ".join(f"{k}={query.get(k, '')}" for k in ("name", "parentResourceId", "externalId")
                           if parented or k != "parentResourceId")
        if len(found) != 1:
            raise Reply(404, f"{'multiple' if found else 'no'} {kind}s found for {params}: not found")
        if kind == "model artifact" and found[0]["artifactType"] != "model-artifact":
            raise Reply(404, f"artifact with {params} is not a model artifact: not found")
        return found[0]

    def _page(self, entities: Any, query: dict[str, str]) -> dict:
        """A list answer: ordered, from after the cursor, at most pageSize items, with the next cursor."""
        column = {"CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}.get(
            query.get("orderBy", "ID"), "id")
        descending = query.get("sortOrder") == "DESC"

        def key(e: dict) -> tuple[int, int]:
            return int(e[column]), int(e["id"])

        items = sorted(entities, key=key, reverse=descending)
        if query.get("nextPageToken"):
            try:
                cursor_id, _, value = base64.b64decode(query["nextPageToken"], validate=True).decode().partition(":")
                cursor = (int(value), int(cursor_id))
            except ValueError as e:
                raise Reply(400, f"invalid nextPageToken: {e}: bad request") from None
            items = [e for e in items if (key(e) < cursor if descending else key(e) > cursor)]
        size = int(query.get("pageSize", "0"))
        token = ""
        if 0 < size < len(items):
            items = items[:size]
            token = base64.b64encode(f"{items[-1]['id']}:{items[-1][column]}".encode()).decode()
        return {"items": items, "nextPageToken": token, "pageSize": size, "size": len(items)}


@contextlib.contextmanager
def serving(fake: FakeModelRegistry) -> Iterator[str]:
    """Run ``fake`` on 127.0.0.1 (a free port) in a daemon thread; yields its base URL ``http://127.0.0.1:PORT``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the headers and the body go out as two writes: no 40 ms wait

        def _serve(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = fake.handle(self.command, self.path, dict(self.headers.items()), data)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
