"""``automl-vision doctor``: what a first run on a cluster needs, checked with the user's own credentials.

Each check is a function that takes the clients it needs and returns findings: OK, WARN (it may still
work, or it could not be checked from here) or PROBLEM (a run will fail), each problem with the command
or setting that fixes it. ``run_checks`` runs them all; the CLI prints them and exits 2 when any
finding is a PROBLEM.

The cluster is read through the official ``kubernetes`` client, its answers taken as plain JSON
(``_preload_content=False``): what is checked is what the API server sent, not the client's model
classes' reading of it. The Pipelines API is asked over plain HTTP (``requests``), as ``kfp.Client`` is.

Where each rule comes from:

- Pipelines: the API server answers ``GET /apis/v2beta1/healthz`` with ``commit_sha``, ``tag_name``
  (the release, e.g. ``2.15.0``; ``unknown`` when the image was built without one) and ``multi_user``
  (kubeflow/pipelines backend/src/apiserver/main.go, ``healthzResponse``, the same since 2.0.0; the route
  is declared in backend/api/v2beta1/healthz.proto, whose message carries only ``multi_user`` and
  ``pipeline_store``). The oldest release the pipeline runs on is ``pipeline.OLDEST_KFP_BACKEND``.
- Katib: the CRDs ``experiments``, ``trials`` and ``suggestions`` of group ``kubeflow.org``
  (kubeflow/katib manifests/v1beta1/components/crd/); the ConfigMap ``katib-config``, key
  ``katib-config.yaml``, in Katib's namespace (``kubeflow`` unless KATIB_CORE_NAMESPACE says otherwise),
  whose ``runtime.earlyStoppings[].algorithmName`` names the algorithms, each with a non-empty ``image``
  (pkg/controller.v1beta1/consts/const.go, pkg/util/v1beta1/katibconfig/config.go); the pod webhook only
  injects the metrics collector in namespaces labelled ``katib.kubeflow.org/metrics-collector-injection:
  enabled`` (manifests/v1beta1/components/webhook/webhooks.yaml).
- Taints: ``tolerates`` follows ``Toleration.ToleratesTaint`` of k8s.io/api core/v1/toleration.go; only
  NoSchedule and NoExecute taints keep a pod off a node (the scheduler's TaintToleration filter,
  ``DoNotScheduleTaintsFilterFunc``).
- Driver: NVIDIA's GPU feature discovery labels each GPU node with ``nvidia.com/cuda.driver-version.*``
  (earlier: ``nvidia.com/cuda.driver.*``, still set) (NVIDIA/k8s-device-plugin internal/lm/nvml.go);
  the oldest driver each CUDA major release runs on is NVIDIA's table "CUDA Toolkit 11.x, 12.x, and 13.x
  Driver Version Ranges" (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
- KServe: the CRD ``inferenceservices.serving.kserve.io``; its pod-mutating webhook (which adds the
  storage initializer) skips namespaces that carry a ``control-plane`` label (kserve/kserve
  config/webhook/manifests.yaml), and the storage initializer reads the credentials of the Secrets the
  predictor's ServiceAccount lists (pkg/credentials/service_account_credentials.go).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError

from automl_vision.earlystopping.rules import ALGORITHMS
from automl_vision.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError
from automl_vision.kubeapi import status_message
from automl_vision.pipeline.pipeline import OLDEST_KFP_BACKEND
from automl_vision.pipeline.submit import HOW_TO_AUTHENTICATE, NO_CREDENTIALS, find_credentials
from automl_vision.serving.deploy import DEFAULT_SERVING_NAMESPACE
from automl_vision.spec.cluster import ClusterSettings, GpuPool

OK, WARN, PROBLEM = "OK", "WARN", "PROBLEM"

# --- what a run needs ----------------------------------------------------------------------------

HEALTHZ_PATH = "/apis/v2beta1/healthz"

KATIB_GROUP, KATIB_VERSION = "kubeflow.org", "v1beta1"
KATIB_PLURALS = ("experiments", "trials", "suggestions")
KATIB_NAMESPACE = "kubeflow"
KATIB_CONFIG_MAP, KATIB_CONFIG_KEY = "katib-config", "katib-config.yaml"
METRICS_COLLECTOR_LABEL = "katib.kubeflow.org/metrics-collector-injection"

KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
#: KServe's pod webhook leaves namespaces with this label alone (no storage initializer).
KSERVE_SKIP_LABEL = "control-plane"
#: Where KServe's storage initializer takes an S3 endpoint from (pkg/credentials/s3/utils.go).
KSERVE_S3_ENDPOINT = "serving.kserve.io/s3-endpoint"
#: The ServiceAccount the deploy step's InferenceService runs as (its Secret holds the download credentials).
SERVING_SERVICE_ACCOUNT = "automl-vision-serving"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

#: The CUDA release of the GPU image's torch wheels (images/pin_requirements.py, CUDA_VARIANT cu126);
#: a test keeps the two in step.
GPU_IMAGE_CUDA = "12.6"
#: The oldest NVIDIA driver branch that runs each CUDA major release (minor version compatibility).
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}
#: GPU feature discovery's driver labels: the current names, then the older ones it still writes.
DRIVER_FULL_LABEL = "nvidia.com/cuda.driver-version.full"
DRIVER_MAJOR_LABELS = ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major")

PLACEHOLDER_PREFIX = "REPLACE-"
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    """One line of the report: which check, OK | WARN | PROBLEM, what was found, and how to fix it."""

    check: str
    status: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What to check: the namespaces, the cluster settings the pipeline is compiled with, the endpoints."""

    namespace: str
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    serving_namespace: str | None = None  # None: the deploy step's default (DEFAULT_SERVING_NAMESPACE)
    kubeflow_url: str | None = None
    # pipeline.submit.Credentials (None: find_credentials(), as run --kubeflow); kept out of repr: a token
    credentials: Any = field(default=None, repr=False)
    katib_namespace: str = KATIB_NAMESPACE
    s3_endpoint: str | None = None  # instead of the Secret's AWS_ENDPOINT_URL (e.g. through a port-forward)
    timeout_s: float = TIMEOUT_S

    @property
    def serving(self) -> str:
        return self.serving_namespace or DEFAULT_SERVING_NAMESPACE


