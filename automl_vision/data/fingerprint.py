"""A dataset's fingerprint: the few numbers AutoMode sizes its space by and warm starts compare runs by.

Computed from the records' metadata (image sizes from the headers the loader already read, labels,
boxes): no pixel is decoded.
"""

from __future__ import annotations

import math
import statistics

from automl_vision.data.records import Dataset
from automl_vision.spec.automode import DatasetFingerprint


def dataset_fingerprint(dataset: Dataset) -> DatasetFingerprint:
    """The fingerprint of every record of ``dataset`` (training and validation alike: the data as given)."""
    records = dataset.records
    sides = [min(r.width, r.height) for r in records if r.width and r.height]
    aspects = [r.width / r.height for r in records if r.width and r.height]
    objects_per_image = object_size = labels_per_image = None
    if dataset.task.is_classification:
        labels_per_image = round(statistics.fmean(len(r.labels) for r in records), 3) if records else None
    else:
        objects_per_image = round(statistics.fmean(len(r.objects) for r in records), 3) if records else None
        sizes = [math.sqrt(max(o.box[2] - o.box[0], 0.0) * max(o.box[3] - o.box[1], 0.0))
                 for r in records for o in r.objects if not o.is_crowd]
        sizes = [s for s in sizes if s > 0]
        object_size = round(statistics.median(sizes), 4) if sizes else None
    return DatasetFingerprint(
        task=dataset.task.value,
        images=len(records),
        classes=len(dataset.classes),
        image_side=float(statistics.median(sides)) if sides else None,
        aspect=round(statistics.median(aspects), 3) if aspects else None,
        objects_per_image=objects_per_image,
        object_size=object_size,
        labels_per_image=labels_per_image,
    )
