"""Where images live: a path relative to the JSONL file, an absolute path, ``s3://bucket/key``, or the
original product's datastore URIs (``azureml://.../datastores/<ds>/paths/<p>``,
``AmlDatastore://<ds>/<p>``) mapped onto a configured store root.

Remote images are fetched once into a local cache, in parallel, retried on transient errors and
checked (length, and MD5 against the ETag where the ETag is one). Credentials never appear in a
message, a log line or a ``repr``.
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

from automl_vision.errors import ConfigError

log = logging.getLogger(__name__)

# Environment variables read by ``StorageConfig.from_env`` (the AWS CLI's names, which MinIO's and
# most S3-compatible stores' documentation uses too).
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
STORE_ROOT_VAR = "AUTOML_VISION_STORE_ROOT"
DATASTORES_VAR = "AUTOML_VISION_DATASTORES"  # "name=root,name2=root2"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_AZUREML = re.compile(r"/datastores/([^/]+)/paths/(.+)$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")

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
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise LocationError("unsupported_uri", f"{uri!r} must be s3://bucket/key")
    return bucket, key


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


def resolve_url(url: str, base_dir: str, data_root: str, config: StorageConfig | None) -> Location:
    """Where ``url`` (an image_url of a JSONL file in ``base_dir``) points.

    Relative paths must stay inside ``data_root`` (default: the JSONL file's folder); absolute
    paths and URIs are taken as they are.
    """
    m = _SCHEME.match(url)
    if m is None:
        if os.path.isabs(url):
            return Location(os.path.normpath(url))
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
    def __init__(self, message: str, transient: bool):
        self.transient = transient
        super().__init__(message)


@dataclass
class FetchStats:
    fetched: int = 0
    cached: int = 0
    failed: int = 0
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0


class S3Fetcher:
    """Downloads objects with the ``minio`` client; one instance is shared by all worker threads."""

    def __init__(self, config: StorageConfig):
        import certifi
        import urllib3
        from minio import Minio

        endpoint = config.endpoint or "https://s3.amazonaws.com"
        secure = not endpoint.startswith("http://")
        host = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
        host = host.rstrip("/")
        if "/" in host:
            raise ConfigError(f"S3 endpoint {endpoint!r} must be scheme://host[:port] without a path")
        self.config = config
        # Retries are ours (counted, with backoff, transient errors only), so urllib3's are off.
        http = urllib3.PoolManager(
            num_pools=4, maxsize=max(4, config.workers),
            timeout=urllib3.Timeout(connect=min(10.0, config.timeout_s), read=config.timeout_s),
            retries=False, cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(host, access_key=config.access_key, secret_key=config.secret_key,
                            session_token=config.session_token, secure=secure, region=config.region,
                            http_client=http)
        self._lock = threading.Lock()
        self.retries = 0

    def fetch(self, bucket: str, key: str, dest: Path) -> int:
        """Download one object to ``dest`` (atomically); returns its size. Raises FetchError."""
        attempts = max(1, self.config.attempts)
        last: FetchError | None = None
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                return self._fetch_once(bucket, key, dest)
            except FetchError as e:
                last = e
                if not e.transient:
                    raise
                log.debug("s3://%s/%s: try %d of %d failed: %s", bucket, key, attempt + 1, attempts, e)
        assert last is not None
        raise FetchError(f"{last} (gave up after {attempts} tries)", transient=True)

    def _fetch_once(self, bucket: str, key: str, dest: Path) -> int:
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.part")
        try:
            response = self.client.get_object(bucket, key)
        except S3Error as e:
            raise FetchError(_describe_s3_error(e), transient=e.code not in PERMANENT_S3_CODES) from None
        except ServerError as e:
            raise FetchError(f"server error {e.status_code}", transient=True) from None
        except InvalidResponseError as e:
            raise FetchError(f"invalid response from the server ({_first_line(e)})", transient=True) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise FetchError(f"connection failed ({type(e).__name__})", transient=True) from None
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
