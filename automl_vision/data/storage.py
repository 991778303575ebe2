"""Where images live: a path relative to the JSONL file, an absolute path, ``s3://bucket/key``, or the
original product's datastore URIs (``azureml://.../datastores/<ds>/paths/<p>``,
``AmlDatastore://<ds>/<p>``) mapped onto a configured store root.

Remote images are fetched once into a local cache, in parallel, retried on transient errors and
checked (length, and MD5 against the ETag where the ETag is one). Credentials never appear in a
message, a log line or a ``repr``.

A JSONL file may itself be an object (``s3://bucket/prefix/train.jsonl``): ``jsonl_file`` downloads such a
file into the cache the same way, and its relative image_url values name objects under ``s3://bucket/prefix``
(``jsonl.local_jsonl``, where every JSONL file enters the data layer, adds MLTable folders).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from automl_vision.errors import AutoMLError, ConfigError, DataError

log = logging.getLogger(__name__)

# Environment variables read by ``StorageConfig.from_env`` (the AWS CLI's names, which MinIO's and
# most S3-compatible stores' documentation uses too).
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
STORE_ROOT_VAR = "AUTOML_VISION_STORE_ROOT"
DATASTORES_VAR = "AUTOML_VISION_DATASTORES"  # "name=root,name2=root2"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_AZUREML = re.compile(r"/datastores/([^/]+)/paths/(.+)$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
# Bucket names S3-compatible stores accept: 3-63 of lowercase letters, digits, dots, hyphens (and the
# underscores of legacy names), starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_.\-]{1,61}[a-z0-9]$")

# S3 error codes that retrying cannot fix.
PERMANENT_S3_CODES = frozenset({
    "NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "InvalidObjectName", "AllAccessDisabled", "InvalidToken", "ExpiredToken",
    "NoSuchObject", "ResourceNotFound", "MethodNotAllowed", "InvalidRequest",
})


@dataclass(frozen=True)
class StorageConfig:
    """How to reach remote images. Secrets are kept out of ``repr`` so they never reach a log."""

    endpoint: str | None = None  # http(s)://host:port or host:port (https); None: AWS S3
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    store_root: str | None = None  # folder or s3://bucket/prefix holding <datastore>/<path>
    datastores: tuple[tuple[str, str], ...] = ()  # (datastore, root) pairs; the root holds <path>
    workers: int = 16
    attempts: int = 4  # tries per object, transient errors only
    backoff_s: float = 0.25  # wait before the second try; doubles each time
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.endpoint:
            problem = endpoint_problem(self.endpoint)
            if problem:
                raise ConfigError(problem)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides) -> "StorageConfig":
        """Endpoint and credentials from the AWS variables (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION)
        and the store root from AUTOML_VISION_STORE_ROOT / AUTOML_VISION_DATASTORES."""
        endpoint = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
        datastores = parse_datastores(env.get(DATASTORES_VAR, ""), DATASTORES_VAR)
        values = dict(
            endpoint=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            store_root=env.get(STORE_ROOT_VAR) or None,
            datastores=datastores,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def root_of(self, datastore: str) -> str | None:
        for name, root in self.datastores:
            if name == datastore:
                return root
        if self.store_root:
            return _join_root(self.store_root, datastore)
        return None


def parse_datastores(text: str, source: str) -> tuple[tuple[str, str], ...]:
    """``"name=root,name2=root2"`` as pairs; raises ConfigError naming the bad item."""
    pairs, problems = [], []
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, root = item.partition("=")
        if not sep or not name.strip() or not root.strip():
            problems.append(f"{source}: {item!r} must be datastore=root (a folder or s3://bucket/prefix)")
            continue
        pairs.append((name.strip(), root.strip()))
    if problems:
        raise ConfigError(problems)
    return tuple(pairs)


def redact_url(url: str) -> str:
    """``url`` with any user name and password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.rpartition("://") if "://" in url else ("", "", url)
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def endpoint_problem(endpoint: str) -> str | None:
    """Why an S3 endpoint (``http(s)://host[:port]`` or ``host[:port]``) is unusable, or None; the text
    never shows a password written in it."""
    shown = redact_url(endpoint)
    allowed = "allowed: http(s)://host[:port] or host[:port], e.g. http://minio.kubeflow:9000"
    text = endpoint if "://" in endpoint else "https://" + endpoint
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        reason = _no_secret(str(e), endpoint)
        return f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) is not a valid URL ({reason}); {allowed}"
    if parts.username is not None or parts.password is not None:
        return (f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) holds a user name or password; put the credentials in "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead; {allowed}")
    if parts.scheme not in ("http", "https"):
        return f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) has scheme {parts.scheme}://; {allowed}"
    if not parts.hostname:
        return f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) names no host; {allowed}"
    if parts.path.strip("/") or parts.query or parts.fragment:
        return f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) must be scheme://host[:port] without a path; {allowed}"
    if port == 0:
        return f"S3 endpoint {shown!r} (AWS_ENDPOINT_URL) has port 0; {allowed}"
    return None


