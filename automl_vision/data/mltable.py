"""MLTable folders: the original product's newer way of handing over the same JSONL data.

An MLTable folder holds a YAML file named ``MLTable`` that names the JSONL file and how to read it::

    paths:
      - file: ./train_annotations.jsonl
    transformations:
      - read_json_lines:
          encoding: utf8
          invalid_lines: error
          include_path_column: false
      - convert_column_types:
          - columns: image_url
            column_type: stream_info

``mltable_jsonl`` reads that file and hands back the one JSONL file it names, as a ``JsonlFile`` whose
name shows both (``<folder>/MLTable -> <jsonl>``), so every message says where a line came from. The
folder may be local, ``s3://bucket/prefix`` or a datastore URI (``azureml://.../datastores/<ds>/paths/<p>``,
``AmlDatastore://<ds>/<p>``) mapped onto the configured store root, as image URIs are.

What is read: ``type`` (``mltable``), ``paths`` (one ``file``, ``folder`` or ``pattern`` giving exactly one
JSONL file), ``read_json_lines`` with any ``encoding`` the product lists, ``invalid_lines`` ``error`` or
``drop`` and ``include_path_column`` (accepted; no image task reads a path column), and
``convert_column_types`` of ``image_url`` to ``stream_info`` (what every image example writes; image_url
is read as a file reference anyway). Anything else is refused with a message naming it: the other
transformations change rows or columns, which a labelled image set must not have changed silently, and
several JSONL files are refused rather than merged, since every message names one file and line and a
relative image_url is relative to its own file's folder.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from automl_vision.data.storage import (
    FetchError,
    JsonlFile,
    LocationError,
    StorageConfig,
    cached_object,
    default_cache_dir,
    jsonl_fetch_problem,
    jsonl_file,
    minio_client,
    resolve_url,
    storage_from_environment,
)
from automl_vision.errors import DataError

MLTABLE_FILE = "MLTable"
DATASTORE_SCHEMES = ("azureml", "AmlDatastore")
JSONL_SUFFIXES = (".jsonl", ".json")
# The encodings read_json_lines accepts, as Python codecs.
ENCODINGS = {"utf8": "utf-8", "utf8bom": "utf-8-sig", "ascii": "ascii", "iso88591": "iso-8859-1",
             "latin1": "latin-1", "windows1252": "cp1252", "utf16": "utf-16", "utf32": "utf-32"}
INVALID_LINES = ("error", "drop")
TOP_KEYS = ("$schema", "type", "paths", "transformations", "traits", "metadata")
READ_JSON_LINES_KEYS = ("encoding", "invalid_lines", "include_path_column")
SUPPORTED = ("read_json_lines (encoding, invalid_lines, include_path_column) and convert_column_types of "
             "image_url to stream_info")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_GLOB = re.compile(r"[*?\[]")


def _scheme(name: str) -> str | None:
    m = _SCHEME.match(name)
    return m.group(1) if m else None


def is_mltable(name: str) -> bool:
    """Whether ``name`` (as given for training_data) names an MLTable folder rather than a JSONL file: a
    local folder holding an ``MLTable`` file, or that file itself; an ``s3://`` key ending in ``/MLTable``
    or whose last part has no extension (a folder; written without a trailing ``/``, which names no object);
    any datastore URI (decided once it is mapped onto its store root)."""
    scheme = _scheme(name)
    if scheme is None:
        path = Path(name)
        return (path.is_dir() and (path / MLTABLE_FILE).is_file()) or (path.name == MLTABLE_FILE and path.is_file())
    if scheme in DATASTORE_SCHEMES:
        return True
    if scheme == "s3":
        key = name[len("s3://"):].partition("/")[2]
        last = key.rsplit("/", 1)[-1]
        return bool(last) and (last == MLTABLE_FILE or "." not in last)
    return False


def _map_datastore(name: str, config) -> str:
    """A datastore URI as the local path or s3:// URI it names under the configured store root."""
    try:
        return resolve_url(name.rstrip("/"), "", "", config).uri
    except LocationError as e:
        raise DataError(f"{name}: {e}") from None


