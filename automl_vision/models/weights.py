"""Pretrained weights: resolved from each library's own source, downloaded once, verified, shared safely.

Where the files come from:

* default (no weights location set): the library's canonical source, fetched on first use into the
  library's own cache and reused after that:

  - torchvision: ``download.pytorch.org/models/<name>-<sha256 prefix>.pth`` (the weights enums' URLs)
    into ``$TORCH_HOME/hub/checkpoints/``; the hash prefix in the name is checked as torch.hub does;
  - timm: the Hugging Face Hub repository of the model's pretrained cfg (``hf_hub_id``), file
    ``model.safetensors``, into the Hugging Face cache layout (``$HF_HUB_CACHE/models--timm--<id>/``
    ``blobs/<sha256>``, ``snapshots/<commit>/model.safetensors``); the sha256 is the Hub's
    ``X-Linked-Etag`` of the LFS file and the size its ``X-Linked-Size``;
  - ultralytics: the release assets of ``ultralytics/assets`` (the tag ultralytics itself uses),
    into ``$TORCH_HOME/hub/checkpoints/`` beside torchvision's files (ultralytics' own weights folder
    is per working directory, so not a cache that trials on one node can share); the size is the
    server's ``Content-Length`` and the file must be a PyTorch zip archive.

  Each base address is a setting (:data:`BASE_URL_ENV`), so a proxy or a test server can stand in.
* a mirror (``--weights``, ``$AUTOML_VISION_WEIGHTS``): a folder, an ``s3://bucket/prefix`` or an
  ``https://`` address holding the files under :attr:`WeightsFile.relpath` (``resnet18-f37072fd.pth``,
  ``timm/<hub id>/model.safetensors``, ``yolov5mu.pt``), seeded by ``automl-vision weights fetch``,
  which also writes :data:`MANIFEST` (names, files, sha256, sizes, licences). Weights then come from
  there only; remote files are copied once into a local cache.

Offline (``AUTOML_VISION_OFFLINE=1``, or the source cannot be reached) a missing file is an error
naming the model, the file expected, where it was looked for and the command that stages it. Random
weights are never substituted.

Downloads go to a temporary file in the destination folder, are verified, fsync'ed and renamed into
place; a lock file beside the destination makes concurrent trials on one node wait for one download
instead of repeating it. A corrupted cached file is deleted and fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from automl_vision.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_ENV = "AUTOML_VISION_OFFLINE"
MANIFEST = "weights-manifest.json"
#: The canonical base address of each source, and the variable that replaces it.
BASE_URL_ENV = {
    "torchvision": ("AUTOML_VISION_TORCHVISION_URL", "https://download.pytorch.org/models"),
    "timm": ("AUTOML_VISION_HF_URL", "https://huggingface.co"),
    "ultralytics": ("AUTOML_VISION_ULTRALYTICS_URL", "https://github.com/ultralytics/assets/releases/download/v8.4.0"),
}
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 120.0
_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX


@dataclass(frozen=True)
class WeightsFile:
    """One model's pretrained file: its path in a mirror, its canonical address and how to check it."""

    model_name: str
    relpath: str  # mirror layout: 'resnet18-f37072fd.pth', 'timm/<hub id>/model.safetensors', 'yolov5mu.pt'
    url: str  # canonical address (with the default base URL)
    library: str  # 'torchvision', 'timm' or 'ultralytics'
    hub_id: str | None = None  # timm: the Hugging Face repository
    code_licence: str = ""
    weights_licence: str = ""
    #: mean, std, interpolation, input_size, crop_pct as the weights were trained and evaluated with
    preprocessing: Mapping = field(default_factory=dict, compare=False)

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        """torchvision: the hash prefix in the file name."""
        if self.library != "torchvision":
            return None
        m = _HASH_IN_NAME.search(self.filename)
        return m.group(1) if m else None

    def source_url(self, env: Mapping[str, str] | None = None) -> str:
        """The address to download from: the canonical one, with its base URL setting applied."""
        env = os.environ if env is None else env
        var, default = BASE_URL_ENV[self.library]
        base = (env.get(var) or (env.get("HF_ENDPOINT") if self.library == "timm" else None) or default).rstrip("/")
        if self.library == "timm":
            return f"{base}/{self.hub_id}/resolve/main/{self.filename}"
        return f"{base}/{self.filename}"


