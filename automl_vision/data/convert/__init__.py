"""Converters to JSONL (COCO, Pascal VOC, YOLO, folder-per-class, CSV) and from JSONL to COCO."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl_vision.data.convert.coco import coco_to_jsonl, jsonl_to_coco
from automl_vision.data.convert.common import Conversion, write_jsonl
from automl_vision.data.convert.folders import csv_to_jsonl, folders_to_jsonl
from automl_vision.data.convert.voc import voc_to_jsonl
from automl_vision.data.convert.yolo import yolo_to_jsonl
from automl_vision.errors import ConfigError
from automl_vision.spec.tasks import ImageTask

CONVERTERS: dict[str, Callable[..., Conversion]] = {
    "coco": coco_to_jsonl,
    "voc": voc_to_jsonl,
    "yolo": yolo_to_jsonl,
    "folders": folders_to_jsonl,
    "csv": csv_to_jsonl,
}
DEFAULT_TASK = {"coco": ImageTask.IMAGE_OBJECT_DETECTION, "voc": ImageTask.IMAGE_OBJECT_DETECTION,
                "yolo": ImageTask.IMAGE_OBJECT_DETECTION, "folders": ImageTask.IMAGE_CLASSIFICATION,
                "csv": ImageTask.IMAGE_CLASSIFICATION}


def convert(kind: str, source: str | os.PathLike, out: str | os.PathLike, *, task: ImageTask | None = None,
            **options: Any) -> Conversion:
    """Convert ``source`` (a ``kind`` dataset) to the JSONL file ``out``; raises DataError listing every
    problem (nothing is written then). ``options`` are the converter's keyword arguments."""
    if kind not in CONVERTERS:
        raise ConfigError(f"--from {kind!r} is not a known format; allowed: {', '.join(CONVERTERS)}")
    task = task or DEFAULT_TASK[kind]
    out = Path(out)
    conversion = CONVERTERS[kind](source, out.parent, task=task, **options)
    conversion.raise_if_problems(str(source))
    write_jsonl(conversion.lines, out)
    return conversion


def export_coco(dataset, out: str | os.PathLike, *, images_dir: str | os.PathLike | None = None,
                categories: list[str] | None = None) -> dict[str, Any]:
    """Write a dataset (``records.Dataset``) as a COCO JSON file; returns the COCO dict."""
    coco = jsonl_to_coco(dataset, images_dir=images_dir, categories=categories)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, out)
    return coco


__all__ = ["CONVERTERS", "Conversion", "convert", "export_coco", "coco_to_jsonl", "jsonl_to_coco",
           "voc_to_jsonl", "yolo_to_jsonl", "folders_to_jsonl", "csv_to_jsonl", "write_jsonl"]