def mltable_jsonl(name: str, *, config: StorageConfig | None = None,
                  cache_dir: str | os.PathLike | None = None) -> JsonlFile:
    """The ``JsonlFile`` an MLTable folder (local, s3:// or a datastore URI) names; raises DataError naming
    the MLTable file, the key and value at fault and what is allowed."""
    scheme = _scheme(name)
    if scheme in DATASTORE_SCHEMES:
        config = config or storage_from_environment()
        mapped = _map_datastore(name, config)
        if not is_mltable(mapped):  # a datastore URI of a JSONL file: read it, named as given
            jsonl = jsonl_file(mapped, config=config, cache_dir=cache_dir)
            return JsonlFile(name, jsonl.path, jsonl.base)
        folder = _folder_of(mapped)
        shown = f"{name.rstrip('/')}" + ("" if name.rstrip("/").endswith("/" + MLTABLE_FILE) else f"/{MLTABLE_FILE}")
    else:
        folder = _folder_of(name)
        shown = f"{folder}/{MLTABLE_FILE}" if folder.startswith("s3://") else str(Path(folder) / MLTABLE_FILE)
    remote = folder.startswith("s3://")
    if remote:
        config = config or storage_from_environment()
        text = _fetch_text(f"{folder}/{MLTABLE_FILE}", config, cache_dir)
    else:
        try:
            text = (Path(folder) / MLTABLE_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{shown}: file not found (an MLTable folder holds a file named MLTable)") from None
    spec = _parse(text, shown)
    encoding, invalid_lines = _reading(spec, shown)
    target = _one_jsonl(spec, folder, shown, config)
    if is_mltable(target):
        raise DataError(f"{shown}: {target} must be a JSONL file (.jsonl or .json), not a folder")
    if _scheme(target) is None:
        if not Path(target).is_file():
            raise DataError(f"{shown}: the JSONL file it names is not found at {target}")
    else:
        config = config or storage_from_environment()
    try:
        jsonl = jsonl_file(target, config=config, cache_dir=cache_dir)
    except DataError as e:
        raise DataError(f"{shown}: {e}") from None
    path = jsonl.path
    if encoding != "utf8" or invalid_lines == "drop":
        path = _prepared_copy(jsonl.path, encoding, invalid_lines, shown, target, cache_dir)
    return JsonlFile(f"{shown} -> {target}", path, jsonl.base)


def _folder_of(location: str) -> str:
    """The MLTable folder of a location naming the folder or its MLTable file (local path or s3:// URI)."""
    if location.startswith("s3://"):
        folder = location.rstrip("/")
        return folder[: -len(MLTABLE_FILE) - 1] if folder.endswith("/" + MLTABLE_FILE) else folder
    path = Path(location)
    return str(path.parent if path.name == MLTABLE_FILE and not path.is_dir() else path)


def _fetch_text(uri: str, config, cache_dir) -> str:
    """The text of a small object, downloaded into the JSONL cache (again when its ETag changes)."""
    try:
        dest = cached_object(uri, config, cache_dir, ".mltable")
    except FetchError as e:
        message = jsonl_fetch_problem(uri, e, config)
        if e.code in ("NoSuchKey", "NoSuchObject"):
            message += "; an MLTable folder holds a file named MLTable"
        raise DataError(message) from None
    try:
        return dest.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{uri}: not UTF-8 text (an MLTable file is YAML)") from None


def _parse(text: str, shown: str) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{shown}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{shown}: an MLTable file is a YAML mapping with paths and transformations")
    unknown = [k for k in spec if k not in TOP_KEYS]
    if unknown:
        raise DataError(f"{shown}: key {unknown[0]!r} is not an MLTable key; allowed: {', '.join(TOP_KEYS)}")
    if spec.get("type", "mltable") != "mltable":
        raise DataError(f"{shown}: type: {spec['type']!r}; allowed: mltable")
    return spec


def _reading(spec: dict[str, Any], shown: str) -> tuple[str, str]:
    """(encoding, invalid_lines) of the transformations, which must read JSON lines and change nothing."""
    steps = spec.get("transformations")
    if not isinstance(steps, list) or not steps:
        raise DataError(f"{shown}: transformations must be a list starting with read_json_lines (the JSONL "
                        "file of an image data set)")
    encoding, invalid_lines, seen_read = "utf8", "error", False
    for i, step in enumerate(steps):
        where = f"{shown}: transformations[{i}]"
        if isinstance(step, str):
            step = {step: None}
        if not isinstance(step, dict) or len(step) != 1:
            raise DataError(f"{where}: each transformation is one name (with its parameters); got {step!r}")
        (kind, params), = step.items()
        if kind == "read_json_lines":
            if seen_read or i:
                raise DataError(f"{where}: read_json_lines must come first, once")
            seen_read = True
            params = params or {}
            if not isinstance(params, dict):
                raise DataError(f"{where}: read_json_lines takes a mapping of {', '.join(READ_JSON_LINES_KEYS)}")
            for key, value in params.items():
                if key == "encoding":
                    if value not in ENCODINGS:
                        raise DataError(f"{where}: read_json_lines encoding: {value!r}; allowed: "
                                        f"{', '.join(ENCODINGS)}")
                    encoding = value
                elif key == "invalid_lines":
                    if value not in INVALID_LINES:
                        raise DataError(f"{where}: read_json_lines invalid_lines: {value!r}; allowed: error, drop")
                    invalid_lines = value
                elif key == "include_path_column":
                    if not isinstance(value, bool):
                        raise DataError(f"{where}: read_json_lines include_path_column: {value!r}; allowed: true, "
                                        "false")
                else:
                    raise DataError(f"{where}: read_json_lines has no parameter {key!r}; allowed: "
                                    f"{', '.join(READ_JSON_LINES_KEYS)}")
        elif kind == "convert_column_types":
            if not seen_read:
                raise DataError(f"{where}: read_json_lines must come first")
            for conversion in params if isinstance(params, list) else [params]:
                columns = conversion.get("columns") if isinstance(conversion, dict) else None
                columns = [columns] if isinstance(columns, str) else columns
                column_type = conversion.get("column_type") if isinstance(conversion, dict) else None
                if columns != ["image_url"] or column_type != "stream_info":
                    raise DataError(f"{where}: convert_column_types {conversion!r} is not supported: only "
                                    "'columns: image_url' with 'column_type: stream_info' is read (the labels are "
                                    "read as the JSONL file writes them)")
        else:
            raise DataError(f"{where}: transformation {kind!r} is not supported; allowed: {SUPPORTED} (an image "
                            "data set is read whole, as its JSONL file holds it)")
    if not seen_read:
        raise DataError(f"{shown}: no read_json_lines transformation; the paths must be read as JSON lines")
    return encoding, invalid_lines


def _one_jsonl(spec: dict[str, Any], folder: str, shown: str, config) -> str:
    """The single JSONL file the ``paths`` name: a local path or an s3:// URI."""
    paths = spec.get("paths")
    if not isinstance(paths, list) or not paths:
        raise DataError(f"{shown}: paths must be a list of file:, folder: or pattern: entries")
    found: list[str] = []
    for i, entry in enumerate(paths):
        where = f"{shown}: paths[{i}]"
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in ("file", "folder", "pattern"):
            raise DataError(f"{where}: {entry!r} must be one of file: <path>, folder: <path>, pattern: <glob>")
        (kind, value), = entry.items()
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: {kind}: {value!r} must be a path")
        location = _locate(value, folder, where, config)
        if kind == "file":
            found.append(location)
        elif kind == "folder":
            found += _list(location, None, config)
        else:
            found += _list(location, location, config)
        if kind != "file" and not found:
            raise DataError(f"{where}: {kind}: {value!r} ({location}) names no .jsonl or .json file")
    found = list(dict.fromkeys(found))
    if len(found) > 1:
        shown_files = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise DataError(f"{shown}: paths name {len(found)} JSONL files ({shown_files}); one is read per MLTable, since "
                        "every message names one file and line and relative image_url values are relative to "
                        "their own file: merge them into one file, or give training_data and validation_data "
                        "an MLTable each")
    return found[0]


def _locate(value: str, folder: str, where: str, config) -> str:
    """A ``paths`` value as a local path or s3:// URI: relative to the MLTable folder, absolute, s3:// or a
    datastore URI."""
    scheme = _scheme(value)
    if scheme is None:
        if folder.startswith("s3://"):
            if value.startswith("/"):
                raise DataError(f"{where}: {value!r}: an MLTable in object storage names its files relative to its "
                                "folder or as s3:// URIs")
            bucket, _, prefix = folder[len("s3://"):].partition("/")
            key = posixpath.normpath(posixpath.join(prefix, value))
            if key.startswith("../") or key == "..":
                raise DataError(f"{where}: {value!r} leaves the bucket {bucket}")
            return f"s3://{bucket}/{key}"
        return os.path.normpath(os.path.join(folder, value))
    if scheme == "s3":
        return value
    if scheme in DATASTORE_SCHEMES:
        return _map_datastore(value, config or storage_from_environment())
    raise DataError(f"{where}: {value!r}: scheme {scheme}:// is not supported; allowed: a path relative to the "
                    "MLTable folder, an absolute path, s3://bucket/key, azureml://.../datastores/<ds>/paths/<p>")


def _list(location: str, pattern: str | None, config) -> list[str]:
    """The .jsonl/.json files under a folder (recursively), or matching a glob pattern, sorted."""
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        prefix = key if pattern is None else _GLOB.split(key, 1)[0].rsplit("/", 1)[0]
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        client = minio_client(config or storage_from_environment(), retries=True)
        names = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)
                 if not o.is_dir]
        if pattern is not None:
            names = [n for n in names if fnmatch.fnmatchcase(n, key)]
        return sorted(f"s3://{bucket}/{n}" for n in names
                      if n.lower().endswith(JSONL_SUFFIXES) and posixpath.basename(n) != MLTABLE_FILE)
    if pattern is None:
        files = [str(p) for p in Path(location).rglob("*") if p.is_file()]
    else:
        files = [p for p in glob.glob(location, recursive=True) if os.path.isfile(p)]
    return sorted(f for f in files if f.lower().endswith(JSONL_SUFFIXES) and not os.path.basename(f).startswith("."))


def _prepared_copy(path: Path, encoding: str, invalid_lines: str, shown: str, target: str, cache_dir) -> Path:
    """A UTF-8 copy of the JSONL file in the cache, with the lines of invalid JSON left blank when
    ``invalid_lines: drop`` (blank lines are skipped, so every other line keeps its number)."""
    try:
        text = path.read_bytes().decode(ENCODINGS[encoding])
    except UnicodeDecodeError as e:
        raise DataError(f"{shown}: {target} is not {encoding} text (byte {e.start + 1}); fix encoding: in "
                        "read_json_lines") from None
    lines = text.split("\n")
    if invalid_lines == "drop":
        kept = []
        for line in lines:
            try:
                if line.strip():
                    json.loads(line)
                kept.append(line)
            except json.JSONDecodeError:
                kept.append("")
        lines = kept
    digest = hashlib.sha256(f"{shown}\0{target}\0{encoding}\0{invalid_lines}".encode()).hexdigest()[:32]
    out = Path(cache_dir or default_cache_dir()) / "jsonl" / f"{digest}.mltable.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return out