def _no_secret(text: str, endpoint: str) -> str:
    authority = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return text.replace(authority, redact_url("//" + authority)[2:]) if "@" in authority else text


def storage_from_environment(**overrides) -> StorageConfig:
    """The storage settings of this process (used where no StorageConfig is passed in)."""
    return StorageConfig.from_env(os.environ, **overrides)


# --- resolving image_url ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Location:
    """Where an image is: ``uri`` is an absolute local path or ``s3://bucket/key``."""

    uri: str
    bucket: str | None = None
    key: str | None = None

    @property
    def is_local(self) -> bool:
        return self.bucket is None


class LocationError(ValueError):
    """``image_url`` cannot be resolved; ``code`` is the rule it breaks."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def is_remote(url: str) -> bool:
    return _SCHEME.match(url) is not None


def parse_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; a key may hold any character (``a:b@c.jpg`` too), a bucket
    name only what S3 allows. Raises LocationError naming the URI (any credentials in it hidden)."""
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise LocationError("unsupported_uri", f"{redact_url(uri)!r} must be s3://bucket/key")
    problem = bucket_problem(bucket)
    if problem:
        raise LocationError("unsupported_uri", f"{redact_url(uri)!r}: {problem}")
    return bucket, key


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a bucket name, or None."""
    if "@" in bucket:
        return ("a user name or password cannot be written in an s3:// URI (s3://bucket/key); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if ":" in bucket:
        return (f"bucket name {bucket!r} cannot hold ':'; to name a store (host:port), set AWS_ENDPOINT_URL="
                "http://host:port and write s3://bucket/key")
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (f"bucket name {bucket!r} is not valid; allowed: 3-63 lowercase letters, digits, dots, hyphens and "
                "underscores, starting and ending with a letter or digit")
    return None


def _join_root(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel.lstrip("/")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _map_onto_root(url: str, root: str, rel: str) -> Location:
    """A datastore path placed under ``root`` (a folder or s3://bucket/prefix), never escaping it."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        if not bucket:
            raise LocationError("unsupported_uri", f"store root {root!r} must be s3://bucket[/prefix]")
        prefix = prefix.strip("/")
        key = posixpath.normpath(posixpath.join(prefix, rel)) if prefix else posixpath.normpath(rel)
        if key.startswith("../") or key == ".." or (prefix and not (key + "/").startswith(prefix + "/")):
            raise LocationError("path_escapes_root",
                                f"image_url={url!r} maps outside its datastore's root {root}")
        return Location(f"s3://{bucket}/{key}", bucket, key)
    if is_remote(root):
        raise LocationError("unsupported_uri", f"store root {root!r} must be a folder or s3://bucket/prefix")
    base = os.path.abspath(root)
    path = os.path.normpath(os.path.join(base, rel))
    if not _inside(path, base):
        raise LocationError("path_escapes_root",
                            f"image_url={url!r} maps to {path}, outside its datastore's root {base}")
    return Location(path)


def _relative_to_s3(url: str, base: str, data_root: str) -> Location:
    """A relative image_url of a JSONL file in the "folder" ``base`` (s3://bucket/prefix), kept inside
    ``data_root`` (s3://bucket/prefix) as a relative path is kept inside a local data root."""
    bucket, _, prefix = base[5:].partition("/")
    root_bucket, _, root_prefix = data_root[5:].partition("/") if data_root.startswith("s3://") else ("", "", "")
    prefix, root_prefix = prefix.strip("/"), root_prefix.strip("/")
    key = posixpath.normpath(posixpath.join(prefix, url)) if prefix else posixpath.normpath(url)
    uri = f"s3://{bucket}/{key}"
    escapes = key in (".", "..") or key.startswith("../") or root_bucket != bucket or (
        root_prefix and not key.startswith(root_prefix + "/"))
    if escapes:
        raise LocationError(
            "path_escapes_root",
            f"image_url={url!r} resolves to {uri}, outside the data root {data_root} (relative paths may not "
            "leave it; pass a data root that contains the images, or an absolute s3://bucket/key URI)")
    return Location(uri, bucket, key)


def resolve_url(url: str, base_dir: str, data_root: str, config: StorageConfig | None) -> Location:
    """Where ``url`` (an image_url of a JSONL file in ``base_dir``) points.

    ``base_dir`` is the JSONL file's folder: a local folder, or ``s3://bucket/prefix`` for a JSONL
    file in object storage, whose relative image_url values then name objects under that prefix.
    Relative paths must stay inside ``data_root`` (default: the JSONL file's folder; of the same
    kind as ``base_dir``); absolute paths and URIs are taken as they are.
    """
    m = _SCHEME.match(url)
    if m is None:
        if os.path.isabs(url):
            return Location(os.path.normpath(url))
        if base_dir.startswith("s3://"):
            return _relative_to_s3(url, base_dir, data_root)
        path = os.path.normpath(os.path.join(base_dir, url))
        if not _inside(path, data_root):
            raise LocationError(
                "path_escapes_root",
                f"image_url={url!r} resolves to {path}, outside the data root {data_root} "
                "(relative paths may not leave it; pass a data root that contains the images, or an absolute path)")
        return Location(path)
    scheme = m.group(1)
    if scheme == "s3":
        bucket, key = parse_s3(url)
        return Location(url, bucket, key)
    if scheme in ("azureml", "AmlDatastore"):
        if scheme == "azureml":
            dm = _AZUREML.search(url[len("azureml:/"):])
            if dm is None:
                raise LocationError("unsupported_uri",
                                    f"image_url={url!r}: an azureml URI must contain /datastores/<name>/paths/<path>")
            datastore, rel = dm.group(1), dm.group(2)
        else:
            datastore, _, rel = url[len("AmlDatastore://"):].partition("/")
            if not datastore or not rel:
                raise LocationError("unsupported_uri", f"image_url={url!r} must be AmlDatastore://<datastore>/<path>")
        root = config.root_of(datastore) if config is not None else None
        if root is None:
            raise LocationError(
                "unsupported_uri",
                f"image_url={url!r} names datastore {datastore!r} but no store root is configured; set "
                f"--store-root or {STORE_ROOT_VAR} to the folder or s3://bucket/prefix holding "
                f"<datastore>/<path> (or {DATASTORES_VAR}={datastore}=<root>)")
        return _map_onto_root(url, root, rel)
    raise LocationError("unsupported_uri",
                        f"image_url={url!r}: scheme {scheme}:// is not supported; allowed: a relative or "
                        "absolute path, s3://bucket/key, azureml://.../datastores/<ds>/paths/<p>, "
                        "AmlDatastore://<ds>/<p>")


# --- the cache and the fetcher ----------------------------------------------------------------

def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "automl-vision" / "images"


def cache_path(cache_dir: str | os.PathLike, uri: str) -> Path:
    """The cache file of a remote object: named by a hash of its URI, keeping its extension."""
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()
    ext = posixpath.splitext(uri)[1].lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", ext):
        ext = ""
    return Path(cache_dir) / digest[:2] / (digest + ext)


class FetchError(Exception):
    """An object could not be fetched; ``code`` is the S3 error code when the server gave one."""

    def __init__(self, message: str, transient: bool, code: str | None = None):
        self.transient = transient
        self.code = code
        super().__init__(message)


@dataclass
class FetchStats:
    fetched: int = 0
    cached: int = 0
    failed: int = 0
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0


def minio_client(config: StorageConfig, *, retries: bool = False):
    """A ``minio`` client for the config's endpoint and credentials. ``retries``: urllib3 retries
    connection errors and 5xx answers a few times (for callers without retries of their own)."""
    # The S3 client stack (about 0.5 s to import) is loaded only where s3:// data is used.
    import certifi
    import urllib3
    from minio import Minio

    endpoint = config.endpoint or "https://s3.amazonaws.com"
    secure = not endpoint.startswith("http://")
    host = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    host = host.rstrip("/")
    if "/" in host:
        raise ConfigError(f"S3 endpoint {endpoint!r} must be scheme://host[:port] without a path")
    http = urllib3.PoolManager(
        num_pools=4, maxsize=max(4, config.workers),
        timeout=urllib3.Timeout(connect=min(10.0, config.timeout_s), read=config.timeout_s),
        retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]) if retries else False,
        cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    return Minio(host, access_key=config.access_key, secret_key=config.secret_key,
                 session_token=config.session_token, secure=secure, region=config.region, http_client=http)