# --- the Kubernetes API, as JSON -----------------------------------------------------------------

class _Unreachable(Exception):
    """The API server did not answer at all."""


def _get(call: Callable[..., Any], *args, timeout_s: float = TIMEOUT_S) -> tuple[int, dict | None, str]:
    """(HTTP status, the object or None, the API server's message) of one read."""
    try:
        response = call(*args, _preload_content=False, _request_timeout=timeout_s)
    except ApiException as e:
        return e.status, None, _message(e)
    except HTTPError as e:
        raise _Unreachable(str(e)) from None
    try:
        return response.status, json.loads(response.data or b"{}"), ""
    except ValueError:
        raise _Unreachable(f"{response.geturl() or 'a read'} answered {response.status}, but not with JSON: is the "
                           "kubeconfig's server the Kubernetes API?") from None


def _message(e: Any) -> str:
    return status_message(e) or str(getattr(e, "reason", "") or e)


def _denied(check: str, what: str, status: int, message: str) -> Finding:
    """A read the API server refused: WARN (cannot tell from here) for 403, PROBLEM for anything else."""
    if status == 403:
        return Finding(check, WARN, f"cannot check {what}: your identity may not read it (403: {message})",
                       "run doctor as someone who may (a cluster admin), or ask one to check")
    if status == 401:
        return Finding(check, PROBLEM, f"the API server refused your credentials reading {what} (401: {message})",
                       "refresh the kubeconfig's credentials (e.g. az aks get-credentials, or log in again)")
    return Finding(check, PROBLEM, f"reading {what}: the API server answered {status}: {message}")


def kubernetes_client(client: Any = None):
    """A ``kubernetes.client.ApiClient``: ``client`` itself (an ApiClient or Configuration), else the pod's
    service account in a cluster, else the kubeconfig ($KUBECONFIG, else ~/.kube/config). Raises
    ConfigError when there are no credentials."""
    if isinstance(client, k8s.ApiClient):
        return client
    if isinstance(client, k8s.Configuration):
        return k8s.ApiClient(client)
    if client is not None:
        raise TypeError(f"client: expected a kubernetes ApiClient or Configuration, got {type(client).__name__}")
    configuration = k8s.Configuration()  # our own: loading into the global default redirects other clients
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except kube_config.ConfigException as e:
            in_cluster = str(e)
    else:
        in_cluster = "not running in a pod"
    kubeconfig = os.environ.get("KUBECONFIG") or None
    try:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (kube_config.ConfigException, OSError) as e:
        raise ConfigError(f"no Kubernetes credentials: {in_cluster}, and no usable kubeconfig "
                          f"({kubeconfig or '~/.kube/config'}: {e}); point KUBECONFIG at your cluster's config "
                          "(e.g. az aks get-credentials --resource-group RG --name CLUSTER)", "doctor") from None
    return k8s.ApiClient(configuration)


def default_namespace(pod_namespace_file: str | Path = POD_NAMESPACE_FILE) -> str:
    """The pod's namespace in a cluster, else the kubeconfig context's, else ``kubeflow`` (where a
    standalone Kubeflow Pipelines runs its pipelines, and manifests/ install what they need)."""
    path = Path(pod_namespace_file)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    try:
        _, active = kube_config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return namespace
    except Exception:  # no kubeconfig, or one without contexts
        pass
    return KATIB_NAMESPACE


def check_api_server(api) -> list[Finding]:
    """The API server answers ``/version`` with these credentials."""
    host = api.configuration.host
    try:
        status, version, message = _get(k8s.VersionApi(api).get_code)
    except _Unreachable as e:
        return [Finding("kubernetes", PROBLEM, f"cannot reach the Kubernetes API server at {host}: {e}",
                        "check the kubeconfig's current context (kubectl config current-context) and that "
                        "kubectl get nodes answers")]
    if status != 200:
        return [_denied("kubernetes", f"the API server's version at {host}", status, message)]
    return [Finding("kubernetes", OK, f"API server {host} answers (Kubernetes {version.get('gitVersion', '?')})")]


# --- Kubeflow Pipelines --------------------------------------------------------------------------

