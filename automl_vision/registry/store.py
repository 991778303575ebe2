"""Where registered models and their versions are kept: the Kubeflow Model Registry, or a local folder.

Both keep the same records, shaped as the Kubeflow Model Registry's (``api/openapi/model-registry.yaml`` of
kubeflow/model-registry, v1alpha3): a *registered model* per job name; a *model version* per run, named
"1", "2", ... in order, whose ``externalId`` is ``<registered model>:<run id>`` (the registry keeps external
ids unique, so a run can never get two versions) and whose custom properties hold the run's metadata; a
*model artifact* per version (the package's URI and format). The champion is the registered model's
custom property ``champion_version``; the version in that role also carries the label ``champion`` (a
custom property with an empty value, which the registry's UI shows as a label).

A version without its model artifact is a registration that failed half-way: nothing deploys it
(``latest`` skips it), and registering the same run again completes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from automl_vision.errors import AutoMLError, ConfigError

log = logging.getLogger(__name__)

#: The model artifact's format: what ``automl-vision serve`` loads, and the package format's version.
MODEL_FORMAT = "automl-vision"
#: The registered model's custom property that names the champion version, and the champion's label.
CHAMPION_PROPERTY = "champion_version"
CHAMPION_LABEL = "champion"
#: The local registry: a folder holding this file and a copy of every registered package under models/.
LOCAL_REGISTRY_FILE = "registry.json"
LOCAL_MODELS = "models"
#: What the registry server may refuse, in words, by HTTP status.
_STATUS_MEANING = {400: "the registry rejected the request as malformed", 401: "the registry refused the token",
                   403: "permission denied", 404: "not found", 409: "a conflicting record exists"}

Value = str | int | float | bool


class RegistryError(AutoMLError):
    """The model registry could not be reached, refused a request, or holds something unexpected."""


@dataclass
class VersionRecord:
    """One model version as the registry holds it."""

    model: str  # the registered model's name
    version: str  # "1", "2", ...
    run_id: str
    uri: str | None = None  # the model artifact's URI; None: registered half-way
    metadata: dict[str, Value] = field(default_factory=dict)  # the version's custom properties
    champion: bool = False
    created: str = ""  # ISO 8601 (UTC)
    author: str = ""
    id: str = ""  # the registry's id of the version (the local registry: model/version)

    @property
    def complete(self) -> bool:
        return bool(self.uri)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_RECORD_FIELDS = ("model", "version", "run_id", "uri", "metadata", "created", "author", "id")


def external_id(model: str, run_id: str) -> str:
    """A version's external id: one version per run of a registered model."""
    return f"{model}:{run_id}"


def _version_number(name: str) -> int:
    return int(name) if name.isdigit() else 0


class Registry(Protocol):
    """What the rest of the library needs from a registry (both kinds implement it)."""

    location: str
    local: bool

    def versions(self, model: str) -> list[VersionRecord]: ...

    def find_run(self, model: str, run_id: str) -> VersionRecord | None: ...

    def get(self, model: str, version: str) -> VersionRecord | None: ...

    def champion(self, model: str) -> VersionRecord | None: ...

    def create_version(self, model: str, run_id: str, metadata: Mapping[str, Value], *, author: str,
                       description: str) -> VersionRecord: ...

    def attach_model(self, record: VersionRecord, uri: str, format_version: str) -> VersionRecord: ...

    def update_metadata(self, record: VersionRecord, updates: Mapping[str, Value | None]) -> VersionRecord: ...

    def set_champion(self, record: VersionRecord) -> None: ...

    def store_package(self, record: VersionRecord, package_dir: Path) -> str: ...


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the local registry ------------------------------------------------------------------------------