@dataclass(frozen=True)
class WeightsSource:
    """Where to look for pretrained weights.

    ``location`` None means the canonical sources (through the libraries' caches); otherwise a folder,
    an ``s3://bucket/prefix`` or an ``http(s)://`` mirror. S3 credentials come from the usual variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, read by the S3 client itself); ``s3_endpoint``
    is the server's URL (``http://minio:9000``).
    """

    location: str | None = None
    s3_endpoint: str | None = None
    cache_dir: str | None = None  # where mirror files are copied (default: ~/.cache/automl-vision/weights)

    @property
    def is_s3(self) -> bool:
        return bool(self.location) and self.location.startswith("s3://")

    @property
    def is_http(self) -> bool:
        return bool(self.location) and self.location.startswith(("http://", "https://"))

    def cache_root(self) -> Path:
        return Path(self.cache_dir or Path.home() / ".cache" / "automl-vision" / "weights")


def s3_endpoint_from_env(env: Mapping[str, str]) -> str | None:
    """The S3 endpoint URL named by the environment (``AWS_ENDPOINT_URL``, then KServe's ``S3_ENDPOINT``)."""
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if url:
        return url
    host = env.get("S3_ENDPOINT")
    if not host:
        return None
    if "://" in host:
        return host
    secure = env.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false", "no")
    return f"{'https' if secure else 'http'}://{host}"


def offline(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class WeightsUnavailable(ConfigError):
    """Pretrained weights were asked for and cannot be had: the message says what, where and how."""


class _Unreachable(Exception):
    """The source could not be reached (DNS, refused connection, timeout)."""


def _stage_hint(file: WeightsFile) -> str:
    return (f"stage it with `automl-vision weights fetch --models {_cli_name(file)} --to DIR_OR_S3` on a machine "
            f"with access and pass --weights DIR_OR_S3 (or set AUTOML_VISION_WEIGHTS); "
            f"or train from scratch with pretrained: 0")


def _cli_name(file: WeightsFile) -> str:
    m = re.match(r"yolov5 \(model_size (\w+)\)", file.model_name)
    return f"yolov5:{m.group(1)}" if m else file.model_name


# --- verification ---------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Expected:
    """What a file must be: a full sha256, a sha256 prefix, a size, or a PyTorch zip archive."""

    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    torch_zip: bool = False

    def problem(self, path: Path, digest: str | None = None) -> str | None:
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            return f"size {size} bytes, expected {self.size}"
        if self.sha256 or self.sha256_prefix:
            digest = digest or sha256_of(path)
            if self.sha256 and digest != self.sha256.lower():
                return f"sha256 {digest}, expected {self.sha256}"
            if self.sha256_prefix and not digest.startswith(self.sha256_prefix):
                return f"sha256 {digest} does not start with {self.sha256_prefix} (the hash in its name)"
        if self.torch_zip:

            if not zipfile.is_zipfile(path):
                return "not a PyTorch checkpoint (no zip archive)"
        return None


# --- downloading ----------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _open(url: str, method: str = "GET", follow: bool = True, headers: Mapping[str, str] | None = None):
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "automl-vision", **(headers or {})})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        return opener.open(request, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if not follow and 300 <= e.code < 400:
            return e  # the redirect itself: its headers are what we asked for
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise _Unreachable(f"cannot reach {urlparse(url).netloc}: {getattr(e, 'reason', e)}") from None


@contextmanager
def _file_lock(dest: Path):
    """An exclusive lock beside ``dest`` (``<name>.lock``), released on exit; other processes wait."""
    lock = dest.with_name(dest.name + ".lock")
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress(total: int | None, name: str):
    """A tqdm bar on a terminal; otherwise None (one log line per file is written instead)."""
    if not sys.stderr.isatty():
        return None

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _stream_to(response, dest: Path, expected: Expected, what: str) -> Path:
    """Write ``response``'s body into ``dest`` atomically: temp file in the same folder, verify, fsync, rename."""
    total = response.headers.get("Content-Length")
    total = int(total) if total and total.isdigit() else None
    if expected.size is not None and total is not None and total != expected.size:
        raise ConfigError(f"{what}: the server sends {total} bytes, expected {expected.size}; not used")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    done = 0
    started = time.monotonic()
    bar = _progress(total, dest.name)
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                h.update(block)
                done += len(block)
                if bar is not None:
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise ConfigError(f"{what}: the download stopped after {done} of {total} bytes; nothing kept, "
                              f"run again to retry")
        problem = expected.problem(tmp, h.hexdigest())
        if problem:
            raise ConfigError(f"{what}: the downloaded file fails verification ({problem}); refused and deleted")
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, http.client.HTTPException)):
            raise ConfigError(f"{what}: the download failed after {done} bytes ({e}); nothing kept, "
                              f"run again to retry") from None
        raise
    finally:
        response.close()
        if bar is not None:
            bar.close()
    seconds = time.monotonic() - started
    log.info("downloaded %s: %.1f MB in %.1f s, verified", dest.name, done / 1e6, seconds)
    return dest


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch_url(url: str, dest: Path, expected: Expected, what: str,
              open_response: Callable[[], object] | None = None) -> Path:
    """``dest`` downloaded from ``url`` once, verified; a valid existing file is kept, a corrupt one replaced.

    The source is asked first (a HEAD request), so an unreachable one leaves no trace; then the lock
    beside ``dest`` is taken and, unless another process fetched the file meanwhile, it is downloaded.
    Raises :class:`_Unreachable` when the server cannot be reached, HTTPError when it refuses.
    """
    if dest.is_file() and _valid(dest, expected, what):
        return dest
    if open_response is None:
        _open(url, method="HEAD").close()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest):
        if dest.is_file() and _valid(dest, expected, what):  # another process fetched it meanwhile
            return dest
        log.info("downloading %s from %s", dest.name, url)
        response = (open_response or (lambda: _open(url)))()
        try:
            return _stream_to(response, dest, expected, what)
        finally:
            response.close()