def parse_version(text: str) -> tuple[int, int, int] | None:
    """``2.15.0``, ``v2.15.1-rc.0`` -> (2, 15, 0); None for ``unknown``, ``master`` and the like."""
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or "").strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def check_pipelines(url: str | None, credentials: Any = None, *, namespace: str | None = None,
                    timeout_s: float = TIMEOUT_S) -> list[Finding]:
    """The Pipelines API answers its healthz route with the token ``run --kubeflow`` would send
    (``credentials``: a ``pipeline.submit.Credentials``, default ``find_credentials()``: --token-file,
    $KF_PIPELINES_TOKEN, the in-pod ServiceAccount token), and its release is one the compiled pipeline
    runs on (``OLDEST_KFP_BACKEND`` or later)."""
    check = "pipelines"
    if not url:
        return [Finding(check, WARN, "not checked: no Pipelines endpoint given",
                        "rerun with --kubeflow URL (the URL run --kubeflow takes, e.g. https://kubeflow.example.com/"
                        "pipeline, or http://localhost:8080 after kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
                        "8080:80)")]
    endpoint = url.rstrip("/") + HEALTHZ_PATH
    headers = {"Accept": "application/json"}
    try:
        credentials = credentials if credentials is not None else find_credentials()
        token = credentials.current()
    except ConfigError as e:
        return [Finding(check, PROBLEM, "; ".join(e.problems), HOW_TO_AUTHENTICATE)]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    sent = "without a token" if credentials is NO_CREDENTIALS else f"with the token from {credentials.source}"
    token_fix = HOW_TO_AUTHENTICATE if credentials is NO_CREDENTIALS else \
        ("get a token this Kubeflow accepts for the namespace, e.g. export KF_PIPELINES_TOKEN=$(kubectl -n PROFILE "
         "create token default-editor)")
    try:
        r = requests.get(endpoint, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as e:
        return [Finding(check, PROBLEM, f"cannot reach the Pipelines API at {endpoint}: {_short(e)}",
                        "check the URL; from outside the cluster: kubectl port-forward -n kubeflow "
                        "svc/ml-pipeline-ui 8080:80, then --kubeflow http://localhost:8080")]
    if r.is_redirect or 300 <= r.status_code < 400:
        where = r.headers.get("Location", "?")
        return [Finding(check, PROBLEM, f"{endpoint} redirects ({r.status_code}) {sent} to {where}: a login page "
                        "in front of the API", token_fix)]
    if r.status_code in (401, 403):
        return [Finding(check, PROBLEM, f"the Pipelines API refused the request {sent} ({r.status_code}: "
                        f"{_short(r.text)})", token_fix)]
    if r.status_code == 404:
        return [Finding(check, PROBLEM, f"no Pipelines API at {url} ({endpoint} answered 404)",
                        "give the Pipelines endpoint: the Kubeflow URL ending in /pipeline, or the ml-pipeline-ui "
                        "Service (port-forward: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80)")]
    if r.status_code != 200:
        return [Finding(check, PROBLEM, f"{endpoint} answered {r.status_code}: {_short(r.text)}",
                        "check the Pipelines API server: kubectl get pods -n kubeflow -l app=ml-pipeline")]
    try:
        health = r.json()
        if not isinstance(health, dict):
            raise ValueError("not an object")
    except ValueError:
        return [Finding(check, PROBLEM, f"{endpoint} answered, but not with the Pipelines API's JSON "
                        f"({r.headers.get('Content-Type', 'no content type')}): is {url} the Pipelines endpoint?",
                        "give the Pipelines endpoint: the Kubeflow URL ending in /pipeline, or the ml-pipeline-ui "
                        "Service")]
    tag = str(health.get("tag_name", ""))
    mode = "multi-user" if health.get("multi_user") else "single-user"
    findings = []
    version, minimum = parse_version(tag), parse_version(OLDEST_KFP_BACKEND)
    kustomize = "github.com/kubeflow/pipelines/manifests/kustomize"
    upgrade = (f"upgrade Kubeflow Pipelines to a release of {OLDEST_KFP_BACKEND} or later (standalone: kubectl "
               f"apply -k \"{kustomize}/cluster-scoped-resources?ref=VERSION\", then kubectl apply -k "
               f"\"{kustomize}/env/platform-agnostic?ref=VERSION\"; a Kubeflow platform: a release that ships one)")
    if version is None:
        findings.append(Finding(check, WARN, f"Pipelines API at {url} answers ({mode}), but does not say its "
                                f"release (tag_name {tag or 'missing'!r}); it must be {OLDEST_KFP_BACKEND} or later",
                                "check the image tag: kubectl get deployment ml-pipeline -n kubeflow -o "
                                "jsonpath='{.spec.template.spec.containers[0].image}'"))
    elif version < minimum:
        findings.append(Finding(check, PROBLEM, f"Pipelines API at {url} is release {tag}; the pipeline needs "
                                f"{OLDEST_KFP_BACKEND} or later (an older driver fails steps on the Kubernetes "
                                "settings the pipeline gives them)", upgrade))
    else:
        findings.append(Finding(check, OK, f"Pipelines API at {url} answers {sent}: release {tag}, {mode}"))
    if health.get("multi_user") and namespace == KATIB_NAMESPACE:
        findings.append(Finding(check, WARN, f"a multi-user Kubeflow runs pipelines in profile namespaces, not "
                                f"{namespace}", "rerun with --namespace YOUR-PROFILE (what run --kubeflow takes)"))
    return findings


def _short(value: Any, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- Katib ---------------------------------------------------------------------------------------

def _crd_state(crd: Mapping[str, Any], version: str) -> str | None:
    """None when the CRD serves ``version`` and is Established, else what is wrong."""
    versions = {v.get("name"): v for v in (crd.get("spec") or {}).get("versions") or []}
    if version not in versions:
        return f"does not have version {version} (it has {', '.join(sorted(map(str, versions))) or 'none'})"
    if not versions[version].get("served", False):
        return f"does not serve version {version}"
    conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
    established = conditions.get("Established", {})
    if established.get("status") != "True":
        reason = ": ".join(x for x in (established.get("reason"), established.get("message")) if x)
        return "is not Established" + (f" ({reason})" if reason else "")
    return None


def _check_crds(api, check: str, group: str, version: str, plurals: Sequence[str], namespace: str,
                install: str, timeout_s: float) -> list[Finding]:
    """Each CRD read cluster-wide; where that is forbidden, seen through a list in the namespace instead."""
    ext, custom = k8s.ApiextensionsV1Api(api), k8s.CustomObjectsApi(api)
    missing, broken, unknown, seen_in_namespace = [], [], [], []
    for plural in plurals:
        name = f"{plural}.{group}"
        status, crd, message = _get(ext.read_custom_resource_definition, name, timeout_s=timeout_s)
        if status == 200:
            state = _crd_state(crd, version)
            if state:
                broken.append(f"{name} {state}")
            continue
        if status == 404:
            missing.append(name)
            continue
        if status != 403:
            return [_denied(check, f"CustomResourceDefinition {name}", status, message)]
        # A profile user may not read CRDs (cluster-scoped); listing the kind in the namespace tells too.
        status, _, message = _get(custom.list_namespaced_custom_object, group, version, namespace, plural,
                                  timeout_s=timeout_s)
        if status == 200:
            seen_in_namespace.append(name)
        elif status == 404:
            missing.append(name)
        else:
            unknown.append(f"{name} ({status}: {message})")
    if missing or broken:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + broken
        return [Finding(check, PROBLEM, "; ".join(parts), install)]
    if unknown:
        return [Finding(check, WARN, f"cannot check {', '.join(unknown)}: your identity may not read them",
                        "run doctor as a cluster admin, or ask one: kubectl get crd " +
                        " ".join(f"{p}.{group}" for p in plurals))]
    how = f" (seen through namespace {namespace})" if seen_in_namespace else ""
    return [Finding(check, OK, f"{', '.join(f'{p}.{group}' for p in plurals)} installed, serving {version}{how}")]


def check_katib(api, target: Target) -> list[Finding]:
    """Katib's CRDs, and our early-stopping algorithms registered in its katib-config."""

    findings = _check_crds(api, "katib", KATIB_GROUP, KATIB_VERSION, KATIB_PLURALS, target.namespace,
                           "install Katib: kubectl apply --server-side -k \"github.com/kubeflow/katib.git/manifests/"
                           "v1beta1/installs/katib-standalone?ref=v0.19.0\" (a Kubeflow platform includes it)",
                           target.timeout_s)
    check, ns = "katib-early-stopping", target.katib_namespace
    where = f"ConfigMap {ns}/{KATIB_CONFIG_MAP}"
    fix = (f"automl-vision katib-config --from-cluster --katib-namespace {ns} --image "
           "REGISTRY/automl-vision-earlystopping:VERSION | kubectl replace -f -  (adds "
           + " and ".join(f"{{algorithmName: {a}, image: ...}}" for a in ALGORITHMS)
           + f" to runtime.earlyStoppings of {KATIB_CONFIG_KEY}, keeping the rest; the image is built from "
           "images/earlystopping; docs/kubeflow.md)")
    status, cm, message = _get(k8s.CoreV1Api(api).read_namespaced_config_map, KATIB_CONFIG_MAP, ns,
                               timeout_s=target.timeout_s)
    if status == 404:
        return findings + [Finding(check, PROBLEM, f"no {where}: Katib is not installed in {ns}, or elsewhere",
                                   "install Katib, then " + fix)]
    if status != 200:
        return findings + [_denied(check, where, status, message)]
    text = (cm.get("data") or {}).get(KATIB_CONFIG_KEY)
    if text is None:
        return findings + [Finding(check, PROBLEM, f"{where} has no key {KATIB_CONFIG_KEY}", fix)]
    try:
        config = yaml.safe_load(text) or {}
        entries = ((config.get("runtime") or {}).get("earlyStoppings") or []) if isinstance(config, dict) else None
        if not isinstance(entries, list):
            raise ValueError("runtime.earlyStoppings is not a list")
    except (yaml.YAMLError, ValueError, AttributeError) as e:
        return findings + [Finding(check, PROBLEM, f"{where}: {KATIB_CONFIG_KEY} is not a KatibConfig Katib can "
                                   f"read: {_short(e)}", fix)]
    images = {e.get("algorithmName"): str(e.get("image") or "").strip() for e in entries if isinstance(e, dict)}
    missing = [a for a in ALGORITHMS if a not in images]
    no_image = [a for a in ALGORITHMS if a in images and not images[a]]
    if missing or no_image:
        parts = ([f"not registered: {', '.join(missing)}"] if missing else []) + \
                ([f"registered without an image: {', '.join(no_image)}"] if no_image else [])
        return findings + [Finding(check, PROBLEM, f"{where}: early-stopping algorithms {'; '.join(parts)} "
                                   f"(Katib refuses Experiments that ask for them)", fix)]
    listed = ", ".join(f"{a} ({images[a]})" for a in ALGORITHMS)
    return findings + [Finding(check, OK, f"{where} registers {listed}")]


def _read_namespace(api, name: str, timeout_s: float) -> tuple[int, dict | None, str]:
    return _get(k8s.CoreV1Api(api).read_namespace, name, timeout_s=timeout_s)


def check_metrics_collector_label(api, target: Target) -> list[Finding]:
    """The namespace of the trials carries the label Katib's pod webhook selects."""
    check, ns = "katib-metrics-label", target.namespace
    status, obj, message = _read_namespace(api, ns, target.timeout_s)
    if status == 404:
        return [Finding(check, PROBLEM, f"namespace {ns} does not exist", f"kubectl create namespace {ns}, or "
                        "give the namespace the pipeline runs in with --namespace")]
    if status != 200:
        return [_denied(check, f"namespace {ns}", status, message)]
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(METRICS_COLLECTOR_LABEL)
    if value != "enabled":
        found = f"it is {value!r}" if value is not None else "it is missing"
        return [Finding(check, PROBLEM, f"namespace {ns} lacks {METRICS_COLLECTOR_LABEL}=enabled ({found}): Katib "
                        "would inject no metrics collector and every trial would end without metrics",
                        f"kubectl label namespace {ns} {METRICS_COLLECTOR_LABEL}=enabled --overwrite")]
    return [Finding(check, OK, f"namespace {ns} has {METRICS_COLLECTOR_LABEL}=enabled")]


# --- GPU nodes -----------------------------------------------------------------------------------

def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether the toleration tolerates the taint, by Kubernetes' rules (core/v1 ToleratesTaint): an empty
    effect matches every effect; an empty key (operator Exists) matches every key; Exists matches every
    value, Equal (or no operator) only the same value. Lt and Gt (an alpha feature) never match here."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or ""
    if operator in ("", "Equal"):
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return operator == "Exists"


def untolerated_taints(taints: Iterable[Mapping[str, Any]], tolerations: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The taints that keep a pod with these tolerations off the node: NoSchedule and NoExecute ones no
    toleration tolerates (PreferNoSchedule only makes the scheduler avoid the node)."""
    return [dict(t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")
            and not any(tolerates(tol, t) for tol in tolerations)]


def pool_tolerations(pool: GpuPool) -> list[dict[str, Any]]:
    return [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value), ("effect", t.effect))
             if v is not None} for t in pool.tolerations]


def _taint_text(t: Mapping[str, Any]) -> str:
    value = f"={t['value']}" if t.get("value") else ""
    return f"{t.get('key')}{value}:{t.get('effect')}"


def _toleration_for(t: Mapping[str, Any]) -> str:
    if t.get("value"):
        return f"{{key: {t.get('key')}, operator: Equal, value: {t['value']}, effect: {t.get('effect')}}}"
    return f"{{key: {t.get('key')}, operator: Exists, effect: {t.get('effect')}}}"


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        return None


def _memory_text(n: Decimal) -> str:
    return f"{n / (1 << 30):.1f}Gi"


def _gpu_node_problems(node: Mapping[str, Any], pool: GpuPool) -> list[tuple[str, str]]:
    """(what keeps a GPU step off this node, the fix) for each reason; [] when one fits."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    name, labels = meta.get("name", "?"), meta.get("labels") or {}
    allocatable = status.get("allocatable") or {}
    out = []
    gpus = _quantity(allocatable.get(pool.accelerator_type, "0")) or Decimal(0)
    if gpus < pool.accelerator_limit:
        out.append((f"{gpus} allocatable {pool.accelerator_type}, a step asks for {pool.accelerator_limit}",
                    f"set gpu.accelerator_limit to at most {gpus} in the cluster settings"))
    ready = {c.get("type"): c.get("status") for c in status.get("conditions") or []}.get("Ready")
    if ready != "True":
        out.append((f"not Ready (Ready={ready})", f"kubectl describe node {name}"))
    if spec.get("unschedulable"):
        out.append(("cordoned", f"kubectl uncordon {name}"))
    for key, value in sorted(pool.node_selector.items()):
        if labels.get(key) != value:
            has = f"it has {labels[key]!r}" if key in labels else "it has none"
            out.append((f"label {key}={value} of gpu.node_selector missing ({has})",
                        f"put a label the GPU nodes carry in gpu.node_selector of the cluster settings, or "
                        f"kubectl label node {name} {key}={value} --overwrite"))
    for taint in untolerated_taints(spec.get("taints") or [], pool_tolerations(pool)):
        out.append((f"taint {_taint_text(taint)} not tolerated",
                    f"add {_toleration_for(taint)} to gpu.tolerations in the cluster settings"))
    cpu, memory = _quantity(allocatable.get("cpu", "0")), _quantity(allocatable.get("memory", "0"))
    want_cpu, want_memory = _quantity(pool.cpu), _quantity(pool.memory)
    if cpu is not None and want_cpu is not None and cpu < want_cpu:
        out.append((f"allocatable cpu {cpu.normalize():f} below the request {pool.cpu}",
                    f"set gpu.cpu to at most {cpu.normalize():f} in the cluster settings (or use a larger VM size)"))
    if memory is not None and want_memory is not None and memory < want_memory:
        out.append((f"allocatable memory {_memory_text(memory)} below the request {pool.memory}",
                    f"set gpu.memory to at most {_memory_text(memory)} in the cluster settings "
                    "(or use a larger VM size)"))
    return out


def _list_nodes(api, timeout_s: float) -> tuple[int, list[dict], str]:
    status, obj, message = _get(k8s.CoreV1Api(api).list_node, timeout_s=timeout_s)
    return status, list((obj or {}).get("items") or []), message


def check_gpu_nodes(api, target: Target, nodes: list[dict] | None = None) -> list[Finding]:
    """At least one node a GPU step can land on: the accelerator allocatable, the pool's labels, every
    NoSchedule/NoExecute taint tolerated, enough allocatable CPU and memory; then its driver."""
    check, pool = "gpu-nodes", target.settings.gpu
    if pool is None:
        return [Finding(check, OK, "the cluster settings have no GPU pool (gpu: null): every step runs on CPU nodes")]
    if nodes is None:
        status, nodes, message = _list_nodes(api, target.timeout_s)
        if status != 200:
            return [_denied(check, "the nodes", status, message)]
    gpu_nodes = [n for n in nodes if (_quantity(((n.get("status") or {}).get("allocatable") or {})
                                                .get(pool.accelerator_type, "0")) or 0) > 0]
    if not gpu_nodes:
        return [Finding(check, PROBLEM, f"no node has allocatable {pool.accelerator_type} ({len(nodes)} node(s) "
                        "in the cluster)",
                        "add a GPU node pool with the NVIDIA device plugin (AKS: az aks nodepool add ... "
                        "--node-vm-size Standard_NC24ads_A100_v4 --node-taints sku=gpu:NoSchedule; elsewhere the "
                        "NVIDIA GPU operator), or set gpu: null in the cluster settings to run every step on CPU")]
    problems = {n["metadata"]["name"]: _gpu_node_problems(n, pool) for n in gpu_nodes}
    fitting = sorted(name for name, found in problems.items() if not found)
    step = f"a GPU step ({pool.accelerator_limit} {pool.accelerator_type}, cpu {pool.cpu}, memory {pool.memory})"
    if not fitting:
        shown = sorted(problems.items())[:5]
        reasons = "; ".join(f"{name}: {', '.join(r for r, _ in found)}" for name, found in shown)
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        fixes = list(dict.fromkeys(f for found in problems.values() for _, f in found))
        return [Finding(check, PROBLEM, f"no GPU node takes {step}: {reasons}{more}", "; ".join(fixes[:6]))]
    return [Finding(check, OK, f"{len(fitting)} of {len(gpu_nodes)} GPU node(s) take {step}: {', '.join(fitting)}")]


def driver_version(labels: Mapping[str, str]) -> tuple[int, str] | None:
    """(major, as written) of the node's NVIDIA driver from GPU feature discovery's labels; None without them."""
    full = labels.get(DRIVER_FULL_LABEL) or ""
    m = re.match(r"^(\d+)\.", full)
    if m:
        return int(m.group(1)), full
    for label in DRIVER_MAJOR_LABELS:
        value = labels.get(label, "")
        if value.isdigit():
            return int(value), value
    return None


def check_gpu_driver(nodes: list[dict], target: Target, cuda: str = GPU_IMAGE_CUDA) -> list[Finding]:
    """The driver of the GPU nodes a step can land on (all GPU nodes when none fits) runs the GPU image's
    CUDA release, where the nodes' labels say which driver they have."""
    check, pool = "gpu-driver", target.settings.gpu
    if pool is None:
        return []
    gpu_nodes = [n for n in nodes if (_quantity(((n.get("status") or {}).get("allocatable") or {})
                                                .get(pool.accelerator_type, "0")) or 0) > 0]
    if not gpu_nodes:
        return []
    fitting = [n for n in gpu_nodes if not _gpu_node_problems(n, pool)] or gpu_nodes
    cuda_major = int(cuda.split(".")[0])
    need = MIN_DRIVER_FOR_CUDA[cuda_major]
    old, unlabelled, good = [], [], []
    for n in fitting:
        name = n["metadata"]["name"]
        found = driver_version((n.get("metadata") or {}).get("labels") or {})
        if found is None:
            unlabelled.append(name)
        elif found[0] < need:
            old.append(f"{name} ({found[1]})")
        else:
            good.append(f"{name} ({found[1]})")
    image = f"the GPU image (CUDA {cuda}) needs NVIDIA driver {need} or later"
    if old:
        return [Finding(check, PROBLEM, f"{image}; too old on {', '.join(old)}",
                        f"upgrade the driver on those nodes to {need} or later (GPU operator: its driver.version; "
                        "AKS: a node image with that driver branch, or the GPU operator with the driver enabled), or "
                        "keep GPU steps off them with gpu.node_selector")]
    if unlabelled and not good:
        return [Finding(check, WARN, f"cannot check the driver: {', '.join(unlabelled)} carry no "
                        f"{DRIVER_MAJOR_LABELS[0].rsplit('.', 1)[0]}.* labels; {image}",
                        "run nvidia-smi on one GPU node, or install NVIDIA GPU feature discovery (part of the GPU "
                        "operator), which labels each node with its driver version")]
    extra = f"; no driver labels on {', '.join(unlabelled)}" if unlabelled else ""
    return [Finding(check, OK if not unlabelled else WARN, f"{image}: {', '.join(good)}{extra}",
                    "run nvidia-smi on the unlabelled nodes" if unlabelled else "")]


# --- the object store ----------------------------------------------------------------------------

def _secret_values(secret: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value or "").decode()
        except (ValueError, UnicodeDecodeError):
            out[key] = ""
    return out


def _buckets(settings: ClusterSettings) -> dict[str, str]:
    """bucket -> the setting naming it (trial_outputs, weights)."""
    out = {}
    for name in ("trial_outputs", "weights"):
        value = getattr(settings, name)
        if value and value.startswith("s3://"):
            bucket = urlparse(value).netloc
            if bucket:
                out.setdefault(bucket, name)
    return out


def _cluster_internal(host: str) -> bool:
    """A Service name only the cluster's DNS resolves (name, name.namespace, *.svc[.cluster.local])."""
    host = host.lower().rstrip(".")
    return host.count(".") <= 1 or host.endswith((".svc", ".svc.cluster.local", ".cluster.local"))


def check_storage(api, target: Target) -> list[Finding]:
    """The object-store Secret exists in the namespace with real values, and its endpoint answers with
    its keys: the buckets of trial_outputs and weights exist (else the buckets can be listed)."""
    check, secret_settings, ns = "object-store", target.settings.storage_secret, target.namespace
    if secret_settings is None:
        return [Finding(check, OK, "the cluster settings have no storage Secret (storage_secret: null): steps get "
                        "no object-store credentials")]
    name = secret_settings.name
    env_to_key = {env: key for key, env in secret_settings.keys.items()}
    create = (f"kubectl create secret generic {name} -n {ns} " +
              " ".join(f"--from-literal={env_to_key.get(env, env)}=..." for env in AWS_ENV))
    if ns == KATIB_NAMESPACE and name == "automl-vision-storage":  # what manifests/ generate the Secret into
        create = (f"fill in manifests/pipeline/storage.env (from storage.env.example) and kubectl apply -k "
                  f"manifests/, or {create}")
    status, secret, message = _get(k8s.CoreV1Api(api).read_namespaced_secret, name, ns, timeout_s=target.timeout_s)
    if status == 404:
        return [Finding(check, PROBLEM, f"Secret {ns}/{name} does not exist: the steps would get no object-store "
                        "credentials", create)]
    if status != 200:
        return [_denied(check, f"Secret {ns}/{name}", status, message)]
    values = _secret_values(secret)
    missing = [env_to_key.get(env, env) for env in AWS_ENV[:2] if not values.get(env_to_key.get(env, env))]
    if missing:
        return [Finding(check, PROBLEM, f"Secret {ns}/{name} lacks {', '.join(missing)}",
                        f"kubectl delete secret {name} -n {ns}; {create}")]
    placeholders = sorted(k for k, v in values.items() if v.startswith(PLACEHOLDER_PREFIX))
    if placeholders:
        return [Finding(check, PROBLEM, f"Secret {ns}/{name} still holds the template's placeholders in "
                        f"{', '.join(placeholders)}", f"kubectl delete secret {name} -n {ns}; then {create}")]
    access, secret_key = values[env_to_key.get("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")], \
        values[env_to_key.get("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")]
    endpoint = target.s3_endpoint or values.get(env_to_key.get("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL")) \
        or DEFAULT_S3_ENDPOINT
    return [_check_endpoint(check, endpoint, access, secret_key, _buckets(target.settings), target,
                            f"Secret {ns}/{name}")]


def _check_endpoint(check: str, endpoint: str, access: str, secret_key: str, buckets: Mapping[str, str],
                    target: Target, source: str) -> Finding:
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not url.hostname or url.path.strip("/"):
        return Finding(check, PROBLEM, f"{source}: endpoint {endpoint!r} is not scheme://host[:port]",
                       "set AWS_ENDPOINT_URL in manifests/pipeline/storage.env to the store's URL with its scheme "
                       "(http://seaweedfs.kubeflow:9000 on Kubeflow Pipelines 2.15 and later, "
                       "http://minio-service.kubeflow:9000 on 2.14 and earlier) and kubectl apply -k manifests/")
    host = url.hostname
    try:
        socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        if _cluster_internal(host) and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            service, *rest = host.split(".")
            port = url.port or (443 if url.scheme == "https" else 80)
            return Finding(check, WARN, f"{source} is complete, but its endpoint {endpoint} is a name only the "
                           "cluster resolves: not checked from here",
                           f"kubectl port-forward -n {rest[0] if rest else target.namespace} svc/{service} "
                           f"9000:{port}, then rerun with --s3-endpoint {url.scheme}://localhost:9000 (or run doctor "
                           "in a pod)")
        return Finding(check, PROBLEM, f"{source}: endpoint {endpoint}: host {host} not found",
                       "correct AWS_ENDPOINT_URL in the Secret")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=target.timeout_s, read=target.timeout_s),
                               retries=False)
    client = Minio(url.netloc, access_key=access, secret_key=secret_key, secure=url.scheme == "https",
                   http_client=http)
    try:
        if buckets:
            absent = [b for b in buckets if not client.bucket_exists(b)]
            if absent:
                return Finding(check, PROBLEM, f"{endpoint}: the keys of {source} work, but bucket(s) "
                               f"{', '.join(f'{b} ({buckets[b]})' for b in absent)} do not exist",
                               "create them: " + "; ".join(f"aws --endpoint-url {endpoint} s3 mb s3://{b}"
                                                           for b in absent))
            return Finding(check, OK, f"{endpoint} answers with the keys of {source}; bucket(s) "
                           f"{', '.join(f'{b} ({s})' for b, s in buckets.items())} exist")
        names = [b.name for b in client.list_buckets()]
        return Finding(check, OK, f"{endpoint} answers with the keys of {source} ({len(names)} bucket(s) visible)")
    except S3Error as e:
        if e.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                      "ExpiredToken", "Forbidden"):
            return Finding(check, PROBLEM, f"{endpoint} refused the keys of {source} ({e.code}: {_short(e.message)})",
                           "put working keys in the Secret (the object store's access key and secret key)")
        return Finding(check, PROBLEM, f"{endpoint} answered {e.code}: {_short(e.message)}")
    except (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError) as e:
        where = "--s3-endpoint (and the port-forward behind it)" if target.s3_endpoint else \
            "AWS_ENDPOINT_URL in the Secret"
        return Finding(check, PROBLEM, f"cannot reach the object store at {endpoint} ({source}): {_short(e)}",
                       f"check {where}, and that the object store runs (KFP's bundled store: kubectl get pods -n "
                       "kubeflow)")