class S3Fetcher:
    """Downloads objects with the ``minio`` client; one instance is shared by all worker threads."""

    def __init__(self, config: StorageConfig):
        self.config = config
        # Retries are ours (counted, with backoff, transient errors only), so urllib3's are off.
        self.client = minio_client(config, retries=False)
        self._lock = threading.Lock()
        self.retries = 0

    def fetch(self, bucket: str, key: str, dest: Path) -> int:
        """Download one object to ``dest`` (atomically); returns its size. Raises FetchError."""
        return self._retrying(bucket, key, lambda: self._fetch_once(bucket, key, dest))

    def stat(self, bucket: str, key: str) -> tuple[str, int]:
        """The object's ETag (without quotes, "" when none) and size. Raises FetchError."""
        return self._retrying(bucket, key, lambda: self._stat_once(bucket, key))

    def _retrying(self, bucket: str, key: str, once: Callable):
        attempts = max(1, self.config.attempts)
        last: FetchError | None = None
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                return once()
            except FetchError as e:
                last = e
                if not e.transient:
                    raise
                log.debug("s3://%s/%s: try %d of %d failed: %s", bucket, key, attempt + 1, attempts, e)
        assert last is not None
        raise FetchError(f"{last} (gave up after {attempts} tries)", transient=True, code=last.code)

    def _stat_once(self, bucket: str, key: str) -> tuple[str, int]:
        try:
            info = self.client.stat_object(bucket, key)
        except Exception as e:
            raise _fetch_error(e) from None
        return (info.etag or "").strip('"'), int(info.size or 0)

    def _fetch_once(self, bucket: str, key: str, dest: Path) -> int:
        import urllib3  # with the S3 client, only where s3:// data is used

        tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.part")
        try:
            response = self.client.get_object(bucket, key)
        except Exception as e:
            raise _fetch_error(e) from None
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                for chunk in response.stream(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            headers = response.headers
        except (urllib3.exceptions.HTTPError, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise FetchError(f"connection broken while reading ({type(e).__name__})", transient=True) from None
        finally:
            response.close()
            response.release_conn()
        expected = headers.get("content-length")
        etag = (headers.get("etag") or "").strip('"').lower()
        encrypted = (headers.get("x-amz-server-side-encryption") or "").lower() == "aws:kms"
        if expected is not None and expected.isdigit() and int(expected) != size:
            tmp.unlink(missing_ok=True)
            raise FetchError(f"received {size} of {expected} bytes", transient=True)
        if _MD5.match(etag) and not encrypted and digest.hexdigest() != etag:
            tmp.unlink(missing_ok=True)
            raise FetchError("checksum mismatch: the MD5 of the received bytes differs from the ETag", transient=True)
        os.replace(tmp, dest)
        return size


def _fetch_error(e: Exception) -> FetchError:
    """The FetchError of an exception raised by a ``minio`` call (re-raised when it is none of those)."""
    import urllib3  # the S3 client stack, only where s3:// data is used
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(e, S3Error):
        return FetchError(_describe_s3_error(e), transient=e.code not in PERMANENT_S3_CODES, code=e.code)
    if isinstance(e, ServerError):
        return FetchError(f"server error {e.status_code}", transient=True)
    if isinstance(e, InvalidResponseError):
        return FetchError(f"invalid response from the server ({_first_line(e)})", transient=True)
    if isinstance(e, (urllib3.exceptions.HTTPError, OSError)):
        return FetchError(f"connection failed ({type(e).__name__})", transient=True, code="connection")
    if isinstance(e, ValueError):  # the client refuses a bucket or object name before asking the server
        return FetchError(f"refused by the S3 client ({_first_line(e)})", transient=False, code="InvalidRequest")
    raise e


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _describe_s3_error(e) -> str:
    reasons = {"NoSuchKey": "object not found", "NoSuchBucket": "bucket not found",
               "AccessDenied": "access denied (check the credentials' permissions)",
               "InvalidAccessKeyId": "the access key is not known to the server",
               "SignatureDoesNotMatch": "the secret key does not match the access key"}
    return f"{reasons.get(e.code, 'S3 error')} ({e.code})"


def fetch_all(items: Iterable[tuple[str, str]], cache_dir: str | os.PathLike, config: StorageConfig,
              *, workers: int | None = None, on_progress: Callable[[int, int], None] | None = None,
              fetcher: S3Fetcher | None = None) -> tuple[dict[str, Path | FetchError], FetchStats]:
    """Fetch each ``(uri, s3 uri)`` pair into the cache; returns {uri: local path or FetchError}.

    An object already in the cache is not fetched again.
    """
    t0 = time.monotonic()
    stats = FetchStats()
    todo: list[tuple[str, str, str, Path]] = []
    results: dict[str, Path | FetchError] = {}
    for uri in dict.fromkeys(u for u, _ in items):
        dest = cache_path(cache_dir, uri)
        if dest.is_file():
            results[uri] = dest
            stats.cached += 1
            continue
        bucket, key = parse_s3(uri)
        todo.append((uri, bucket, key, dest))
    if todo:
        fetcher = fetcher or S3Fetcher(config)
        n_workers = max(1, min(workers or config.workers, len(todo)))
        log.info("fetching %d remote images into %s (%d in parallel)", len(todo), cache_dir, n_workers)
        lock = threading.Lock()
        done = [0]

        def one(item: tuple[str, str, str, Path]) -> None:
            uri, bucket, key, dest = item
            try:
                size = fetcher.fetch(bucket, key, dest)
                outcome: Path | FetchError = dest
            except FetchError as e:
                outcome, size = e, 0
            with lock:
                results[uri] = outcome
                if isinstance(outcome, FetchError):
                    stats.failed += 1
                else:
                    stats.fetched += 1
                    stats.bytes += size
                done[0] += 1
                if on_progress is not None:
                    on_progress(done[0], len(todo))

        if n_workers == 1:
            for item in todo:
                one(item)
        else:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="fetch") as pool:
                list(pool.map(one, todo))
        stats.retries = fetcher.retries
    stats.seconds = time.monotonic() - t0
    return results, stats


# --- the JSONL file itself ----------------------------------------------------------------------

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_CREDENTIAL_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                               "ExpiredToken", "AllAccessDisabled"})


