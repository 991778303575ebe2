"""Deploy a model package as a KServe InferenceService: create it, or update the one of that name.

The predictor is the project's own image running ``automl-vision serve --model /mnt/models``, as in
``manifests/kserve/inferenceservice.yaml``; KServe's storage initializer downloads the package named
by the container's ``STORAGE_URI`` into ``/mnt/models`` (a ``pvc://`` claim is mounted instead).
KServe injects that initializer only in namespaces without a ``control-plane`` label, which a full
Kubeflow puts on ``kubeflow``: the default namespace is a dedicated one, ``automl-vision-serving``.

The API calls go through the official ``kubernetes`` client's ``CustomObjectsApi``, not kserve's
``KServeClient``: KServeClient turns every API error into a bare ``RuntimeError`` (a 403 and a 404
look alike), needs its own model classes rather than the plain manifest that is validated against
the CRD, and importing ``kserve`` pulls in its model server (which reads ``sys.argv``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import yaml

from automl_vision import __version__
from automl_vision.errors import AutoMLError, ConfigError
from automl_vision.kubeapi import status_message
from automl_vision.serving.settings import FIXED_BY_WEIGHTS, MODEL_SETTING_NAMES, SERVING_SETTINGS, SETTINGS_ENV
from automl_vision.spec import hyperparameters as hps

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"
#: KServe's storage initializer puts the model here, in a container of this name.
MODEL_MOUNT, CONTAINER_NAME = "/mnt/models", "kserve-container"
PORT = 8080
CPU_IMAGE, GPU_IMAGE = f"automl-vision-cpu:{__version__}", f"automl-vision-gpu:{__version__}"
GPU_RESOURCE = "nvidia.com/gpu"
PART_OF = {"app.kubernetes.io/part-of": "automl-vision"}
#: A digest of what deploy_model sent; an object carrying the same one (and the same fields) is left alone.
HASH_ANNOTATION = "automl-vision/manifest-hash"
#: Where an InferenceService goes unless a namespace is given: the one manifests/pipeline creates, with the
#: serving ServiceAccount, the object-store Secret and the pipeline's rights on InferenceServices.
DEFAULT_SERVING_NAMESPACE = "automl-vision-serving"
#: KServe's pod-mutating webhook (which injects the storage initializer) skips namespaces carrying this label
#: (its namespaceSelector: control-plane DoesNotExist); a full Kubeflow puts it on `kubeflow`.
CONTROL_PLANE_LABEL = "control-plane"
PROGRESS_EVERY_S = 30.0
URI_SCHEMES = ("s3", "gs", "pvc", "http", "https")
#: The storage initializer downloads an http(s) URI as one file and unpacks it only if it is an archive.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                       r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_SERVING = {hp.name: hp for hp in SERVING_SETTINGS}
#: Predictor fields this module writes: an update sends null for those it no longer sets.
_MANAGED_PREDICTOR_KEYS = ("serviceAccountName", "minReplicas", "maxReplicas", "nodeSelector", "tolerations",
                           "containers")
_RBAC_HINT = ("the identity needs get, create and patch on inferenceservices (group serving.kserve.io) in that "
              f"namespace; manifests/pipeline/rbac.yaml grants them to pipeline-runner in {DEFAULT_SERVING_NAMESPACE}")


class DeployError(AutoMLError):
    """The cluster did not take the InferenceService, or it did not get ready in time."""


# --- checks -------------------------------------------------------------------------------------

def check_name(name: str, namespace: str | None = None) -> list[str]:
    """Problems with an InferenceService name: a DNS-1035 label, and KServe's host name
    ``<name>-predictor-<namespace>`` (its default domain template) must fit in one DNS label too."""
    if not isinstance(name, str) or not name:
        return ["name: an InferenceService needs a name"]
    problems = []
    if len(name) > 63:
        problems.append(f"name {name!r}: {len(name)} characters, over the 63 of a DNS-1035 label")
    if not _DNS_1035.match(name):
        problems.append(f"name {name!r}: not a DNS-1035 label (lower-case letters, digits and '-', starting with "
                        "a letter and ending with a letter or digit, e.g. 'fridge-classifier')")
    if namespace is not None and not problems:
        host = f"{name}-predictor-{namespace}"
        if len(host) > 63:
            problems.append(f"name {name!r} with namespace {namespace!r}: KServe's host name {host} would have "
                            f"{len(host)} characters, over the 63 of a DNS label; choose a name of at most "
                            f"{63 - len(host) + len(name)} characters")
    if namespace is not None and (len(namespace) > 63 or not _DNS_1123.match(namespace)):
        problems.append(f"namespace {namespace!r}: not a namespace name (a DNS-1123 label: lower-case letters, "
                        "digits and '-', at most 63)")
    return problems


def check_model_uri(uri: str) -> list[str]:
    """Problems with a storage URI the storage initializer can fetch a package folder from."""
    if not isinstance(uri, str) or not uri:
        return ["model_uri: empty; expected s3://bucket/path, gs://bucket/path, pvc://claim/path or an "
                "http(s):// URL of a .zip or .tar.gz archive of the package"]
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in URI_SCHEMES or "://" not in uri:
        return [f"model_uri {uri!r}: unsupported scheme; expected s3://, gs://, pvc:// or http(s):// (a local "
                "folder cannot be mounted into the cluster: upload the package first)"]
    if not parsed.netloc:
        what = {"pvc": "claim name (pvc://claim/path)", "http": "host", "https": "host"}.get(
            scheme, f"bucket ({scheme}://bucket/path)")
        return [f"model_uri {uri!r}: no {what}"]
    if scheme in ("http", "https") and not parsed.path.lower().endswith(ARCHIVE_SUFFIXES):
        return [f"model_uri {uri!r}: KServe downloads an http(s) URL as one file and unpacks only archives; "
                f"give the URL of the package as {', '.join(ARCHIVE_SUFFIXES)}"]
    if scheme == "pvc" and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", parsed.netloc):
        return [f"model_uri {uri!r}: {parsed.netloc!r} is not a PersistentVolumeClaim name"]
    return []


def check_settings(settings: Mapping[str, Any]) -> list[str]:
    """Problems with inference settings given at deploy time. Names and serving values are checked here;
    the model settings' ranges for the package's task and model are checked when the server loads it."""
    problems = []
    allowed = [n for n in MODEL_SETTING_NAMES if n not in FIXED_BY_WEIGHTS] + list(_SERVING)
    for key, value in settings.items():
        if key in FIXED_BY_WEIGHTS:
            problems.append(f"settings: {key} is fixed by the trained weights")
        elif key in _SERVING:
            try:
                _SERVING[key].coerce(value)
            except ValueError as e:
                problems.append(f"settings: {e}")
        elif key in MODEL_SETTING_NAMES:
            try:
                hps.get(key).coerce(value)
            except ValueError as e:
                problems.append(f"settings: {e}")
        else:
            problems.append(f"settings: unknown setting {key!r}{hps.did_you_mean(key, allowed)}; "
                            f"allowed: {', '.join(allowed)}")
    return problems


def _check_quantity(where: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, str) and _QUANTITY.match(value)):
        return [f"{where} {value!r}: not a Kubernetes quantity (e.g. 500m, 2, 4Gi)"]
    return []


# --- the manifest -------------------------------------------------------------------------------

def inference_service_manifest(model_uri: str, name: str, namespace: str | None = None, *,
                               image: str | None = None, port: int = PORT,
                               cpu: str = "1", memory: str = "2Gi", cpu_limit: str = "2", memory_limit: str = "4Gi",
                               gpu: int = 0, service_account: str | None = None,
                               min_replicas: int | None = 1, max_replicas: int | None = 2,
                               settings: Mapping[str, Any] | None = None,
                               node_selector: Mapping[str, str] | None = None,
                               tolerations: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The InferenceService that serves the package at ``model_uri`` (checked; every problem at once).

    ``gpu`` > 0 adds an ``nvidia.com/gpu`` limit and, unless ``image`` is given, takes the CUDA image.
    ``settings`` (flat inference settings, docs/serving.md) reach the server as ``AUTOML_VISION_SETTINGS``.
    """
    settings = dict(settings or {})
    problems = check_name(name, namespace) + check_model_uri(model_uri) + check_settings(settings)
    for where, value in (("cpu", cpu), ("memory", memory), ("cpu_limit", cpu_limit), ("memory_limit", memory_limit)):
        problems += _check_quantity(where, value)
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        problems.append(f"gpu {gpu!r}: expected a whole number of GPUs >= 0")
    if not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"port {port!r}: not a port number (1-65535)")
    if min_replicas is not None and (not isinstance(min_replicas, int) or min_replicas < 0):
        problems.append(f"min_replicas {min_replicas!r}: expected a whole number >= 0 (0: scale to zero)")
    if max_replicas is not None and (not isinstance(max_replicas, int) or max_replicas < 1):
        problems.append(f"max_replicas {max_replicas!r}: expected a whole number >= 1")
    elif isinstance(min_replicas, int) and isinstance(max_replicas, int) and max_replicas < min_replicas:
        problems.append(f"max_replicas {max_replicas} is below min_replicas {min_replicas}")
    if service_account is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", service_account):
        problems.append(f"service_account {service_account!r}: not a ServiceAccount name")
    if image is not None and (not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image)):
        problems.append(f"image {image!r}: not an image reference")
    if problems:
        raise ConfigError(problems, "deploy")

    limits: dict[str, Any] = {"cpu": cpu_limit, "memory": memory_limit}
    if gpu:
        limits[GPU_RESOURCE] = str(gpu)
    env = [{"name": "STORAGE_URI", "value": model_uri}]
    if settings:
        env.append({"name": SETTINGS_ENV, "value": json.dumps(settings, sort_keys=True)})
    container = {
        "name": CONTAINER_NAME,
        "image": image or (GPU_IMAGE if gpu else CPU_IMAGE),
        "args": ["automl-vision", "serve", "--model", MODEL_MOUNT, "--port", str(port), "--name", name],
        "env": env,
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
    }
    predictor: dict[str, Any] = {}
    if service_account:
        predictor["serviceAccountName"] = service_account
    if min_replicas is not None:
        predictor["minReplicas"] = min_replicas
    if max_replicas is not None:
        predictor["maxReplicas"] = max_replicas
    if node_selector:
        predictor["nodeSelector"] = dict(node_selector)
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    predictor["containers"] = [container]
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(PART_OF)
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}
    metadata["annotations"] = {HASH_ANNOTATION: manifest_hash(manifest)}
    return manifest


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A digest of the labels and spec (what an update would change)."""
    text = json.dumps({"labels": manifest["metadata"].get("labels", {}), "spec": manifest["spec"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_yaml(manifest: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(manifest), sort_keys=False)


# --- the cluster --------------------------------------------------------------------------------

def custom_objects_api(client: Any = None):
    """A ``kubernetes.client.CustomObjectsApi``: from ``client`` (an ApiClient, a Configuration or the API
    itself), else the pod's service account in a cluster, else the kubeconfig."""
    # The kubernetes client (about 1 s to import) only for the calls to a cluster, here and below.
    from kubernetes import client as k8s
    from kubernetes import config

    if isinstance(client, k8s.CustomObjectsApi):
        return client
    if isinstance(client, k8s.ApiClient):
        return k8s.CustomObjectsApi(client)
    if isinstance(client, k8s.Configuration):
        return k8s.CustomObjectsApi(k8s.ApiClient(client))
    if client is not None:
        raise TypeError(f"client: expected a kubernetes ApiClient, Configuration or CustomObjectsApi, got "
                        f"{type(client).__name__}")
    # A Configuration of our own: loading into the client's global default would redirect every other
    # client in the process.
    configuration = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
            return k8s.CustomObjectsApi(k8s.ApiClient(configuration))
        except config.ConfigException as e:
            in_cluster = str(e)
    else:
        in_cluster = "not running in a pod"
    try:
        # kubernetes reads $KUBECONFIG once, at import; read it now.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    except (config.ConfigException, OSError) as e:
        raise ConfigError(f"no Kubernetes credentials: {in_cluster}, and no usable kubeconfig "
                          f"({os.environ.get('KUBECONFIG') or '~/.kube/config'}: {e}); run inside the cluster, point "
                          "KUBECONFIG at a config, or print the manifest with --dry-run", "deploy") from None
    return k8s.CustomObjectsApi(k8s.ApiClient(configuration))