# --- KServe --------------------------------------------------------------------------------------

def check_kserve(api, target: Target) -> list[Finding]:
    """KServe's CRD, and a serving namespace whose pods get the storage initializer and the credentials."""
    findings = _check_crds(api, "kserve", KSERVE_GROUP, KSERVE_VERSION, (KSERVE_PLURAL,), target.serving,
                           "install KServe (https://kserve.github.io/website/ , or the Kubeflow platform's "
                           "manifests), then rerun doctor", target.timeout_s)
    check, ns = "serving-namespace", target.serving
    status, obj, message = _read_namespace(api, ns, target.timeout_s)
    if status == 404:
        return findings + [Finding(check, PROBLEM, f"serving namespace {ns} does not exist",
                                   f"kubectl create namespace {ns}, or give another with --serving-namespace")]
    if status != 200:
        findings.append(_denied(check, f"namespace {ns}", status, message))
    else:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if KSERVE_SKIP_LABEL in labels:
            findings.append(Finding(
                check, PROBLEM, f"namespace {ns} is labelled {KSERVE_SKIP_LABEL}={labels[KSERVE_SKIP_LABEL]}: KServe's "
                "pod webhook skips it, so no storage initializer fetches the model and the predictor starts without "
                "/mnt/models",
                f"serve from a namespace without that label (leave {ns}'s label alone: Kubeflow's own components rely "
                f"on it), such as {_default_serving()} (kubectl apply -k manifests/ creates it), with "
                f"--serving-namespace and the pipeline's serving_namespace"))
        else:
            findings.append(Finding(check, OK, f"namespace {ns} exists; KServe's pod webhook applies there "
                                    f"(no {KSERVE_SKIP_LABEL} label)"))
    findings += _check_serving_account(api, target)
    return findings


