"""Data: JSONL schema and validation for the four tasks, converters, splitting, the Parquet manifest,
local and S3 storage.

    from automl_vision.data import load_dataset
    ds = load_dataset("train.jsonl", "image_object_detection")   # or an ingested folder
    for r in ds.train: r.path, r.width, r.height, r.objects       # ObjectAnnotation(label, box, is_crowd, polygons)
"""

from __future__ import annotations

from automl_vision.data.load import load_dataset
from automl_vision.data.manifest import ingest
from automl_vision.data.problems import InvalidDataError, Problem
from automl_vision.data.records import TRAIN, VALIDATION, Dataset, ImageRecord, ObjectAnnotation
from automl_vision.data.storage import StorageConfig
from automl_vision.data.validate import (
    FAIL,
    SKIP,
    ValidationOptions,
    ValidationReport,
    ValidationResult,
    validate_dataset,
)


__all__ = ["Dataset", "ImageRecord", "ObjectAnnotation", "TRAIN", "VALIDATION", "Problem", "InvalidDataError",
           "StorageConfig", "ValidationOptions", "ValidationReport", "ValidationResult", "FAIL", "SKIP",
           "load_dataset", "validate_dataset", "ingest"]
