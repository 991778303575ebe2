"""Register the early-stopping service with Katib: add our ``runtime.earlyStoppings`` entries (one per
algorithm it serves: bandit, truncation-selection, asha, hyperband) to a KatibConfig and leave everything
else in it alone.

Katib (0.16 and later) keeps its settings in the ConfigMap ``katib-config`` (namespace ``kubeflow``)
under ONE key, ``katib-config.yaml``, whose value is a KatibConfig document held as a string. No
kustomize patch or strategic merge can reach inside that string, and shipping a whole KatibConfig
would replace the user's (their images, trial resources, suggestion settings: a silent upgrade or
downgrade of their Katib). So the change is made here, on the user's own document:

- ``automl-vision katib-config --from-cluster``: read the live ConfigMap, print it with our entries
  added (``| kubectl replace -f -``; its resourceVersion makes the write fail rather than overwrite a
  change made in between);
- ``automl-vision katib-config -f FILE`` (``-`` for standard input): the same on a ConfigMap manifest
  (``kubectl get configmap katib-config -n kubeflow -o yaml``) or on a bare KatibConfig document, such
  as the ``katib-config.yaml`` that a kustomize build of Katib generates its ConfigMap from
  (``--in-place`` rewrites that file).

Entries are matched by ``algorithmName``: ours replace an entry of the same name where it stands,
or are appended; every other entry and key is kept as it was. The keys we write are the fields of
Katib's ``EarlyStoppingConfig`` in every supported version (``tests/upstream/katib/``).

Katib's controller reads ``runtime`` settings from the ConfigMap through the API server each time it
builds a suggestion or validates an Experiment (``pkg/util/v1beta1/katibconfig/config.go``), so the
change applies to the next Experiment without a restart; only ``init`` settings are read from the
mounted file at start-up.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import yaml

from automl_vision import __version__
from automl_vision.earlystopping.rules import ALGORITHMS
from automl_vision.errors import AutoMLError, ConfigError

CONFIGMAP_NAME = "katib-config"
#: The key of the ConfigMap that holds the KatibConfig document (Katib's consts.LabelKatibConfigTag).
CONFIG_KEY = "katib-config.yaml"
DEFAULT_NAMESPACE = "kubeflow"
KATIB_CONFIG_API = ("config.kubeflow.org/v1beta1", "KatibConfig")
DEFAULT_IMAGE = f"automl-vision-earlystopping:{__version__}"
#: Katib releases whose EarlyStoppingConfig the entries were checked against.
SUPPORTED_KATIB = ("0.17", "0.18", "0.19")
#: The service imports grpc, protobuf, the Katib stubs and the Kubernetes client: Katib's default
#: limit for an early-stopping container (100Mi) is too small for it.
RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
#: Keys of the ConfigMap before Katib 0.16 (one JSON document per section instead of a KatibConfig).
_OLD_FORMAT_KEYS = ("early-stopping", "suggestion", "metrics-collector-sidecar")
_KATIB_IMAGE_TAG = re.compile(r"/kubeflow(?:katib|/katib)/[\w.-]+:v(\d+)\.(\d+)\.\d+")


def early_stopping_entries(image: str = DEFAULT_IMAGE) -> list[dict[str, Any]]:
    """Our ``runtime.earlyStoppings`` entries, one per algorithm the service runs."""
    if not image or image != image.strip() or any(c.isspace() for c in image):
        raise ConfigError(f"--image {image!r}: not an image reference")
    return [{"algorithmName": name, "image": image, "resources": copy.deepcopy(RESOURCES)} for name in ALGORITHMS]


def patch_document() -> dict[str, Any]:
    """A KatibConfig holding only our entries (what ``manifests/katib/katib-config-early-stopping.yaml`` shows)."""
    return {"apiVersion": KATIB_CONFIG_API[0], "kind": KATIB_CONFIG_API[1],
            "runtime": {"earlyStoppings": early_stopping_entries()}}


def merge_entries(config: dict[str, Any], entries: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """``config`` (a KatibConfig) with ``entries`` in ``runtime.earlyStoppings``; returns it and what changed
    (``added NAME`` / ``replaced NAME`` / ``unchanged NAME``). ``config`` itself is not modified."""
    if not isinstance(config, dict):
        raise ConfigError("the KatibConfig is not a mapping")
    if (config.get("apiVersion"), config.get("kind")) != KATIB_CONFIG_API:
        raise ConfigError(f"not a KatibConfig: apiVersion {config.get('apiVersion')!r}, kind {config.get('kind')!r} "
                          f"(expected {KATIB_CONFIG_API[0]}, {KATIB_CONFIG_API[1]}; Katib 0.16 or later)")
    out = copy.deepcopy(config)
    runtime = out.get("runtime")
    if runtime is None:
        runtime = out["runtime"] = {}
    if not isinstance(runtime, dict):
        raise ConfigError("runtime: not a mapping")
    current = runtime.get("earlyStoppings")
    if current is None:
        current = runtime["earlyStoppings"] = []
    if not isinstance(current, list) or not all(isinstance(e, dict) for e in current):
        raise ConfigError("runtime.earlyStoppings: not a list of entries")
    changes = []
    for entry in entries:
        name = entry["algorithmName"]
        where = [i for i, e in enumerate(current) if e.get("algorithmName") == name]
        if len(where) > 1:
            raise ConfigError(f"runtime.earlyStoppings: {len(where)} entries named {name!r}; Katib uses the last, "
                              "remove the others first")
        if not where:
            current.append(copy.deepcopy(entry))
            changes.append(f"added {name}")
        elif current[where[0]] == entry:
            changes.append(f"unchanged {name}")
        else:
            current[where[0]] = copy.deepcopy(entry)
            changes.append(f"replaced {name}")
    return out, changes


def katib_versions(config: dict[str, Any]) -> set[str]:
    """The Katib releases (``0.19``) named by the tags of Katib's own images in a KatibConfig."""
    text = yaml.safe_dump(config.get("runtime") or {})
    return {f"{m.group(1)}.{m.group(2)}" for m in _KATIB_IMAGE_TAG.finditer(text)}


