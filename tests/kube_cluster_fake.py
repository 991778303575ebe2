"""A local stand-in of a whole cluster's API for tests: the custom-object server of ``kube_api_fake`` plus
the core and apiextensions reads a preflight makes (``/version``, nodes, namespaces, Secrets,
ConfigMaps, ServiceAccounts, CustomResourceDefinitions), each answered in the API server's own JSON
shapes (objects, lists, and ``Status`` bodies for 404 and scripted refusals); and a small Kubeflow
Pipelines endpoint whose healthz answers as the API server's does, behind a bearer-token check as a
Kubeflow platform's gateway puts it. The real ``kubernetes`` client talks to the first over HTTP,
``requests`` to the second. Imported by the tests (``tests/`` is on ``sys.path`` through its conftest)."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kube_api_fake import FakeKubernetesAPI, now

_NAMESPACED = re.compile(r"^/api/v1/namespaces/([^/]+)/([a-z]+)(?:/([^/]+))?/?$")
_CLUSTER = re.compile(r"^/api/v1/([a-z]+)(?:/([^/]+))?/?$")
_CRD = re.compile(r"^/apis/apiextensions\.k8s\.io/v1/(customresourcedefinitions)(?:/([^/]+))?/?$")
_KINDS = {  # kind -> (apiVersion, plural, namespaced)
    "Node": ("v1", "nodes", False),
    "Namespace": ("v1", "namespaces", False),
    "Secret": ("v1", "secrets", True),
    "ConfigMap": ("v1", "configmaps", True),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}
_LIST_KIND = {"nodes": "NodeList", "namespaces": "NamespaceList", "secrets": "SecretList",
              "configmaps": "ConfigMapList", "serviceaccounts": "ServiceAccountList",
              "customresourcedefinitions": "CustomResourceDefinitionList"}


class FakeCluster(FakeKubernetesAPI):
    """Custom objects as in ``FakeKubernetesAPI``; core and apiextensions objects in ``core``, keyed by
    (plural, namespace or None, name), put there with ``put``. ``fail[("GET", plural)]`` refuses reads
    of that plural (e.g. ``("GET", "nodes")`` -> 403) as for custom objects."""

    def __init__(self, git_version: str = "v1.31.4"):
        super().__init__()
        self.core: dict[tuple[str, str | None, str], dict] = {}
        self.git_version = git_version

    def put(self, obj: dict) -> dict:
        """Store a core or apiextensions object as the API server would return it (uid, resourceVersion,
        creationTimestamp added); replaces one of the same kind, namespace and name."""
        api_version, plural, namespaced = _KINDS[obj["kind"]]
        obj = copy.deepcopy(obj)
        obj["apiVersion"] = api_version
        meta = obj.setdefault("metadata", {})
        if namespaced and not meta.get("namespace"):
            raise ValueError(f"{obj['kind']} {meta.get('name')}: no namespace")
        meta.setdefault("uid", f"uid-{plural}-{meta.get('namespace', '')}-{meta['name']}")
        meta.setdefault("resourceVersion", str(len(self.core) + 1))
        meta.setdefault("creationTimestamp", now())
        with self.lock:
            self.core[(plural, meta.get("namespace") if namespaced else None, meta["name"])] = obj
        return obj

    def remove(self, kind: str, name: str, namespace: str | None = None) -> None:
        with self.lock:
            del self.core[(_KINDS[kind][1], namespace, name)]

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        """The stored object itself (edit it in place to change what the next read sees)."""
        return self.core[(_KINDS[kind][1], namespace, name)]

    def handler(self):
        fake, base = self, super().handler()

        class Handler(base):
            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path in ("/version", "/version/"):  # the client asks for /version/
                    with fake.lock:
                        fake.requests.append(("GET", path))
                    return self._send(200, {"major": "1", "minor": fake.git_version.split(".")[1],
                                            "gitVersion": fake.git_version, "platform": "linux/amd64"})
                m = _NAMESPACED.match(path)
                if m:
                    return self._core(path, "v1", m.group(2), m.group(1), m.group(3))
                m = _CLUSTER.match(path)
                if m:
                    return self._core(path, "v1", m.group(1), None, m.group(2))
                m = _CRD.match(path)
                if m:
                    return self._core(path, "apiextensions.k8s.io/v1", m.group(1), None, m.group(2))
                return super().do_GET()

            def _core(self, path: str, api_version: str, plural: str, namespace: str | None, name: str | None):
                with fake.lock:
                    fake.requests.append(("GET", path))
                    if ("GET", plural) in fake.fail:
                        code, reason, message = fake.fail[("GET", plural)]
                        return self._status(code, reason, message, kind=plural, **({"name": name} if name else {}))
                    if name is None:
                        items = [copy.deepcopy(o) for (p, ns, _), o in sorted(fake.core.items(), key=_by_name)
                                 if p == plural and (namespace is None or ns == namespace)]
                        return self._send(200, {"apiVersion": api_version, "kind": _LIST_KIND.get(plural, "List"),
                                                "metadata": {"resourceVersion": str(len(fake.core))}, "items": items})
                    obj = copy.deepcopy(fake.core.get((plural, namespace, name)))
                if obj is None:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found', kind=plural, name=name)
                return self._send(200, obj)

        return Handler


def _by_name(item) -> str:
    return item[0][2]


# --- objects in the API server's shapes ----------------------------------------------------------

def node(name: str, *, labels: dict[str, str] | None = None, taints: list[dict] | None = None,
         allocatable: dict[str, str] | None = None, capacity: dict[str, str] | None = None, ready: bool = True,
         unschedulable: bool = False) -> dict:
    """A node; the default allocatable is that of a 4-vCPU, 28 GiB VM after the kubelet's reservations."""
    allocatable = {"cpu": "3860m", "memory": "27601704Ki", "pods": "110", "ephemeral-storage": "119703055367",
                   **(allocatable or {})}
    capacity = {**allocatable, "cpu": "4", "memory": "28811396Ki", **(capacity or {})}
    spec: dict[str, Any] = {"podCIDR": "10.244.1.0/24", "providerID": f"azure:///subscriptions/x/{name}"}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                 "kubernetes.io/arch": "amd64", **(labels or {})}},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": allocatable,
                   "conditions": [{"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                                   "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                                  {"type": "Ready", "status": "True" if ready else "False",
                                   "reason": "KubeletReady" if ready else "KubeletNotReady",
                                   "message": "kubelet is posting ready status" if ready else "PLEG is not healthy",
                                   "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                   "nodeInfo": {"kubeletVersion": "v1.31.4", "containerRuntimeVersion": "containerd://1.7.27",
                                "operatingSystem": "linux", "architecture": "amd64",
                                "osImage": "Ubuntu 22.04.5 LTS", "kernelVersion": "5.15.0-1089-azure"}}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def secret(name: str, ns: str, values: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    """An Opaque Secret; the API server returns ``stringData`` as base64 ``data``."""
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return {"kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


def config_map(name: str, ns: str, data: dict[str, str]) -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def service_account(name: str, ns: str, secrets: list[str] | None = None) -> dict:
    obj: dict[str, Any] = {"kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}
    if secrets is not None:
        obj["secrets"] = [{"name": s} for s in secrets]
    return obj


def crd(group: str, plural: str, kind: str, version: str = "v1beta1", *, served: bool = True,
        established: bool = True, scope: str = "Namespaced") -> dict:
    singular = kind.lower()
    condition = {"type": "Established", "status": "True" if established else "False",
                 "reason": "InitialNamesAccepted" if established else "Installing",
                 "message": "the initial names have been accepted" if established else "the CRD is being installed",
                 "lastTransitionTime": now()}
    return {"kind": "CustomResourceDefinition", "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": scope,
                     "names": {"plural": plural, "singular": singular, "kind": kind, "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": served, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}},
                                   "subresources": {"status": {}}}]},
            "status": {"acceptedNames": {"plural": plural, "singular": singular, "kind": kind,
                                         "listKind": f"{kind}List"},
                       "conditions": [{"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                       "message": "no conflicts found", "lastTransitionTime": now()}, condition],
                       "storedVersions": [version]}}


# --- the Pipelines endpoint ------------------------------------------------------------------------

class FakePipelines:
    """``GET /apis/v2beta1/healthz`` as the KFP API server answers it (commit_sha, tag_name, multi_user),
    behind a gateway that wants ``Authorization: Bearer <token>`` when ``token`` is set: without one it
    redirects to its login page (302), with another it answers 403."""

    def __init__(self, tag_name: str = "2.15.0", multi_user: bool = False, token: str | None = None):
        self.tag_name, self.multi_user, self.token = tag_name, multi_user, token
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: bytes, content_type: str, **headers) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                auth = self.headers.get("Authorization")
                fake.requests.append((self.path, auth))
                if fake.token is not None and auth is None:
                    return self._reply(302, b"", "text/html", Location=f"/oauth2/start?rd={self.path}")
                if fake.token is not None and auth != f"Bearer {fake.token}":
                    return self._reply(403, b"RBAC: access denied", "text/plain")
                if self.path.split("?")[0] != "/apis/v2beta1/healthz":
                    return self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
                body = json.dumps({"commit_sha": "6c2b1b7", "tag_name": fake.tag_name,
                                   "multi_user": fake.multi_user}).encode()
                return self._reply(200, body, "application/json")

        return Handler


@contextlib.contextmanager
def serve_http(handler) -> Iterator[str]:
    """Serve a request handler class on 127.0.0.1 (a free port); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
