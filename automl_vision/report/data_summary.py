"""What a JSONL dataset holds, for the report: images, classes, objects, image sizes.

This only counts; the data was validated when the trials read it. Lines that do not parse are
counted as such, not guessed at.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from automl_vision.data.images import displayed_size
from automl_vision.data.manifest import is_manifest, read_manifest
from automl_vision.data.validate import ValidationOptions
from automl_vision.errors import DataError

MAX_SIZE_READS = 2000  # image headers opened for the size chart; beyond that a seeded sample


@dataclass
class DataSummary:
    source: str
    images: int = 0
    #: Images per class (classification) or objects per class (detection, segmentation).
    class_counts: Counter = field(default_factory=Counter)
    #: Objects per image (detection, segmentation); empty for classification.
    objects_per_image: list[int] = field(default_factory=list)
    #: (width, height) of the images whose size is known.
    sizes: list[tuple[int, int]] = field(default_factory=list)
    sizes_sampled: bool = False
    unreadable_lines: int = 0
    missing_images: int = 0
    no_label: int = 0

    @property
    def objects(self) -> int:
        return sum(self.objects_per_image)


def _dimension(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lower().removesuffix("px").strip().isdigit():
        return int(value.strip().lower().removesuffix("px"))
    return None


def summarize_records(records, source: str) -> DataSummary:
    """The same counts from a validated dataset's records (an ingested dataset: sizes are recorded)."""
    out = DataSummary(source)
    for r in records:
        out.images += 1
        if r.objects:
            out.objects_per_image.append(len(r.objects))
            out.class_counts.update(o.label for o in r.objects)
        elif r.labels:
            out.class_counts.update(r.labels)
        else:
            out.no_label += 1
        if r.width and r.height:
            out.sizes.append((r.width, r.height))
    return out


def summarize_data(source: str | os.PathLike, task) -> DataSummary:
    """A JSONL file, or an ingested dataset (its folder or manifest.parquet)."""
    if is_manifest(source):
        dataset = read_manifest(source, task, options=ValidationOptions(check_files=False, check_images=False))
        return summarize_records(dataset.records, str(source))
    return summarize_jsonl(source)


def summarize_jsonl(path: str | os.PathLike, *, max_size_reads: int = MAX_SIZE_READS, seed: int = 0) -> DataSummary:
    """Count images, labels and objects of a JSONL file and read image sizes (header only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    out = DataSummary(str(path))
    pending: list[tuple[Path, dict]] = []
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                url = row["image_url"]
            except (json.JSONDecodeError, TypeError, KeyError):
                out.unreadable_lines += 1
                continue
            out.images += 1
            label = row.get("label")
            if isinstance(label, str):
                out.class_counts[label] += 1
            elif isinstance(label, list):
                objects = [x for x in label if isinstance(x, dict)]
                if objects:
                    out.objects_per_image.append(len(objects))
                    out.class_counts.update(str(o.get("label")) for o in objects)
                else:
                    names = [x for x in label if isinstance(x, str)]
                    out.class_counts.update(names)
                    if not names:
                        out.no_label += 1
            details = row.get("image_details") if isinstance(row.get("image_details"), dict) else {}
            w, h = _dimension(details.get("width")), _dimension(details.get("height"))
            if w and h:
                out.sizes.append((w, h))
            elif isinstance(url, str) and "://" not in url:
                p = Path(url)
                pending.append((p if p.is_absolute() else path.parent / p, row))
    if len(pending) > max_size_reads:
        rng = np.random.default_rng(seed)
        pending = [pending[i] for i in sorted(rng.choice(len(pending), max_size_reads, replace=False))]
        out.sizes_sampled = True
    for image_path, _ in pending:
        try:
            with Image.open(image_path) as im:  # reads the header only
                out.sizes.append(displayed_size(im))
        except OSError:
            out.missing_images += 1
    return out