def _valid(path: Path, expected: Expected, what: str) -> bool:
    problem = expected.problem(path)
    if problem is None:
        return True
    log.warning("%s: the cached %s fails verification (%s); deleting it", what, path, problem)
    path.unlink(missing_ok=True)
    return False


# --- the libraries' caches ---------------------------------------------------------------------------

def torch_checkpoints_dir() -> Path:
    """torch.hub's ``<hub dir>/checkpoints`` (``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``)."""
    if "torch" in sys.modules:  # honours torch.hub.set_dir
        import torch  # only when already loaded: a weights listing need not load torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def hf_cache_dir() -> Path:
    cache = os.environ.get("HF_HUB_CACHE")
    if cache:
        return Path(cache)
    return Path(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))) / "hub"


def _hf_repo_dir(hub_id: str) -> Path:
    return hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))


def _hf_cached(file: WeightsFile) -> Path | None:
    """The cached file of the ``main`` revision, if the cache holds it (the Hub's own layout)."""
    repo = _hf_repo_dir(file.hub_id)
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    path = repo / "snapshots" / ref.read_text().strip() / file.filename
    return path if path.exists() else None


def cache_path(file: WeightsFile) -> Path:
    """Where the library's cache keeps ``file`` (timm: the snapshot path when cached, else the repo folder)."""
    if file.library == "timm":
        return _hf_cached(file) or _hf_repo_dir(file.hub_id)
    return torch_checkpoints_dir() / file.filename


def _expected(file: WeightsFile, manifest: Mapping | None = None) -> Expected:
    entry = (manifest or {}).get(file.relpath) or {}
    return Expected(sha256=entry.get("sha256"), sha256_prefix=file.sha256_prefix, size=entry.get("size"),
                    torch_zip=file.library == "ultralytics")


def _from_canonical(file: WeightsFile) -> Path:
    url = file.source_url()
    if file.library == "timm":
        cached = _hf_cached(file)
        if cached is not None:
            blob = cached.resolve()
            if _valid(blob, Expected(sha256=blob.name if re.fullmatch(r"[0-9a-f]{64}", blob.name) else None),
                      file.model_name):
                return cached
            cached.unlink(missing_ok=True)
        if offline():
            raise _missing(file, _hf_repo_dir(file.hub_id) / "snapshots" / "<commit>" / file.filename,
                           f"not in the Hugging Face cache; offline: {OFFLINE_ENV} is set")
        try:
            return _fetch_hf(file, url)
        except _Unreachable as e:
            raise _missing(file, _hf_repo_dir(file.hub_id) / "snapshots" / "<commit>" / file.filename,
                           f"not in the Hugging Face cache; {e}") from None
    dest = torch_checkpoints_dir() / file.filename
    expected = _expected(file)
    if dest.is_file() and _valid(dest, expected, file.model_name):
        return dest
    if offline():
        raise _missing(file, dest, f"not in the cache; offline: {OFFLINE_ENV} is set", url)
    try:
        return fetch_url(url, dest, expected, f"pretrained weights for {file.model_name}")
    except _Unreachable as e:
        raise _missing(file, dest, f"not in the cache; {e}", url) from None
    except urllib.error.HTTPError as e:
        raise ConfigError(f"pretrained weights for {file.model_name}: {url} answered HTTP {e.code}; "
                          f"expected {dest}. {_stage_hint(file)}") from None