def _load_katib_config(text: str, where: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not YAML: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: not a KatibConfig document")
    return config


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the KatibConfig inside the ConfigMap) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str):
    if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump_document(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def update_document(doc: dict[str, Any], image: str = DEFAULT_IMAGE) -> tuple[dict[str, Any], list[str], set[str]]:
    """A ConfigMap ``katib-config`` or a bare KatibConfig with our entries; returns the updated document
    (same kind as given), the changes and the Katib releases its images name."""
    entries = early_stopping_entries(image)
    if not isinstance(doc, dict):
        raise ConfigError("not a Kubernetes object or KatibConfig document")
    if doc.get("kind") == KATIB_CONFIG_API[1]:
        config, changes = merge_entries(doc, entries)
        return config, changes, katib_versions(config)
    if (doc.get("apiVersion"), doc.get("kind")) != ("v1", "ConfigMap"):
        raise ConfigError(f"expected the ConfigMap {CONFIGMAP_NAME} or a KatibConfig, got kind {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    data = doc.get("data") or {}
    name = meta.get("name")
    if name != CONFIGMAP_NAME:
        raise ConfigError(f"ConfigMap {name!r}: Katib reads its settings from the ConfigMap {CONFIGMAP_NAME!r}")
    if CONFIG_KEY not in data:
        old = [k for k in _OLD_FORMAT_KEYS if k in data]
        if old:
            raise ConfigError(f"ConfigMap {CONFIGMAP_NAME} has {', '.join(old)} but no {CONFIG_KEY}: that is the "
                              f"format of Katib before 0.16; automl-vision's early stopping needs Katib "
                              f"{SUPPORTED_KATIB[0]} to {SUPPORTED_KATIB[-1]}")
        keys = ", ".join(sorted(data)) or "none"
        raise ConfigError(f"ConfigMap {CONFIGMAP_NAME} has no key {CONFIG_KEY} (keys: {keys})")
    config, changes = merge_entries(_load_katib_config(data[CONFIG_KEY], f"{CONFIGMAP_NAME}/{CONFIG_KEY}"), entries)
    kept_meta = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "resourceVersion") if k in meta}
    out = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": kept_meta,
           "data": {**data, CONFIG_KEY: dump_document(config)}}
    for key in ("binaryData", "immutable"):
        if key in doc:
            out[key] = doc[key]
    return out, changes, katib_versions(config)


def read_configmap(namespace: str = DEFAULT_NAMESPACE, core_api: Any = None) -> dict[str, Any]:
    """The live ConfigMap ``katib-config`` as a manifest (kubeconfig or in-cluster credentials)."""
    try:  # optional: the katib extra
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise AutoMLError("reading katib-config from the cluster needs the kubernetes package "
                          "(pip install 'automl-vision[katib]'); or pipe `kubectl get configmap katib-config "
                          f"-n {namespace} -o yaml` into `automl-vision katib-config -f -`") from None
    if core_api is None:
        try:  # $KUBECONFIG as it is now (the client reads it once, when first imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (ConfigException, OSError):
            try:
                config.load_incluster_config()
            except ConfigException as e:
                raise AutoMLError(f"no Kubernetes credentials (kubeconfig or in-cluster): {e}") from None
        core_api = client.CoreV1Api()
    try:
        cm = core_api.read_namespaced_config_map(CONFIGMAP_NAME, namespace)
    except ApiException as e:
        if e.status == 404:
            raise AutoMLError(f"no ConfigMap {CONFIGMAP_NAME} in namespace {namespace}: is Katib installed there? "
                              "(--katib-namespace)") from None
        raise AutoMLError(f"reading ConfigMap {namespace}/{CONFIGMAP_NAME}: {e.status} {e.reason}") from None
    return core_api.api_client.sanitize_for_serialization(cm) | {"apiVersion": "v1", "kind": "ConfigMap"}