def _check_serving_account(api, target: Target) -> list[Finding]:
    check, ns, name = "serving-account", target.serving, SERVING_SERVICE_ACCOUNT
    secret = target.settings.storage_secret.name if target.settings.storage_secret else None
    attach = (f"kubectl patch serviceaccount {name} -n {ns} --type merge -p "
              f"'{{\"secrets\": [{{\"name\": \"{secret}\"}}]}}'") if secret else ""
    status, sa, message = _get(k8s.CoreV1Api(api).read_namespaced_service_account, name, ns, timeout_s=target.timeout_s)
    if status == 404:
        fix = f"kubectl create serviceaccount {name} -n {ns}" + (f"; {attach}" if attach else "")
        return [Finding(check, PROBLEM, f"ServiceAccount {ns}/{name} does not exist: the deploy step's "
                        "InferenceService runs as it", fix)]
    if status != 200:
        return [_denied(check, f"ServiceAccount {ns}/{name}", status, message)]
    if not secret:
        return [Finding(check, OK, f"ServiceAccount {ns}/{name} exists")]
    listed = [s.get("name") for s in sa.get("secrets") or [] if isinstance(s, dict)]
    if secret not in listed:
        return [Finding(check, PROBLEM, f"ServiceAccount {ns}/{name} does not list Secret {secret}: KServe's storage "
                        "initializer would download the model without credentials", attach)]
    s_status, serving_secret, s_message = _get(k8s.CoreV1Api(api).read_namespaced_secret, secret, ns,
                                               timeout_s=target.timeout_s)
    keys = target.settings.storage_secret.keys
    if s_status == 404 and ns != target.namespace:  # in the namespace itself, the object-store check says it
        create = f"kubectl create secret generic {secret} -n {ns} " + " ".join(f"--from-literal={k}=..." for k in keys)
        return [Finding(check, PROBLEM, f"ServiceAccount {ns}/{name} lists Secret {secret}, which does not exist "
                        f"in {ns} (a ServiceAccount only reaches Secrets of its own namespace)",
                        f"create it in {ns} too, with the keys of the one in {target.namespace}: {create}")]
    if s_status not in (200, 404):
        return [_denied(check, f"Secret {ns}/{secret}", s_status, s_message)]
    if s_status == 200:
        annotations = (serving_secret.get("metadata") or {}).get("annotations") or {}
        values = _secret_values(serving_secret)
        endpoint = values.get({env: k for k, env in keys.items()}.get("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"), "")
        if endpoint and not annotations.get(KSERVE_S3_ENDPOINT) and not values.get("S3_ENDPOINT") \
                and not (urlparse(endpoint).hostname or "").endswith("amazonaws.com"):
            host = endpoint.split("://", 1)[-1].rstrip("/")
            https = "1" if endpoint.startswith("https://") else "0"
            return [Finding(check, WARN, f"Secret {ns}/{secret} has no {KSERVE_S3_ENDPOINT} annotation: KServe's "
                            "storage initializer takes the endpoint from it (else from a key S3_ENDPOINT, else from "
                            f"KServe's own settings), not from AWS_ENDPOINT_URL ({endpoint})",
                            f"kubectl annotate secret {secret} -n {ns} {KSERVE_S3_ENDPOINT}={host} "
                            f"serving.kserve.io/s3-usehttps={https}")]
    return [Finding(check, OK, f"ServiceAccount {ns}/{name} exists and lists Secret {secret}")]


