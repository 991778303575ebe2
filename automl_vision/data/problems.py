"""One problem found in the data, with where it is, which field, which value and which rule it breaks.

Problems are collected (never only the first) and turned into one ``InvalidDataError`` at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from automl_vision.errors import DataError

# Rule codes, stable for machine-readable reports (``--json``).
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
LABEL_TYPE = "label_type"
BAD_VALUE = "bad_value"
OUT_OF_RANGE = "out_of_range"
BOX_ORDER = "box_order"
ZERO_AREA = "zero_area"
POLYGON_POINTS = "polygon_points"
EMPTY_CLASS = "empty_class"
UNKNOWN_CLASS = "unknown_class"
DUPLICATE_IMAGE = "duplicate_image"
IMAGE_MISSING = "image_missing"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_TRUNCATED = "image_truncated"
UNSUPPORTED_FORMAT = "unsupported_format"
SIZE_MISMATCH = "size_mismatch"
TOO_MANY_PIXELS = "too_many_pixels"
ASPECT_RATIO = "aspect_ratio"
PATH_ESCAPES_ROOT = "path_escapes_root"
UNSUPPORTED_URI = "unsupported_uri"
FETCH_FAILED = "fetch_failed"
NO_IMAGES = "no_images"

# What a problem makes unusable: the whole line (image) or one object of it.
IMAGE, OBJECT = "image", "object"

MAX_LISTED = 100  # problems written out in an exception message; the report keeps all


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str  # "field=value rule", without the file:line prefix
    file: str
    line: int | None = None
    field: str | None = None
    value: Any = None
    scope: str = IMAGE
    object_index: int | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "value": _jsonable(self.value),
                "rule": self.code, "scope": self.scope, "object_index": self.object_index,
                "message": str(self)}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def show(value: Any) -> str:
    """A value as the user wrote it in JSON (``null``, ``"cat"``, ``[1, 2]``), shortened when long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class InvalidDataError(DataError):
    """The data breaks the rules; ``problems`` lists each as text and ``details`` keeps the structured form.

    The message lists the first ``MAX_LISTED`` problems; ``problems`` and ``report`` keep them all.
    """

    def __init__(self, problems: list[Problem] | str, source: str | None = None, report: Any = None):
        self.details: list[Problem] = [] if isinstance(problems, str) else list(problems)
        self.report = report
        super().__init__(problems if isinstance(problems, str) else [str(p) for p in self.details], source)

    def format(self) -> str:
        if len(self.problems) <= MAX_LISTED:
            return super().format()
        prefix = f"{self.source}: " if self.source else ""
        lines = [f"{prefix}{len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED]]
        lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more "
                     "(`automl-vision data validate --json` lists them all)")
        return "\n".join(lines)