def _missing(file: WeightsFile, expected: Path, reason: str, url: str | None = None) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"pretrained weights for {file.model_name} not available: expected {expected} ({reason}; source "
        f"{url or file.source_url()}); {_stage_hint(file)}; {_manual_hint(file)}")


def _manual_hint(file: WeightsFile) -> str:
    if file.library == "timm":
        return (f"by hand: `huggingface-cli download {file.hub_id} {file.filename}` fills the Hugging Face cache, "
                f"or {file.url} goes to <mirror>/{file.relpath}")
    return f"by hand: download {file.url} to that path"


def _fetch_hf(file: WeightsFile, url: str) -> Path:
    """The Hub's answer to the file's address, without following the redirect: commit, sha256, size."""
    head = _open(url, method="HEAD", follow=False, headers={"Accept-Encoding": "identity"})
    code = getattr(head, "status", None) or head.getcode()
    if code >= 400:
        raise ConfigError(f"pretrained weights for {file.model_name}: {url} answered HTTP {code}")
    headers = head.headers
    commit = headers.get("X-Repo-Commit")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').removeprefix("W/").strip('"')
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    location = headers.get("Location")
    head.close()
    if not commit or not re.fullmatch(r"[0-9a-f]{64}", etag or ""):
        raise ConfigError(f"pretrained weights for {file.model_name}: {url} did not say which commit and sha256 "
                          f"(X-Repo-Commit, X-Linked-Etag); is {BASE_URL_ENV['timm'][0]} a Hugging Face Hub?")
    repo = _hf_repo_dir(file.hub_id)
    blob = repo / "blobs" / etag
    expected = Expected(sha256=etag, size=int(size) if size and size.isdigit() else None)
    target = urllib.parse.urljoin(url, location) if location else url
    fetch_url(target, blob, expected, f"pretrained weights for {file.model_name}")
    snapshot = repo / "snapshots" / commit / file.filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if not snapshot.exists():
        link = snapshot.with_name(f".{snapshot.name}.{os.getpid()}.link")
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, snapshot.parent), link)
        os.replace(link, snapshot)
    ref = repo / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".main.{os.getpid()}")
    tmp.write_text(commit)
    os.replace(tmp, ref)
    return snapshot


# --- mirrors ------------------------------------------------------------------------------------------

def _from_folder(file: WeightsFile, source: WeightsSource) -> Path:
    root = Path(source.location)
    path = root / file.relpath
    if not path.is_file():
        raise WeightsUnavailable(
            f"pretrained weights for {file.model_name} not found: expected {path} (the weights folder "
            f"{root}); {_stage_hint(file)}; or download {file.url} to that path")
    manifest = _read_manifest_file(root / MANIFEST)
    problem = _expected(file, manifest).problem(path)
    if problem:
        raise ConfigError(f"pretrained weights for {file.model_name}: {path} fails verification ({problem}); "
                          f"not used. Re-stage it with `automl-vision weights fetch --models {_cli_name(file)} "
                          f"--to {root}`")
    return path


def _read_manifest_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return _files_of(json.loads(path.read_text()))


def _files_of(manifest: Mapping) -> dict:
    return {entry["file"]: entry for entry in manifest.get("models", [])}