@dataclass(frozen=True)
class JsonlFile:
    """A labelled JSONL file, ready to read.

    ``name``: the file as the user gave it (a path, or ``s3://bucket/key``), which every message shows;
    ``path``: the file on this machine (for an object: its copy in the cache); ``base``: what relative
    image_url values resolve against: the file's folder, or the object's ``s3://bucket/prefix``.
    """

    name: str
    path: Path
    base: str

    @property
    def remote(self) -> bool:
        return self.base.startswith("s3://")


def jsonl_file(name: str, *, config: StorageConfig | None = None,
               cache_dir: str | os.PathLike | None = None) -> JsonlFile:
    """A JSONL file given as a path on this machine, taken as it is, or as an ``s3://bucket/key`` object,
    downloaded into ``cache_dir/jsonl/`` (default: the image cache) with the endpoint, credentials and
    retries of image fetching (``config``, default: from the environment) and downloaded again only when
    its ETag changes. Raises DataError naming the file and what to check or set."""
    m = _SCHEME.match(name)
    if m is None:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"file not found: {path}")
        return JsonlFile(str(path), path, os.path.dirname(os.path.abspath(path)))
    if m.group(1) != "s3":
        raise DataError(f"{name}: scheme {m.group(1)}:// is not supported for a JSONL file; allowed: a path on "
                        "this machine or s3://bucket/key")
    bucket, _, key = name[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise DataError(f"{redact_url(name)}: a JSONL file in object storage must be given as s3://bucket/key (the "
                        "key of the file itself, not of a folder)")
    if bucket_problem(bucket):
        raise DataError(f"{redact_url(name)}: {bucket_problem(bucket)}")
    config = config or storage_from_environment()
    try:
        dest = cached_object(name, config, cache_dir, ".jsonl")
    except FetchError as e:
        raise DataError(jsonl_fetch_problem(name, e, config)) from None
    return JsonlFile(name, dest, name.rsplit("/", 1)[0])


def cached_object(uri: str, config: StorageConfig, cache_dir: str | os.PathLike | None, suffix: str) -> Path:
    """A small object (a JSONL or MLTable file) in ``cache_dir/jsonl/`` (default: the image cache), downloaded
    again only when its ETag changes; earlier copies of the same object are removed. Raises FetchError."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    fetcher = S3Fetcher(config)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]
    folder = Path(cache_dir or default_cache_dir()) / "jsonl"
    etag, size = fetcher.stat(bucket, key)
    dest = folder / f"{digest}-{re.sub(r'[^0-9A-Za-z-]', '', etag)[:64] or 'unversioned'}{suffix}"
    if not (etag and dest.is_file() and dest.stat().st_size == size):
        fetcher.fetch(bucket, key, dest)
        log.info("downloaded %s (%d bytes) to %s", redact_url(uri), size, dest)
    for old in folder.glob(f"{digest}-*{suffix}"):  # earlier versions of the same object
        if old != dest:
            old.unlink(missing_ok=True)
    return dest


def jsonl_fetch_problem(uri: str, e: FetchError, config: StorageConfig) -> str:
    """Why a JSONL or MLTable object could not be read, with what to check or set."""
    endpoint = redact_url(config.endpoint) if config.endpoint else "none set, so AWS S3"
    credentials = "set" if config.access_key and config.secret_key else \
        "not set (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    if e.code in _NOT_FOUND_CODES:
        hint = ("check the bucket and key, and that AWS_ENDPOINT_URL names the store that holds them")
    elif e.code in _CREDENTIAL_CODES:
        hint = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
                "credentials) to credentials allowed to read it")
    else:
        hint = ("set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) to the URL of the S3-compatible store, e.g. "
                "http://minio.kubeflow:9000, and check that it can be reached from here")
    return f"cannot read {uri}: {e}; {hint} (endpoint: {endpoint}; credentials: {credentials})"


# --- folders to and from a prefix ---------------------------------------------------------------

def _prefix_of(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket")
    return bucket, prefix.strip("/")


def upload_folder(folder: str | os.PathLike, uri: str, config: StorageConfig | None = None, *,
                  skip: Callable[[str], bool] | None = None) -> list[str]:
    """Upload every file under ``folder`` to ``uri`` (s3://bucket/prefix), keeping relative paths;
    ``skip(relative path)`` leaves a file out. Returns the keys written. Raises AutoMLError naming the
    object that could not be written (credentials never shown)."""
    from minio.error import S3Error  # the S3 client (about 0.5 s to import) only where s3:// data is used

    bucket, prefix = _prefix_of(uri)
    client = minio_client(config or storage_from_environment(), retries=True)
    folder = Path(folder)
    written = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if skip is not None and skip(rel):
            continue
        key = f"{prefix}/{rel}" if prefix else rel
        try:
            client.fput_object(bucket, key, str(path))
        except S3Error as e:
            raise AutoMLError(f"cannot upload {path} to s3://{bucket}/{key}: {_describe_s3_error(e)}") from None
        except Exception as e:  # connection errors of urllib3, OSError
            raise AutoMLError(f"cannot upload {path} to s3://{bucket}/{key}: {_first_line(e)}") from None
        written.append(key)
    return written


def list_prefixes(uri: str, config: StorageConfig | None = None) -> list[str]:
    """The names of the "folders" directly under ``uri`` (s3://bucket/prefix), sorted."""
    from minio.error import S3Error  # the S3 client (about 0.5 s to import) only where s3:// data is used

    bucket, prefix = _prefix_of(uri)
    client = minio_client(config or storage_from_environment(), retries=True)
    base = f"{prefix}/" if prefix else ""
    try:
        names = {o.object_name[len(base):].strip("/") for o in client.list_objects(bucket, prefix=base) if o.is_dir}
    except S3Error as e:
        raise AutoMLError(f"cannot list s3://{bucket}/{base}: {_describe_s3_error(e)}") from None
    return sorted(n for n in names if n)


def download_prefix(uri: str, dest: str | os.PathLike, config: StorageConfig | None = None, *,
                    skip: Callable[[str], bool] | None = None) -> list[Path]:
    """Download every object under ``uri`` (s3://bucket/prefix) into ``dest``, keeping relative paths;
    ``skip(relative path)`` leaves an object out. Returns the files written."""
    from minio.error import S3Error  # the S3 client (about 0.5 s to import) only where s3:// data is used

    bucket, prefix = _prefix_of(uri)
    client = minio_client(config or storage_from_environment(), retries=True)
    base = f"{prefix}/" if prefix else ""
    dest = Path(dest)
    out = []
    try:
        for obj in client.list_objects(bucket, prefix=base, recursive=True):
            rel = obj.object_name[len(base):]
            if not rel or rel.endswith("/") or (skip is not None and skip(rel)):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(bucket, obj.object_name, str(target))
            out.append(target)
    except S3Error as e:
        raise AutoMLError(f"cannot read s3://{bucket}/{base}: {_describe_s3_error(e)}") from None
    return out