class LocalRegistry:
    """The registry as a folder: ``registry.json`` (the records) and ``models/<name>/<version>/`` (a copy of
    each registered package, so that the champion stays loadable after its run folder is replaced).
    Every change is made under an exclusive lock and written atomically (a new file renamed over the old)."""

    local = True

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).absolute()
        self.location = str(self.folder)
        self.file = self.folder / LOCAL_REGISTRY_FILE
        if self.file.exists():
            self._read()  # a broken file is reported now, not half-way through a registration

    def _read(self) -> dict[str, Any]:
        if not self.file.is_file():
            return {"registered_models": {}}
        try:
            doc = json.loads(self.file.read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"cannot read the local model registry {self.file}: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("registered_models"), dict):
            raise RegistryError(f"{self.file} is not a model registry file (no registered_models object)")
        return doc

    @contextlib.contextmanager
    def _change(self) -> Iterator[dict[str, Any]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self._read()
            yield doc
            tmp = self.file.with_name(self.file.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
            os.replace(tmp, self.file)

    def _records(self, doc: dict[str, Any], model: str) -> list[VersionRecord]:
        rm = doc["registered_models"].get(model)
        if rm is None:
            return []
        champion = rm.get("custom_properties", {}).get(CHAMPION_PROPERTY)
        out = [VersionRecord(**{k: v[k] for k in _RECORD_FIELDS if k in v}, champion=v["version"] == champion)
               for v in rm.get("versions", [])]
        return sorted(out, key=lambda r: _version_number(r.version))

    def versions(self, model: str) -> list[VersionRecord]:
        return self._records(self._read(), model)

    def find_run(self, model: str, run_id: str) -> VersionRecord | None:
        return next((r for r in self.versions(model) if r.run_id == run_id), None)

    def get(self, model: str, version: str) -> VersionRecord | None:
        return next((r for r in self.versions(model) if r.version == version), None)

    def champion(self, model: str) -> VersionRecord | None:
        return next((r for r in self.versions(model) if r.champion), None)

    def create_version(self, model: str, run_id: str, metadata: Mapping[str, Value], *, author: str,
                       description: str) -> VersionRecord:
        with self._change() as doc:
            rm = doc["registered_models"].setdefault(model, {"name": model, "owner": author, "created": now_iso(),
                                                             "custom_properties": {}, "versions": []})
            existing = next((v for v in rm["versions"] if v["run_id"] == run_id), None)
            if existing is not None:
                return VersionRecord(**{k: existing[k] for k in _RECORD_FIELDS if k in existing},
                                     champion=rm["custom_properties"].get(CHAMPION_PROPERTY) == existing["version"])
            number = max((_version_number(v["version"]) for v in rm["versions"]), default=0) + 1
            record = VersionRecord(model, str(number), run_id, None, dict(metadata), False, now_iso(), author,
                                   f"{model}/{number}")
            entry = record.to_json()
            entry.pop("champion")
            entry["description"] = description
            rm["versions"].append(entry)
        return record

    def _entry(self, doc: dict[str, Any], record: VersionRecord) -> dict[str, Any]:
        rm = doc["registered_models"].get(record.model, {})
        entry = next((v for v in rm.get("versions", []) if v["version"] == record.version), None)
        if entry is None:
            raise RegistryError(f"{self.file} holds no version {record.version} of {record.model!r}")
        return entry

    def attach_model(self, record: VersionRecord, uri: str, format_version: str) -> VersionRecord:
        with self._change() as doc:
            entry = self._entry(doc, record)
            entry["uri"] = uri
            entry["model_format"] = {"name": MODEL_FORMAT, "version": format_version}
        return self.get(record.model, record.version)

    def update_metadata(self, record: VersionRecord, updates: Mapping[str, Value | None]) -> VersionRecord:
        with self._change() as doc:
            metadata = self._entry(doc, record)["metadata"]
            for key, value in updates.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
        return self.get(record.model, record.version)

    def set_champion(self, record: VersionRecord) -> None:
        with self._change() as doc:
            self._entry(doc, record)
            rm = doc["registered_models"][record.model]
            rm["custom_properties"][CHAMPION_PROPERTY] = record.version
            for v in rm["versions"]:  # the label, on the champion only
                v["metadata"].pop(CHAMPION_LABEL, None)
                if v["version"] == record.version:
                    v["metadata"][CHAMPION_LABEL] = ""

    def store_package(self, record: VersionRecord, package_dir: Path) -> str:
        """Copy the package into the registry folder (complete or not at all) and return its path."""
        target = self.folder / LOCAL_MODELS / record.model / record.version
        if not target.is_dir():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(package_dir, tmp)
            os.replace(tmp, target)
        return str(target)


# --- the Kubeflow Model Registry --------------------------------------------------------------------

class KubeflowRegistry:
    """The Kubeflow Model Registry at ``url`` (http(s)://host[:port], the REST service), through the
    ``model-registry`` client. ``token``: the bearer token the registry expects (in a pod: its service
    account's token, which the client reads by itself when none is given)."""

    local = False

    def __init__(self, url: str, *, token: str | None = None, author: str = "automl-vision"):
        self.location = url.rstrip("/")
        self.url = self.location
        self.author = author
        try:
            from model_registry import ModelRegistry  # the client (aiohttp, pydantic models): only for a registry
        except ImportError:
            raise ConfigError("the Kubeflow Model Registry needs its client: pip install model-registry") from None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="User access token is missing")
            self.client = self._call("connect", lambda: ModelRegistry(
                self.url, author=author, is_secure=self.url.startswith("https://"), user_token=token or None))

    # Errors -----------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as e:  # the client's errors: mr_openapi's ApiException family, aiohttp's, StoreError
            raise self._error(what, e) from None

    def _error(self, what: str, e: Exception) -> RegistryError:
        status = getattr(e, "status", None)
        if isinstance(status, int):
            meaning = _STATUS_MEANING.get(status, "the registry failed")
            detail = _error_detail(e)
            hint = {401: "; give a valid token (--registry-token-file, or the pod's service account token)",
                    403: "; the token's identity may not change this registry (its RBAC)"}.get(status, "")
            return RegistryError(f"model registry {self.url}: {what}: {meaning} (HTTP {status})"
                                 + (f": {detail}" if detail else "") + hint)
        name = type(e).__name__
        if "Connect" in name or isinstance(e, (OSError, TimeoutError)) or "Timeout" in name:
            return RegistryError(f"cannot reach the model registry at {self.url} ({what}): {name}: {e}; "
                                 "check the URL (its REST service, port 8080 in-cluster) and that it runs")
        return RegistryError(f"model registry {self.url}: {what} failed: {name}: {e}")

    def _run(self, coro_fn: Callable[[], Any]) -> Any:
        return self.client.async_runner(coro_fn())

    # Reading ----------------------------------------------------------------------------------------
    def _registered(self, model: str):
        return self._call(f"get registered model {model!r}", lambda: self.client.get_registered_model(model))

    def _to_record(self, model: str, mv, champion: str | None) -> VersionRecord:
        props = dict(mv.custom_properties or {})
        artifact = self._call(f"get the model artifact of {model!r} version {mv.name}",
                              lambda: self._run(lambda: self.client._api.get_model_version_artifacts(mv.id)))
        uri = next((a.uri for a in artifact if getattr(a, "uri", None)), None)
        created = mv.create_time_since_epoch
        if created and str(created).isdigit():
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(created) / 1000))
        run_id = str(props.get("run_id", "")) or (mv.external_id or "").split(":", 1)[-1]
        return VersionRecord(model, mv.name, run_id, uri, props, mv.name == champion, created or "",
                             mv.author or "", mv.id or "")

    def _champion_name(self, rm) -> str | None:
        value = (rm.custom_properties or {}).get(CHAMPION_PROPERTY) if rm is not None else None
        return str(value) if value not in (None, "") else None

    def versions(self, model: str) -> list[VersionRecord]:
        rm = self._registered(model)
        if rm is None:
            return []
        champion = self._champion_name(rm)
        found = self._call(f"list the versions of {model!r}", lambda: list(self.client.get_model_versions(model)))
        return sorted((self._to_record(model, mv, champion) for mv in found), key=lambda r: _version_number(r.version))

    def find_run(self, model: str, run_id: str) -> VersionRecord | None:
        mv = self._call(f"look up the version of run {run_id}", lambda: self._run(
            lambda: self.client._api.get_model_version_by_params(external_id=external_id(model, run_id))))
        if mv is None:
            return None
        return self._to_record(model, mv, self._champion_name(self._registered(model)))

    def get(self, model: str, version: str) -> VersionRecord | None:
        mv = self._call(f"get {model!r} version {version}", lambda: self.client.get_model_version(model, version))
        if mv is None:
            return None
        return self._to_record(model, mv, self._champion_name(self._registered(model)))

    def champion(self, model: str) -> VersionRecord | None:
        name = self._champion_name(self._registered(model))
        return self.get(model, name) if name else None

    # Writing ----------------------------------------------------------------------------------------
    def create_version(self, model: str, run_id: str, metadata: Mapping[str, Value], *, author: str,
                       description: str) -> VersionRecord:
        from model_registry.types import ModelVersion, RegisteredModel  # with the client (see __init__)

        rm = self._registered(model)
        if rm is None:
            try:
                rm = self._run(lambda: self.client._api.upsert_registered_model(
                    RegisteredModel(name=model, owner=author, description="automl-vision: the best model of each run "
                                    "of the job")))
            except Exception as e:
                rm = self._registered(model)  # created meanwhile by a concurrent run
                if rm is None:
                    raise self._error(f"create registered model {model!r}", e) from None
        for _ in range(3):  # a concurrent run may take the next number first
            existing = self.find_run(model, run_id)
            if existing is not None:
                return existing
            names = [mv.name for mv in self._call(f"list the versions of {model!r}",
                                                  lambda: list(self.client.get_model_versions(model)))]
            number = max((_version_number(n) for n in names), default=0) + 1
            version = ModelVersion(name=str(number), author=author, description=description,
                                   external_id=external_id(model, run_id), custom_properties=dict(metadata))
            try:
                self._run(lambda: self.client._api.upsert_model_version(version, rm.id))
            except Exception as e:
                if getattr(e, "status", None) == 409 or "already exists" in str(e):
                    continue
                raise self._error(f"create version {number} of {model!r}", e) from None
            return self.find_run(model, run_id)
        raise RegistryError(f"model registry {self.url}: could not create a version of {model!r} for run {run_id}: "
                            "its number was taken three times by concurrent registrations; retry")

    def attach_model(self, record: VersionRecord, uri: str, format_version: str) -> VersionRecord:
        from model_registry.types import ModelArtifact  # with the client (see __init__)

        artifact = ModelArtifact(name=f"{record.model}-{record.version}", uri=uri, model_format_name=MODEL_FORMAT,
                                 model_format_version=format_version)
        self._call(f"attach the model to {record.model!r} version {record.version}", lambda: self._run(
            lambda: self.client._api.upsert_model_version_artifact(artifact, record.id)))
        return self.get(record.model, record.version)

    def update_metadata(self, record: VersionRecord, updates: Mapping[str, Value | None]) -> VersionRecord:
        mv = self._call(f"get {record.model!r} version {record.version}",
                        lambda: self.client.get_model_version(record.model, record.version))
        if mv is None:
            raise RegistryError(f"model registry {self.url}: {record.model!r} has no version {record.version}")
        props = dict(mv.custom_properties or {})
        for key, value in updates.items():
            if value is None:
                props.pop(key, None)
            else:
                props[key] = value
        mv.custom_properties = props
        self._call(f"update {record.model!r} version {record.version}", lambda: self.client.update(mv))
        return self.get(record.model, record.version)

    def set_champion(self, record: VersionRecord) -> None:
        rm = self._registered(record.model)
        props = dict(rm.custom_properties or {})
        props[CHAMPION_PROPERTY] = record.version
        rm.custom_properties = props
        self._call(f"name version {record.version} the champion of {record.model!r}", lambda: self.client.update(rm))
        for other in self.versions(record.model):  # the label follows the property (a retry mends a half change)
            has = CHAMPION_LABEL in other.metadata
            if other.version == record.version and not has:
                self.update_metadata(other, {CHAMPION_LABEL: ""})
            elif other.version != record.version and has:
                self.update_metadata(other, {CHAMPION_LABEL: None})

    def store_package(self, record: VersionRecord, package_dir: Path) -> str:
        raise ConfigError(f"the model registry {self.url} records where a model is, it does not store it: register "
                          f"a package that is in an object store (an s3:// URI; `register --upload s3://...` uploads "
                          f"{package_dir} first)")