def _default_serving() -> str:
    return DEFAULT_SERVING_NAMESPACE


# --- all of them ---------------------------------------------------------------------------------

def run_checks(target: Target, client: Any = None) -> list[Finding]:
    """Every check, in the order a first run meets them. ``client``: an ApiClient or Configuration (else
    the pod's service account, else the kubeconfig)."""
    findings = check_pipelines(target.kubeflow_url, target.credentials, namespace=target.namespace,
                               timeout_s=target.timeout_s)
    try:
        api = kubernetes_client(client)
    except ConfigError as e:
        return findings + [Finding("kubernetes", PROBLEM, "; ".join(e.problems),
                                   "point KUBECONFIG at your cluster's config, or run doctor in a pod")]
    reached = check_api_server(api)
    findings += reached
    if reached[0].status == PROBLEM:
        return findings
    try:
        findings += check_katib(api, target)
        findings += check_metrics_collector_label(api, target)
        if target.settings.gpu is None:
            findings += check_gpu_nodes(api, target, nodes=[])
        else:
            status, nodes, message = _list_nodes(api, target.timeout_s)
            if status != 200:
                findings.append(_denied("gpu-nodes", "the nodes", status, message))
            else:
                findings += check_gpu_nodes(api, target, nodes=nodes)
                findings += check_gpu_driver(nodes, target)
        findings += check_storage(api, target)
        findings += check_kserve(api, target)
    except _Unreachable as e:
        findings.append(Finding("kubernetes", PROBLEM, f"the API server stopped answering: {e}",
                                "rerun doctor when kubectl get nodes answers again"))
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when a run can work (nothing is a PROBLEM), 2 (bad input) otherwise."""
    return EXIT_BAD_INPUT if any(f.status == PROBLEM for f in findings) else EXIT_OK


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, the fix of each one that is not OK under it, and a summary."""
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.status:<7}  {f.check:<{width}}  {f.message}")
        if f.fix and f.status != OK:
            lines.append(f"{'':<7}  {'':<{width}}  fix: {f.fix}")
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, PROBLEM)}
    verdict = "a run can start" if not counts[PROBLEM] else "fix the problems above before the first run"
    lines.append(f"{counts[OK]} OK, {counts[WARN]} WARN, {counts[PROBLEM]} PROBLEM: {verdict}")
    return "\n".join(lines)