def check_serving_namespace(namespace: str, client: Any = None) -> None:
    """Refuse a namespace that does not exist, or one KServe never injects its storage initializer into
    (labelled ``control-plane``): there the predictor would start without its model. Reading a namespace
    is a cluster-wide permission the pipeline's identity may lack: a 403 is logged as a warning and the
    deploy goes on unchecked."""
    from kubernetes import client as k8s  # the kubernetes client, only for calls to a cluster
    from kubernetes.client.exceptions import ApiException  # the kubernetes client, only for calls to a cluster
    from urllib3.exceptions import HTTPError

    core = k8s.CoreV1Api(custom_objects_api(client).api_client)
    what = f"reading Namespace {namespace}"
    try:
        labels = core.read_namespace(namespace).metadata.labels or {}
    except ApiException as e:
        if e.status == 403:
            log.warning("%s: forbidden (403: %s); not checking its %r label (KServe's storage initializer is "
                        "not injected into a namespace that has it); manifests/pipeline/rbac.yaml grants get on "
                        "namespaces to pipeline-runner", what, _api_message(e), CONTROL_PLANE_LABEL)
            return
        if e.status == 404:
            raise ConfigError(f"namespace {namespace!r} does not exist: kubectl apply -k manifests/ creates "
                              f"{DEFAULT_SERVING_NAMESPACE!r}, or give an existing namespace", "deploy") from None
        raise _api_error(e, what, namespace) from None
    except HTTPError as e:
        raise DeployError(f"{what}: cannot reach the Kubernetes API server: {e}") from None
    if CONTROL_PLANE_LABEL in labels:
        raise ConfigError(
            f"namespace {namespace!r} is labelled {CONTROL_PLANE_LABEL}={labels[CONTROL_PLANE_LABEL]}: KServe's "
            "pod webhook skips such namespaces, so its storage initializer would never download the model and the "
            f"predictor would start without it; deploy to a namespace without that label, such as "
            f"{DEFAULT_SERVING_NAMESPACE!r} (kubectl apply -k manifests/ creates it)", "deploy")


