"""Where pretrained weights are found: the libraries' own caches, a folder, or an ``s3://`` prefix.

Clusters without internet access are common, so nothing is ever downloaded from the model
zoos at training time. A user seeds the weights once:

* default (no source given): torchvision's cache ``$TORCH_HOME/hub/checkpoints/<file>`` and the
  Hugging Face cache for timm models, exactly where the libraries themselves would put them;
* a folder or an ``s3://bucket/prefix``: the same file names under it, ``resnet50-11ad3fa6.pth``
  for torchvision and ``timm/<hub id>/model.safetensors`` for timm (the layout of
  ``huggingface-cli download <hub id> model.safetensors --local-dir <folder>/<hub id>``).
  Files from S3 are copied once into a local cache folder.

When weights are asked for and the file is not there, the lookup fails at once naming the file
expected and how to provide it; it never falls back to random weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from automl_vision.errors import ConfigError


@dataclass(frozen=True)
class WeightsFile:
    """One model's pretrained weights: the path under a weights folder and where to get the file."""

    model_name: str
    relpath: str  # 'resnet18-f37072fd.pth' or 'timm/<hub id>/model.safetensors'
    url: str  # download address, for people seeding a folder on a connected machine
    library: str  # 'torchvision' or 'timm'
    hub_id: str | None = None  # timm: the Hugging Face repository


@dataclass(frozen=True)
class WeightsSource:
    """Where to look for pretrained weights.

    ``location`` None means the libraries' caches; otherwise a folder or an ``s3://bucket/prefix``.
    S3 credentials come from the usual variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    read by the S3 client itself); ``s3_endpoint`` is the server's URL (``http://minio:9000``).
    """

    location: str | None = None
    s3_endpoint: str | None = None
    cache_dir: str | None = None  # where S3 files are copied (default: ~/.cache/automl-vision/weights)

    @property
    def is_s3(self) -> bool:
        return bool(self.location) and self.location.startswith("s3://")


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


def locate(file: WeightsFile, source: WeightsSource | None) -> Path:
    """The local path of ``file``; raises ConfigError naming the file expected and how to provide it."""
    source = source or WeightsSource()
    if source.location is None:
        return _from_library_cache(file)
    if source.is_s3:
        return _from_s3(file, source)
    path = Path(source.location) / file.relpath
    if path.is_file():
        return path
    raise ConfigError(
        f"pretrained weights for {file.model_name} not found: expected {path} "
        f"({_how_to_get(file, str(path))}); or train from scratch with pretrained: 0"
    )


def _how_to_get(file: WeightsFile, dest: str) -> str:
    if file.library == "timm":
        folder = dest.rsplit("/", 1)[0]
        return (f"on a machine with internet access run `huggingface-cli download {file.hub_id} model.safetensors "
                f"--local-dir {folder}`, or download {file.url}, then copy it there")
    return f"download {file.url} to that path"


def _from_library_cache(file: WeightsFile) -> Path:
    if file.library == "torchvision":
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / file.relpath
        if path.is_file():
            return path
        raise ConfigError(
            f"pretrained weights for {file.model_name} not found: expected {path} "
            f"(download {file.url} there, or set TORCH_HOME to a folder holding hub/checkpoints/{file.relpath}, "
            f"or give a weights folder or s3:// prefix holding {file.relpath}); "
            f"or train from scratch with pretrained: 0"
        )
    # timm: the Hugging Face cache, looked up without touching the network (asking timm to load
    # would try to download, and retry for a long time, when the file is missing).
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(file.hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    raise ConfigError(
        f"pretrained weights for {file.model_name} not found: expected model.safetensors of the Hugging Face "
        f"repository {file.hub_id!r} in the cache {cache} (seed it with `huggingface-cli download {file.hub_id}` "
        f"on a machine with access, then copy the cache; or give a weights folder or s3:// prefix holding "
        f"{file.relpath}); or train from scratch with pretrained: 0"
    )


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.strip("/")


def _from_s3(file: WeightsFile, source: WeightsSource) -> Path:
    bucket, prefix = _split_s3(source.location)
    key = f"{prefix}/{file.relpath}" if prefix else file.relpath
    uri = f"s3://{bucket}/{key}"
    cache = Path(source.cache_dir or Path.home() / ".cache" / "automl-vision" / "weights")
    dest = cache / bucket / key
    client = _s3_client(source)
    try:
        stat = client.stat_object(bucket, key)
    except Exception as e:  # S3Error (missing key or bucket), connection errors
        code = getattr(e, "code", None)
        if code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise ConfigError(
                f"pretrained weights for {file.model_name} not found: expected {uri} "
                f"(get {file.url} on a machine with internet access and upload it to that key, e.g. "
                f"`aws s3 cp {Path(file.relpath).name} {uri}`); or train from scratch with pretrained: 0"
            ) from None
        raise ConfigError(f"cannot read {uri} from the S3 endpoint {source.s3_endpoint or 'default'}: {e}") from None
    if dest.is_file() and dest.stat().st_size == stat.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        client.fget_object(bucket, key, str(tmp))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _s3_client(source: WeightsSource):
    import urllib3
    from minio import Minio
    from minio.credentials import ChainedProvider, EnvAWSProvider, EnvMinioProvider

    url = urlparse(source.s3_endpoint or "https://s3.amazonaws.com")
    if not url.netloc:
        raise ConfigError(f"S3 endpoint {source.s3_endpoint!r} must be a URL such as http://minio:9000")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=300),
                               retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]))
    return Minio(url.netloc, secure=url.scheme == "https", http_client=http,
                 credentials=ChainedProvider([EnvAWSProvider(), EnvMinioProvider()]))
