"""A local HTTP server on 127.0.0.1 that speaks the Kubernetes API's custom-object endpoints, for driving
the real ``kubernetes`` client (and SDKs built on it, such as Katib's KatibClient) without a cluster.

It stores what it is sent: create (POST, 409 when the name exists), get, list, delete, a JSON merge
patch of an object (PATCH; the generation goes up when the spec changes, as the API server does for a
resource with a status subresource) and a status replacement (PATCH .../status). Subclasses script a
controller through ``on_create`` / ``on_get`` / ``on_request``; ``fail`` scripts refusals such as a 403.
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


class FakeKubernetesAPI:
    """Custom objects in memory, keyed by (namespace, plural, name)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path without the query)
        self.bodies: list[tuple[str, str, str, Any]] = []  # (method, path, Content-Type, body) of writes
        #: (method, plural) -> (code, reason, message): answer such requests with that refusal.
        self.fail: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.lock = threading.Lock()

    # Hooks for a scripted controller, called under the lock.
    def on_create(self, plural: str, obj: dict) -> None:
        """After an object is stored by a POST."""

    def on_get(self, plural: str, obj: dict) -> None:
        """Before an object is returned by a GET."""

    def on_request(self, method: str, namespace: str, plural: str, name: str | None) -> None:
        """Before any request is handled (another client acting in between, say)."""

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
                if method == "PATCH" and sub == "status":
                    obj["status"] = body.get("status", {})
                    return self._send(200, obj)
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