def _api_message(e: Any) -> str:
    """The message of the API server's Status body, else the body, else the HTTP reason."""
    return status_message(e) or str(e.reason)


def _api_error(e: Any, what: str, namespace: str) -> AutoMLError:
    """An ApiException as the library's error, saying what failed and what to do."""
    message = _api_message(e)
    if e.status == 401:
        return ConfigError(f"{what}: the API server refused the credentials (401 Unauthorized: {message})", "deploy")
    if e.status == 403:
        return ConfigError(f"{what}: forbidden (403): {message}; {_RBAC_HINT}", "deploy")
    if e.status == 404:
        return ConfigError(f"{what}: the API server has no {PLURAL}.{GROUP}/{VERSION} in namespace {namespace} "
                           f"(404: {message}); is KServe installed and does the namespace exist?", "deploy")
    if e.status in (400, 422):
        return ConfigError(f"{what}: the API server refused the InferenceService ({e.status}): {message}", "deploy")
    return DeployError(f"{what}: the API server answered {e.status} {e.reason}: {message}")


def _call(what: str, namespace: str, fn: Callable[[], Any]) -> Any:
    from kubernetes.client.exceptions import ApiException  # the kubernetes client, only for calls to a cluster
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as e:
        raise _api_error(e, what, namespace) from None
    except HTTPError as e:
        raise DeployError(f"{what}: cannot reach the Kubernetes API server: {e}") from None


