"""Where every JSONL file enters the data layer: a path on this machine, an ``s3://bucket/key`` object
(downloaded into the cache, see ``storage.jsonl_file``) or an MLTable folder naming one (see ``mltable``)."""

from __future__ import annotations

import os

from automl_vision.data import mltable
from automl_vision.data.storage import JsonlFile, StorageConfig, jsonl_file


def local_jsonl(source: str | os.PathLike | JsonlFile, *, config: StorageConfig | None = None,
                cache_dir: str | os.PathLike | None = None) -> JsonlFile:
    """The JSONL file ``source`` names, ready to read on this machine: a local path is taken as it is; an
    ``s3://bucket/key`` object is downloaded into ``cache_dir/jsonl/`` (default: the image cache), with the
    endpoint, credentials and retries of image fetching (``config``, default: from the environment), and
    downloaded again only when its ETag changes; an MLTable folder gives the JSONL file it names. Raises
    DataError naming the file and what to check or set."""
    if isinstance(source, JsonlFile):
        return source
    name = os.fspath(source)
    if mltable.is_mltable(name):
        return mltable.mltable_jsonl(name, config=config, cache_dir=cache_dir)
    return jsonl_file(name, config=config, cache_dir=cache_dir)
