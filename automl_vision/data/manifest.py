"""The ingested dataset: a Parquet manifest (one row per image: resolved location, size, format, labels,
split) plus ``stats.json`` and ``report.json``. Validate once, then every trial reads the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from automl_vision.data import problems as P
from automl_vision.data.problems import InvalidDataError, Problem
from automl_vision.data.records import Dataset, ImageRecord, ObjectAnnotation
from automl_vision.data.storage import FetchError, default_cache_dir, fetch_all, storage_from_environment
from automl_vision.data.validate import (
    ValidationOptions,
    ValidationReport,
    ValidationResult,
    validate_dataset,
)
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
STATS_FILE = "stats.json"
REPORT_FILE = "report.json"
CACHE_DIR = "cache"
MANIFEST_VERSION = "1"

OBJECT_TYPE = pa.struct([
    ("label", pa.string()),
    ("box", pa.list_(pa.float64(), 4)),  # normalized topX, topY, bottomX, bottomY
    ("is_crowd", pa.bool_()),
    ("polygons", pa.list_(pa.list_(pa.float64()))),  # normalized rings
])
SCHEMA = pa.schema([
    ("image_url", pa.string()),
    ("path", pa.string()),
    ("uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("file_size", pa.int64()),
    ("split", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("objects", pa.list_(OBJECT_TYPE)),
    ("source", pa.string()),
    ("line", pa.int32()),
])


@dataclass(frozen=True)
class Ingested:
    """What ``ingest`` wrote."""

    dataset: Dataset
    report: ValidationReport
    directory: Path

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST_FILE


def write_manifest(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as Parquet (atomically); returns the path."""
    records = dataset.records
    columns: dict[str, list[Any]] = {
        "image_url": [r.image_url for r in records],
        "path": [r.path for r in records],
        "uri": [r.uri for r in records],
        "width": [r.width for r in records],
        "height": [r.height for r in records],
        "format": [r.format for r in records],
        "file_size": [r.file_size for r in records],
        "split": [r.split for r in records],
        "labels": [list(r.labels) for r in records],
        "objects": [[{"label": o.label, "box": list(o.box), "is_crowd": o.is_crowd,
                      "polygons": [list(ring) for ring in o.polygons]} for o in r.objects] for r in records],
        "source": [r.source for r in records],
        "line": [r.line for r in records],
    }
    metadata = {"automl_vision.task": dataset.task.value,
                "automl_vision.classes": json.dumps(list(dataset.classes)),
                "automl_vision.source": dataset.source,
                "automl_vision.manifest_version": MANIFEST_VERSION}
    table = pa.Table.from_pydict(columns, schema=SCHEMA.with_metadata(metadata))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def is_manifest(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an ingested dataset: its folder or its ``manifest.parquet``."""
    p = Path(source)
    return p.suffix == ".parquet" or (p.is_dir() and (p / MANIFEST_FILE).is_file())


def manifest_path(source: str | os.PathLike) -> Path:
    p = Path(source)
    return p / MANIFEST_FILE if p.is_dir() else p


def read_manifest(source: str | os.PathLike, task: ImageTask | None = None, *,
                  options: ValidationOptions | None = None) -> Dataset:
    """The dataset of an ingested folder (or its manifest.parquet).

    Checks that it was ingested for ``task`` and (``options.check_files``, default) that every image
    is on this machine; remote images missing from the cache are fetched again.
    """
    if isinstance(source, str) and "://" in source:
        raise DataError(f"{source}: an ingested dataset is read from a folder on this machine (or a mounted "
                        "volume), not from object storage; give that folder, or the JSONL file itself "
                        "(s3://bucket/key.jsonl is read from object storage)")
    path = manifest_path(source)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet manifest ({e})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing_cols = [n for n in SCHEMA.names if n not in table.column_names]
    if "automl_vision.task" not in meta or missing_cols:
        raise DataError(f"{path}: not an automl-vision manifest"
                        + (f" (columns missing: {', '.join(missing_cols)})" if missing_cols else ""))
    stored_task = ImageTask(meta["automl_vision.task"])
    if task is not None and stored_task is not task:
        raise DataError(f"{path}: the dataset was ingested for {stored_task.value}, not {task.value}; "
                        "ingest it again with the right task")
    cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    records = []
    for i in range(table.num_rows):
        objects = tuple(ObjectAnnotation(o["label"], tuple(o["box"]), bool(o["is_crowd"]),
                                         tuple(tuple(ring) for ring in o["polygons"] or ()))
                        for o in cols["objects"][i] or ())
        records.append(ImageRecord(
            image_url=cols["image_url"][i], path=cols["path"][i], width=cols["width"][i], height=cols["height"][i],
            format=cols["format"][i], labels=tuple(cols["labels"][i] or ()), objects=objects,
            split=cols["split"][i], uri=cols["uri"][i], source=cols["source"][i], line=cols["line"][i],
            file_size=cols["file_size"][i]))
    classes = tuple(json.loads(meta.get("automl_vision.classes", "[]")))
    dataset = Dataset(stored_task, tuple(records), str(path), classes)
    options = options or ValidationOptions()
    if options.check_files:
        dataset = _ensure_local(dataset, path, options)
    return dataset


def _ensure_local(dataset: Dataset, path: Path, options: ValidationOptions) -> Dataset:
    """Every image on this machine: remote ones missing from the cache are fetched again."""
    refetch = [r for r in dataset.records if r.uri.startswith("s3://") and not os.path.isfile(r.path)]
    missing = [r for r in dataset.records if not r.uri.startswith("s3://") and not os.path.isfile(r.path)]
    problems = [Problem(P.IMAGE_MISSING, f"image_url={r.image_url!r}: image not found at {r.path}", r.source, r.line,
                        "image_url", r.image_url) for r in missing]
    if refetch:
        cache_dir = options.cache_dir or str(default_cache_dir())
        storage = options.storage or storage_from_environment()
        results, _ = fetch_all([(r.uri, r.uri) for r in refetch], cache_dir, storage)
        moved = {}
        for r in refetch:
            outcome = results[r.uri]
            if isinstance(outcome, FetchError):
                problems.append(Problem(P.FETCH_FAILED, f"image_url={r.image_url!r}: cannot fetch: {outcome}",
                                        r.source, r.line, "image_url", r.image_url))
            else:
                moved[r.uri] = str(outcome)
        if moved:
            dataset = dataclasses.replace(dataset, records=tuple(
                dataclasses.replace(r, path=moved[r.uri]) if r.uri in moved else r for r in dataset.records))
    if problems:
        raise InvalidDataError(problems, source=f"{path} (images gone since it was ingested)")
    return dataset


def ingest(training: str | os.PathLike, task: ImageTask, out_dir: str | os.PathLike, *,
           validation: str | os.PathLike | None = None, split_ratio: float = 0.2, seed: int = 0,
           options: ValidationOptions | None = None) -> Ingested:
    """Validate, then write ``out_dir/manifest.parquet``, ``stats.json`` and ``report.json``.

    Without validation data ``split_ratio`` of the images is held out (seeded, stratified by class
    for multi-class). Remote images are cached in ``out_dir/cache`` unless a cache is given.
    Raises InvalidDataError (nothing written) when the data has problems and on_invalid is fail.
    """
    out = Path(out_dir)
    options = options or ValidationOptions()
    if options.cache_dir is None:
        options = dataclasses.replace(options, cache_dir=str(out / CACHE_DIR))
    result = validate_dataset(training, task, validation=validation, options=options,
                              split_ratio=None if validation is not None else split_ratio, seed=seed)
    return write_ingested(result, out)


def write_ingested(result: ValidationResult, out_dir: str | os.PathLike) -> Ingested:
    """Write a validation result as an ingested dataset; raises InvalidDataError (nothing written) if invalid."""
    out = Path(out_dir)
    dataset = result.raise_if_invalid()
    write_manifest(dataset, out / MANIFEST_FILE)
    write_json(out / STATS_FILE, result.report.stats)
    write_json(out / REPORT_FILE, result.report.to_json())
    log.info("ingested %d images into %s", len(dataset), out)
    return Ingested(dataset, result.report, out)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