def _contains(have: Any, want: Any) -> bool:
    """Every field of ``want`` is in ``have`` with the same value (the server may add defaults)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_contains, have, want))
    return have == want


def _update_patch(manifest: Mapping[str, Any], existing: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch: our labels, annotation and predictor fields; null for predictor fields this
    module manages but no longer sets (a merge patch replaces lists such as containers whole)."""
    predictor = dict(manifest["spec"]["predictor"])
    old = existing.get("spec", {}).get("predictor", {})
    for key in _MANAGED_PREDICTOR_KEYS:
        if key not in predictor and key in old:
            predictor[key] = None
    return {"metadata": {"labels": manifest["metadata"]["labels"], "annotations": manifest["metadata"]["annotations"]},
            "spec": {"predictor": predictor}}


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or [] if isinstance(c, Mapping)}


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Ready=True for the current spec (when the status says which generation it observed)."""
    ready = _conditions(obj).get("Ready", {}).get("status") == "True"
    observed = (obj.get("status") or {}).get("observedGeneration")
    generation = (obj.get("metadata") or {}).get("generation")
    return ready and (observed is None or generation is None or observed >= generation)


def describe_status(obj: Mapping[str, Any]) -> str:
    """One line: each condition that is not True with its reason and message, and a load failure."""
    status = obj.get("status") or {}
    parts = []
    for kind, c in sorted(_conditions(obj).items(), key=lambda kv: kv[0] != "Ready"):
        if c.get("status") != "True":
            detail = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
            parts.append(f"{kind} {c.get('status')}" + (f" ({detail})" if detail else ""))
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure:
        parts.append(f"model {failure.get('reason', 'failed')}: {failure.get('message', '')}".rstrip(": "))
    if not parts:
        if is_ready(obj):
            return "Ready"
        return "waiting for the controller" if not status.get("conditions") else \
            "waiting for the controller to observe the new spec"
    return "; ".join(parts)


def deploy_model(model_uri: str, name: str, namespace: str | None = None, *,
                 image: str | None = None, port: int = PORT,
                 cpu: str = "1", memory: str = "2Gi", cpu_limit: str = "2", memory_limit: str = "4Gi", gpu: int = 0,
                 service_account: str | None = None, min_replicas: int | None = 1, max_replicas: int | None = 2,
                 settings: Mapping[str, Any] | None = None, node_selector: Mapping[str, str] | None = None,
                 tolerations: Sequence[Mapping[str, Any]] | None = None,
                 wait: bool = False, timeout_s: float = 600.0, poll_interval_s: float = 5.0,
                 client: Any = None) -> dict[str, Any]:
    """Create the InferenceService serving the package at ``model_uri``, or update the one named ``name``
    (a retried step or a retraining updates the same endpoint), in ``namespace`` (default
    ``DEFAULT_SERVING_NAMESPACE``; refused when labelled ``control-plane``, see
    :func:`check_serving_namespace`). ``wait``: poll until it is Ready for this spec, at most
    ``timeout_s``. Returns name, namespace, action (created | updated | unchanged), url (``status.url``
    when known, else None) and the manifest sent."""
    namespace = namespace or DEFAULT_SERVING_NAMESPACE
    manifest = inference_service_manifest(
        model_uri, name, namespace, image=image, port=port, cpu=cpu, memory=memory, cpu_limit=cpu_limit,
        memory_limit=memory_limit, gpu=gpu, service_account=service_account, min_replicas=min_replicas,
        max_replicas=max_replicas, settings=settings, node_selector=node_selector, tolerations=tolerations)
    api = custom_objects_api(client)
    check_serving_namespace(namespace, api)
    where = f"InferenceService {namespace}/{name}"
    obj, action = _apply(api, manifest, name, namespace, where)
    log.info("%s %s (model %s)", where, action, model_uri)
    if wait:
        obj = wait_until_ready(name, namespace, timeout_s=timeout_s, poll_interval_s=poll_interval_s, client=api)
    return {"name": name, "namespace": namespace, "action": action,
            "url": (obj.get("status") or {}).get("url") or None, "manifest": manifest}


def _apply(api, manifest: dict[str, Any], name: str, namespace: str, where: str) -> tuple[dict[str, Any], str]:
    from kubernetes.client.exceptions import ApiException  # the kubernetes client, only for calls to a cluster
    from urllib3.exceptions import HTTPError

    args = (GROUP, VERSION, namespace, PLURAL)
    for _ in range(2):  # a create that loses a race with another creator turns into an update
        try:
            existing = api.get_namespaced_custom_object(*args, name)
        except ApiException as e:
            if e.status != 404:
                raise _api_error(e, f"reading {where}", namespace) from None
            existing = None
        except HTTPError as e:
            raise DeployError(f"reading {where}: cannot reach the Kubernetes API server: {e}") from None
        if existing is None:
            try:
                return api.create_namespaced_custom_object(*args, manifest), "created"
            except ApiException as e:
                if e.status != 409:
                    raise _api_error(e, f"creating {where}", namespace) from None
                continue
            except HTTPError as e:
                raise DeployError(f"creating {where}: cannot reach the Kubernetes API server: {e}") from None
        annotations = (existing.get("metadata") or {}).get("annotations") or {}
        if annotations.get(HASH_ANNOTATION) == manifest["metadata"]["annotations"][HASH_ANNOTATION] and \
                _contains(existing.get("spec"), manifest["spec"]) and \
                _contains((existing.get("metadata") or {}).get("labels") or {}, manifest["metadata"]["labels"]):
            return existing, "unchanged"
        patch = _update_patch(manifest, existing)
        return _call(f"updating {where}", namespace,
                     lambda: api.patch_namespaced_custom_object(*args, name, patch)), "updated"
    raise DeployError(f"creating {where}: it exists (409) but cannot be read back")


def wait_until_ready(name: str, namespace: str, *, timeout_s: float = 600.0, poll_interval_s: float = 5.0,
                     client: Any = None) -> dict[str, Any]:
    """Poll the InferenceService until Ready=True for its current spec; log each change of its state (and
    the state every PROGRESS_EVERY_S while it stays the same).
    Raises DeployError at ``timeout_s`` with the conditions that are not True."""
    api = custom_objects_api(client)
    where = f"InferenceService {namespace}/{name}"
    t0 = time.monotonic()
    last, logged_at = None, -PROGRESS_EVERY_S
    while True:
        obj = _call(f"reading {where}", namespace,
                    lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        elapsed = time.monotonic() - t0
        state = describe_status(obj)
        if is_ready(obj):
            log.info("%s ready after %.0f s: %s", where, elapsed, (obj.get("status") or {}).get("url") or "no URL yet")
            return obj
        if state != last or elapsed - logged_at >= PROGRESS_EVERY_S:
            log.info("%s not ready (%.0f s): %s", where, elapsed, state)
            last, logged_at = state, elapsed
        if elapsed >= timeout_s:
            raise DeployError(f"{where} not ready after {timeout_s:g} s: {state}; see kubectl describe "
                              f"inferenceservice -n {namespace} {name}, and the predictor pod's log")
        time.sleep(max(0.0, min(poll_interval_s, timeout_s - elapsed)))