def _from_http(file: WeightsFile, source: WeightsSource) -> Path:
    base = source.location.rstrip("/")
    parsed = urlparse(base)
    dest = source.cache_root() / parsed.netloc / parsed.path.strip("/") / file.relpath
    url = f"{base}/{file.relpath}"
    manifest = None
    try:
        with _open(f"{base}/{MANIFEST}") as r:
            manifest = _files_of(json.loads(r.read()))
    except (urllib.error.HTTPError, _Unreachable, ValueError):
        pass  # no manifest: the hash in torchvision names, sizes are still checked
    try:
        return fetch_url(url, dest, _expected(file, manifest), f"pretrained weights for {file.model_name}")
    except urllib.error.HTTPError as e:
        raise WeightsUnavailable(f"pretrained weights for {file.model_name} not found: expected {url} "
                                 f"(HTTP {e.code}); {_stage_hint(file)}") from None
    except _Unreachable as e:
        if dest.is_file():
            return dest
        raise WeightsUnavailable(f"pretrained weights for {file.model_name} not available: expected {url}; {e}; "
                                 f"{_stage_hint(file)}") from None


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.strip("/")


def _from_s3(file: WeightsFile, source: WeightsSource) -> Path:
    bucket, prefix = _split_s3(source.location)
    key = f"{prefix}/{file.relpath}" if prefix else file.relpath
    uri = f"s3://{bucket}/{key}"
    dest = source.cache_root() / bucket / key
    client = _s3_client(source)
    try:
        stat = client.stat_object(bucket, key)
    except Exception as e:  # S3Error (missing key or bucket), connection errors
        code = getattr(e, "code", None)
        if code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise WeightsUnavailable(
                f"pretrained weights for {file.model_name} not found: expected {uri}; {_stage_hint(file)} "
                f"(or get {file.url} and upload it to that key, e.g. `aws s3 cp {file.filename} {uri}`)") from None
        raise ConfigError(f"cannot read {uri} from the S3 endpoint {source.s3_endpoint or 'default'}: {e}") from None
    manifest = None
    manifest_key = f"{prefix}/{MANIFEST}" if prefix else MANIFEST
    try:
        response = client.get_object(bucket, manifest_key)
        try:
            manifest = _files_of(json.loads(response.read()))
        finally:
            response.close()
            response.release_conn()
    except Exception:  # no manifest: the hash in torchvision names and the size are still checked
        pass
    expected = _expected(file, manifest)
    expected = Expected(expected.sha256, expected.sha256_prefix, expected.size or stat.size, expected.torch_zip)
    if dest.is_file() and _valid(dest, expected, file.model_name):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest):
        if dest.is_file() and _valid(dest, expected, file.model_name):
            return dest
        response = client.get_object(bucket, key)
        try:
            _stream_to(response, dest, expected, f"pretrained weights for {file.model_name} ({uri})")
        finally:
            response.release_conn()
    return dest


def _s3_client(source: WeightsSource):
    import urllib3  # the S3 client stack, only for s3:// weights sources
    from minio import Minio
    from minio.credentials import ChainedProvider, EnvAWSProvider, EnvMinioProvider

    url = urlparse(source.s3_endpoint or "https://s3.amazonaws.com")
    if not url.netloc:
        raise ConfigError(f"S3 endpoint {source.s3_endpoint!r} must be a URL such as http://minio:9000")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=300),
                               retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]))
    return Minio(url.netloc, secure=url.scheme == "https", http_client=http,
                 credentials=ChainedProvider([EnvAWSProvider(), EnvMinioProvider()]))


def locate(file: WeightsFile, source: WeightsSource | None) -> Path:
    """The local, verified path of ``file``: fetched once from its source when needed.

    Raises ConfigError (:class:`WeightsUnavailable` when the file cannot be had) naming the model, the
    file expected, where it was looked for and the command that stages it.
    """
    source = source or WeightsSource()
    if source.location is None:
        return _from_canonical(file)
    if source.is_s3:
        return _from_s3(file, source)
    if source.is_http:
        return _from_http(file, source)
    return _from_folder(file, source)


# --- the catalogue --------------------------------------------------------------------------------------

def manifest_entry(file: WeightsFile, path: Path) -> dict:
    """One model's line in :data:`MANIFEST`."""
    return {"model_name": file.model_name, "library": file.library, "file": file.relpath, "source": file.url,
            "sha256": sha256_of(path), "size": path.stat().st_size, "code_licence": file.code_licence,
            "weights_licence": file.weights_licence, "preprocessing": dict(file.preprocessing)}


def to_json(file: WeightsFile) -> dict:
    d = asdict(file)
    d["preprocessing"] = dict(file.preprocessing)
    d["source_url"] = file.source_url()
    return d
