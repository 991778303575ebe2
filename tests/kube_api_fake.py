"""A local HTTP server on 127.0.0.1 that speaks the Kubernetes API's custom-object endpoints, for driving
the real ``kubernetes`` client (and SDKs built on it, such as Katib's KatibClient) without a cluster.

It stores what it is sent: create (POST, 409 when the name exists), get, list, delete, a JSON merge
patch of an object (PATCH; the generation goes up when the spec changes, as the API server does for a
resource with a status subresource) and a status replacement (PATCH .../status). JSON patches (RFC 6902,
``application/json-patch+json``) of an object or its status are applied to the stored object as the API
server applies them (a failing operation: 422), and a replacement (PUT) is taken too. Every write moves
the resourceVersion on; a write whose object carries another resourceVersion than the stored one
(a merge patch or PUT naming it, a JSON patch setting it) is refused with 409 Conflict, as the API
server's optimistic concurrency does. Subclasses script a controller through ``on_create`` / ``on_get``
/ ``on_request``, and another client writing between a read and a write through ``before_write`` with
``update_object``; ``fail`` scripts refusals such as a 403.
Of the core API it answers only a Namespace read (``GET /api/v1/namespaces/<name>``, from ``namespaces``).
Imported by the tests (``tests/`` is on ``sys.path`` through its conftest)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([a-z]+)(?:/([^/?]+))?(?:/(status))?/?(?:\?.*)?$")
#: The core API's Namespace read (GET only): the fake's ``namespaces``.
NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/([^/?]+)/?(?:\?.*)?$")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class JSONPatchError(ValueError):
    """An RFC 6902 operation that cannot be applied (the API server answers 422)."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JSONPatchError(f"path {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list, token: str, *, append: bool = False) -> int:
    if append and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise JSONPatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not append):
        raise JSONPatchError(f"index {i} is out of range (length {len(container)})")
    return i


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise JSONPatchError(f"/{'/'.join(tokens)}: {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token)]
        else:
            raise JSONPatchError(f"/{'/'.join(tokens)}: {token!r} is inside a value that is not an object or array")
    return node, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise JSONPatchError(f"{path}: does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last)]
    raise JSONPatchError(f"{path}: does not exist")


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise JSONPatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise JSONPatchError(f"{path}: does not exist")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    raise JSONPatchError(f"{path}: does not exist")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, append=True), value)
    else:
        raise JSONPatchError(f"{path}: the parent is not an object or array")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902: apply ``ops`` (add, remove, replace, move, copy, test) to a copy of ``doc``; all or nothing."""
    if not isinstance(ops, list):
        raise JSONPatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise JSONPatchError(f"not an operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JSONPatchError(f"{kind} {path}: no value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            if not _pointer(path):
                doc = copy.deepcopy(op["value"])
            else:
                _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if source is None:
                raise JSONPatchError(f"{kind} {path}: no from")
            if kind == "move" and (path + "/").startswith(source + "/") and path != source:
                raise JSONPatchError(f"move {source} into itself")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise JSONPatchError(f"testing value {path} failed")
        else:
            raise JSONPatchError(f"unknown operation {kind!r}")
    return doc


def _next_version(obj: dict) -> None:
    meta = obj.setdefault("metadata", {})
    meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)


class FakeKubernetesAPI:
    """Custom objects in memory, keyed by (namespace, plural, name)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path without the query)
        self.bodies: list[tuple[str, str, str, Any]] = []  # (method, path, Content-Type, body) of writes
        #: (method, plural) -> (code, reason, message): answer such requests with that refusal.
        self.fail: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.lock = threading.Lock()
        #: Namespaces a core ``GET /api/v1/namespaces/<name>`` finds (name -> labels); others answer 404.
        #: A refusal of such reads is scripted as ``fail[("GET", "namespaces")]``.
        self.namespaces: dict[str, dict[str, str]] = {}

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.namespaces[name] = {"kubernetes.io/metadata.name": name, **(labels or {})}

    # Hooks for a scripted controller, called under the lock.
    def on_create(self, plural: str, obj: dict) -> None:
        """After an object is stored by a POST."""

    def on_get(self, plural: str, obj: dict) -> None:
        """Before an object is returned by a GET."""

    def on_request(self, method: str, namespace: str, plural: str, name: str | None) -> None:
        """Before any request is handled (another client acting in between, say)."""

    def before_write(self, method: str, namespace: str, plural: str, name: str, subresource: str | None) -> None:
        """Just before a PATCH or PUT of a stored object is applied: another client (a controller) may change
        the object here with ``update_object``, between the writer's read and its write."""

    def update_object(self, key: tuple[str, str, str], change) -> dict:
        """Another client's write of the stored object ``key`` = (namespace, plural, name): ``change(obj)``
        edits it in place; the resourceVersion moves on (and the generation, when the spec changed).
        Call it from a hook (the lock is held) or while no request is in flight."""
        obj = self.objects[key]
        spec = copy.deepcopy(obj.get("spec"))
        change(obj)
        _next_version(obj)
        if obj.get("spec") != spec:
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return obj

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str, **details) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "reason": reason, "message": message, "details": details, "code": code})

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def _route(self, method: str):
                m = PATH.match(self.path)
                path = self.path.split("?")[0]
                with fake.lock:
                    fake.requests.append((method, path))
                if not m and method == "GET" and NAMESPACE_PATH.match(self.path):
                    return self._namespace(NAMESPACE_PATH.match(self.path).group(1))
                if not m:
                    return self._status(404, "NotFound", "the server could not find the requested resource")
                body = self._body() if method in ("POST", "PATCH", "PUT") else None
                with fake.lock:
                    if body is not None:
                        fake.bodies.append((method, path, self.headers.get("Content-Type", ""), copy.deepcopy(body)))
                    group, version, ns, plural, name, sub = m.groups()
                    fake.on_request(method, ns, plural, name)
                    if (method, plural) in fake.fail:
                        code, reason, message = fake.fail[(method, plural)]
                        return self._status(code, reason, message, group=group, kind=plural)
                    return self._handle(method, f"{group}/{version}", ns, plural, name, sub, body)

            def _namespace(self, name: str) -> None:
                with fake.lock:
                    if ("GET", "namespaces") in fake.fail:
                        code, reason, message = fake.fail[("GET", "namespaces")]
                        return self._status(code, reason, message, kind="namespaces", name=name)
                    labels = fake.namespaces.get(name)
                if labels is None:
                    return self._status(404, "NotFound", f'namespaces "{name}" not found', kind="namespaces",
                                        name=name)
                return self._send(200, {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": name, "labels": dict(labels), "uid": f"uid-ns-{name}",
                                                     "creationTimestamp": now()},
                                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

            def _handle(self, method, api_version, ns, plural, name, sub, body):
                key = (ns, plural, name)
                if method == "GET" and name is None:
                    items = [copy.deepcopy(o) for (n, p, _), o in fake.objects.items() if (n, p) == (ns, plural)]
                    return self._send(200, {"apiVersion": api_version, "kind": "List", "metadata": {}, "items": items})
                if method == "POST":
                    key = (ns, plural, body["metadata"]["name"])
                    if key in fake.objects:
                        return self._status(409, "AlreadyExists", f"{plural} \"{key[2]}\" already exists",
                                            name=key[2])
                    body["metadata"].update(namespace=ns, uid=f"uid-{len(fake.objects)}", creationTimestamp=now(),
                                            generation=1, resourceVersion="1")
                    fake.objects[key] = body
                    fake.on_create(plural, body)
                    return self._send(201, body)
                if key not in fake.objects:
                    return self._status(404, "NotFound", f"{plural} \"{name}\" not found", name=name)
                obj = fake.objects[key]
                if method == "GET":
                    fake.on_get(plural, obj)
                    return self._send(200, obj)
                if method == "DELETE":
                    del fake.objects[key]
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                if method in ("PATCH", "PUT"):
                    fake.before_write(method, ns, plural, name, sub)
                    if key not in fake.objects:
                        return self._status(404, "NotFound", f"{plural} \"{name}\" not found", name=name)
                    obj = fake.objects[key]
                    content_type = self.headers.get("Content-Type", "").split(";")[0]
                    sent = body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
                    if method == "PATCH" and content_type == "application/json-patch+json":
                        try:
                            patched = json_patch(obj, body)
                        except JSONPatchError as e:  # the API server's answer, plus the reason in causes
                            return self._status(422, "Invalid", "the server rejected our request due to an error "
                                                "in our request", causes=[{"message": str(e)}])
                        sent = (patched.get("metadata") or {}).get("resourceVersion")
                    elif method == "PUT" and not sent:
                        return self._status(422, "Invalid", f"{plural} \"{name}\" is invalid: "
                                            "metadata.resourceVersion: Invalid value: 0: must be specified for an "
                                            "update", name=name)
                    elif method == "PUT" and sub != "status":
                        patched = {**copy.deepcopy(body), "metadata": {**obj["metadata"], **body.get("metadata", {})}}
                    else:  # a status PUT or merge patch: its status replaces the stored one (as before)
                        patched = {**obj, "status": body.get("status", {})} if sub == "status" else None
                    version = obj.get("metadata", {}).get("resourceVersion")
                    if sent is not None and version is not None and str(sent) != str(version):
                        group = api_version.split("/")[0]
                        return self._status(409, "Conflict", f"Operation cannot be fulfilled on {plural}.{group} "
                                            f"\"{name}\": the object has been modified; please apply your changes "
                                            "to the latest version and try again", name=name, group=group, kind=plural)
                    if sub == "status":  # the status subresource writes the status only
                        if "status" in patched:
                            obj["status"] = patched["status"]
                        else:
                            obj.pop("status", None)
                        _next_version(obj)
                        return self._send(200, obj)
                    if patched is not None:  # a JSON patch or PUT of the object: its status stays as stored
                        patched.pop("status", None)
                        if "status" in obj:
                            patched["status"] = obj["status"]
                        if patched.get("spec") != obj.get("spec"):
                            patched["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
                        _next_version(patched)
                        fake.objects[key] = patched
                        return self._send(200, patched)
                if method == "PATCH":
                    if self.headers.get("Content-Type", "").split(";")[0] != "application/merge-patch+json":
                        return self._status(415, "UnsupportedMediaType", "only merge patches here")
                    patched = merge_patch(obj, {k: v for k, v in body.items() if k != "status"})
                    meta = patched["metadata"]
                    meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)
                    if patched.get("spec") != obj.get("spec"):
                        meta["generation"] = meta.get("generation", 1) + 1
                    fake.objects[key] = patched
                    return self._send(200, patched)
                return self._status(405, "MethodNotAllowed", method)

            def do_GET(self):  # noqa: N802
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def do_DELETE(self):  # noqa: N802
                self._route("DELETE")

            def do_PATCH(self):  # noqa: N802
                self._route("PATCH")

            def do_PUT(self):  # noqa: N802
                self._route("PUT")

        return Handler


@contextlib.contextmanager
def serving(fake: FakeKubernetesAPI):
    """Run ``fake`` on 127.0.0.1 (a free port); yields a ``kubernetes.client.Configuration`` pointing at it."""
    from kubernetes import client as k8s

    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = k8s.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield config
    finally:
        server.shutdown()
        server.server_close()