def _error_detail(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.strip():
        try:
            doc = json.loads(body)
            return str(doc.get("message") or doc)
        except ValueError:
            return body.strip()[:300]
    return getattr(e, "reason", "") or ""


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def check_cluster_registry(location: str) -> None:
    """A pipeline on a cluster records versions in a Kubeflow Model Registry ('' none): a folder is refused."""
    if location and not is_url(location):
        raise ConfigError(f"registry {location!r}: a pipeline on a cluster records versions in a Kubeflow Model "
                          "Registry; give its REST service's http(s):// URL (a local registry folder is for runs on "
                          "this machine: a step's pod keeps no folder)")


def open_registry(location: str, *, token: str | None = None, author: str = "automl-vision") -> Registry:
    """The registry at ``location``: an http(s):// URL is a Kubeflow Model Registry's REST service, anything
    else a local registry folder (created on first use)."""
    if not location:
        raise ConfigError("no model registry given (a URL of a Kubeflow Model Registry, or a local folder)")
    if is_url(location):
        return KubeflowRegistry(location, token=token, author=author)
    if "://" in location:
        raise ConfigError(f"model registry {location!r}: give an http(s):// URL of a Kubeflow Model Registry's REST "
                          "service, or a local folder")
    return LocalRegistry(location)


def read_token(path: str | os.PathLike | None) -> str | None:
    """The registry token in a file (its whitespace stripped); None without a file."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as e:
        raise ConfigError(f"cannot read the registry token file {path}: {e.strerror}") from None
