"""Datasets as trials read them: ``load_dataset`` reads a JSONL file (validated) or an ingested dataset
(its manifest) and splits it as a trial does; ``split_jsonl`` writes that same split as two JSONL files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from automl_vision.data.convert.common import image_url
from automl_vision.data.jsonl import local_jsonl
from automl_vision.data.manifest import is_manifest, read_manifest
from automl_vision.data.records import TRAIN, VALIDATION, Dataset
from automl_vision.data.split import split_records
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask, parse_task


def load_dataset(source: str | os.PathLike, task: ImageTask | str, *,
                 validation: str | os.PathLike | None = None,
                 split_ratio: float | None = None, seed: int = 0,
                 options: ValidationOptions | None = None) -> Dataset:
    """The typed records of a JSONL file (a path or ``s3://bucket/key``) or of an ingested dataset (its
    folder or ``manifest.parquet``).

    From JSONL, images are checked for existence and their headers read (not decoded), remote ones
    fetched into the cache; any problem raises InvalidDataError listing all of them (or, with
    ``on_invalid="skip"``, invalid images and objects are left out). Records are split by file when
    ``validation`` is given, else by ``split_ratio`` and ``seed`` when given; an ingested dataset
    keeps the split it was written with unless ``validation`` is given.
    """
    task = parse_task(task)
    if options is None:
        options = ValidationOptions(decode_images=False)
    if is_manifest(source):
        dataset = read_manifest(source, task, options=options)
        if validation is None:
            if split_ratio is not None and any(r.split is None for r in dataset.records):
                try:
                    records = split_records(dataset.records, task, split_ratio, seed)
                except ValueError as e:
                    raise DataError(f"{source}: {e}") from None
                dataset = dataclasses.replace(dataset, records=records)
            return dataset
        val = load_dataset(validation, task, options=options)
        train = [dataclasses.replace(r, split=TRAIN) for r in dataset.records]
        return Dataset(task, tuple(train) + tuple(dataclasses.replace(r, split=VALIDATION) for r in val.records),
                       dataset.source)
    if validation is not None and is_manifest(validation):
        train = load_dataset(source, task, options=options)
        val = load_dataset(validation, task, options=options)
        return Dataset(task, tuple(dataclasses.replace(r, split=TRAIN) for r in train.records)
                       + tuple(dataclasses.replace(r, split=VALIDATION) for r in val.records), train.source)
    result = validate_dataset(source, task, validation=validation, options=options,
                              split_ratio=split_ratio, seed=seed)
    return result.raise_if_invalid()


@dataclass(frozen=True)
class SplitFiles:
    train: Path
    validation: Path
    train_images: int
    validation_images: int


def split_jsonl(path: str | os.PathLike, task: ImageTask, out_dir: str | os.PathLike, *, ratio: float = 0.2,
                seed: int = 0, options: ValidationOptions | None = None) -> SplitFiles:
    """Write ``out_dir/train.jsonl`` and ``out_dir/validation.jsonl`` from a JSONL file (a path or
    ``s3://bucket/key``): the same split a trial makes with the same ``split_ratio`` and ``seed``. Lines are
    copied as they are, except that a relative image_url is rewritten to stay correct from ``out_dir`` (for
    a file in object storage: to the ``s3://`` URI of the object it names). Returns the two paths and their
    image counts.
    """
    options = options or ValidationOptions(check_files=False, check_images=False)
    source = local_jsonl(path, config=options.storage, cache_dir=options.cache_dir)
    result = validate_dataset(source, task, options=options, split_ratio=ratio, seed=seed)
    dataset = result.raise_if_invalid()
    split_of = {r.line: r.split for r in dataset.records}
    uri_of = {r.line: r.uri for r in dataset.records}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = source.base
    same_dir = not source.remote and os.path.abspath(out) == base
    targets = {"train": out / "train.jsonl", "validation": out / "validation.jsonl"}
    if not source.remote and os.path.abspath(source.path) in {os.path.abspath(t) for t in targets.values()}:
        raise DataError(f"{source.name}: splitting would overwrite the input; choose another output folder")
    counts = {"train": 0, "validation": 0}
    tmp = {k: v.with_name(v.name + ".tmp") for k, v in targets.items()}
    files = {k: v.open("w", encoding="utf-8") for k, v in tmp.items()}
    try:
        with open(source.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                split = split_of.get(number)
                if split is None:
                    continue
                row = json.loads(raw)
                url = row["image_url"]
                if source.remote and "://" not in url and not os.path.isabs(url):
                    row["image_url"] = uri_of[number]
                elif not same_dir and "://" not in url and not os.path.isabs(url):
                    row["image_url"] = image_url(Path(os.path.normpath(os.path.join(base, url))), out)
                files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[split] += 1
    finally:
        for f in files.values():
            f.close()
    for k in targets:
        os.replace(tmp[k], targets[k])
    return SplitFiles(targets["train"], targets["validation"], counts["train"], counts["validation"])


def first_lines_jsonl(path: str | os.PathLike, limit: int, out: str | os.PathLike) -> tuple[Path, int, int]:
    """``(file, kept, total)``: ``path`` itself when it has at most ``limit`` labelled lines, else its
    first ``limit`` lines written to ``out`` (a relative image_url made absolute, as it is read from
    elsewhere)."""
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) <= limit:
        return Path(path), len(lines), len(lines)
    base = Path(path).resolve().parent
    rows = []
    for ln in lines[:limit]:
        row = json.loads(ln)
        url = row.get("image_url", "")
        if isinstance(url, str) and "://" not in url and not os.path.isabs(url):
            row["image_url"] = str(base / url)
        rows.append(json.dumps(row))
    Path(out).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return Path(out), limit, len(lines)
