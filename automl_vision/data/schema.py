"""The JSON Lines schema of spec section 2, for all four tasks: one line in, labels and problems out.

Accepted forms: detection labels as a list of objects, or the seed document's single object with
numbers written as strings (``"topX": "1"``, ``"isCrowd": "true"``); ``image_details`` optional with
sizes as ints or strings such as ``"400px"``; polygons (a list of rings) for instance segmentation.
Nothing is corrected silently: every deviation is a Problem naming line, field, value and rule.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from automl_vision.data import problems as P
from automl_vision.data.images import IMAGE_EXTENSIONS, normalize_format, parse_dimension
from automl_vision.data.problems import Problem, show
from automl_vision.data.records import ObjectAnnotation
from automl_vision.spec.tasks import ImageTask

COORDS = ("topX", "topY", "bottomX", "bottomY")
_CROWD = {0: False, 1: True, "0": False, "1": True, "false": False, "true": True}
_CROWD_TYPES = frozenset({int, bool, str})
_NUMBER = frozenset({int, float})
_OBJECT_FORM = 'an object {"label", "topX", "topY", "bottomX", "bottomY"}'


@dataclass(slots=True)
class ParsedLine:
    """One line that could be read: its fields, with invalid objects left as None."""

    line: int
    image_url: str | None
    labels: tuple[str, ...] = ()
    objects: list[ObjectAnnotation | None] = field(default_factory=list)
    width: int | None = None  # from image_details
    height: int | None = None
    format: str | None = None
    bad: bool = False  # a problem makes the whole line unusable


def suggest(name: str, keys) -> str:
    """`` (did you mean 'x'?)`` for a key close to ``name``, else an empty string."""
    keys = [k for k in keys if isinstance(k, str)]
    lowered = {k.lower(): k for k in keys}
    if name.lower() in lowered:
        return f" (found {lowered[name.lower()]!r}: names are case-sensitive)"
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    return f" (found {close[0]!r}: did you mean {name}?)" if close else ""


def to_number(value: Any) -> float | None:
    """A JSON number, or a string holding one (the seed's form); None otherwise (booleans too)."""
    t = type(value)
    if t is float or t is int:
        return float(value)
    if t is str:
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def to_crowd(value: Any) -> bool | None:
    if type(value) is bool:
        return value
    if type(value) is str:
        value = value.strip().lower()
    elif type(value) is float and value in (0.0, 1.0):
        value = int(value)
    try:
        return _CROWD.get(value)
    except TypeError:  # unhashable
        return None


class LineParser:
    """Parses lines of one file for one task, appending problems to ``problems``."""

    def __init__(self, task: ImageTask, file: str, problems: list[Problem]):
        self.task = task
        self.file = file
        self.problems = problems
        self.detection = not task.is_classification
        self.segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
        self.multilabel = task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
        self._names: dict[str, str] = {}  # class names seen valid, each kept once

    def _add(self, code: str, message: str, line: int, field_: str | None = None, value: Any = None,
             index: int | None = None) -> None:
        scope = P.OBJECT if index is not None else P.IMAGE
        self.problems.append(Problem(code, message, self.file, line, field_, value, scope, index))

    def parse_text(self, text: bytes | str, line: int, pretty_hint: bool = False) -> ParsedLine | None:
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            hint = ""
            if pretty_hint:
                hint = ("; each image must be one JSON object on a single line (JSON Lines), "
                        "this file looks like pretty-printed JSON")
            self._add(P.BAD_JSON, f"not valid JSON ({e.msg} at column {e.colno}){hint}", line)
            return None
        except UnicodeDecodeError as e:
            self._add(P.BAD_JSON, f"not valid UTF-8 text (byte {e.start + 1} of the line)", line)
            return None
        except RecursionError:
            # Python's parser gives up on deeply nested arrays or objects; no label is nested that deep.
            self._add(P.BAD_JSON, f"JSON nested too deeply (more than about {_nesting_limit()} levels of "
                      "arrays or objects); a line holds one image with its labels, a few levels deep", line)
            return None
        return self.parse_row(row, line)

    def parse_row(self, row: Any, line: int) -> ParsedLine | None:
        if type(row) is not dict:
            self._add(P.NOT_OBJECT, f"a line must be a JSON object, got {_type_name(row)}", line)
            return None
        out = ParsedLine(line, None)
        url = row.get("image_url")
        if type(url) is not str or not url.strip():
            what = "is missing" if url is None else f"={show(url)} is not a path or URI"
            hint = suggest("image_url", row.keys()) if "image_url" not in row else ""
            self._add(P.MISSING_FIELD, f"field image_url is missing or not a string (image_url {what}){hint}",
                      line, "image_url", url)
            out.bad = True
        elif not url.lower().endswith(IMAGE_EXTENSIONS):
            self._add(P.UNSUPPORTED_FORMAT, f"image_url={url!r} has an unsupported format; allowed: "
                      + ", ".join(e[1:] for e in IMAGE_EXTENSIONS), line, "image_url", url)
            out.bad = True
        else:
            out.image_url = url  # left None when unusable: nothing further is checked about the file
        details = row.get("image_details")
        if details is not None:
            self._details(details, out)
        if "label" not in row and not self.task.is_classification:
            hint = suggest("label", row.keys())
            self._add(P.MISSING_FIELD, f"field label is missing; use [] for an image without objects{hint}",
                      line, "label")
            out.bad = True
        elif self.detection:
            self._objects(row.get("label"), out)
        elif self.multilabel:
            self._multilabel(row.get("label"), out, "label" in row)
        else:
            self._multiclass(row.get("label"), out, "label" in row, row)
        return out

    # --- image_details ---
    def _details(self, details: Any, out: ParsedLine) -> None:
        if type(details) is not dict:
            self._add(P.BAD_VALUE, f"image_details={show(details)} must be an object with format, width, height",
                      out.line, "image_details", details)
            out.bad = True
            return
        for key in ("width", "height"):
            if key in details:
                value = parse_dimension(details[key])
                if value is None:
                    self._add(P.BAD_VALUE, f"image_details.{key}={show(details[key])} must be a positive integer "
                              'or a string such as "400px"', out.line, f"image_details.{key}", details[key])
                    out.bad = True
                else:
                    setattr(out, key, value)
        if "format" in details:
            fmt = details["format"]
            norm = normalize_format(fmt) if type(fmt) is str else None
            if norm is None:
                self._add(P.UNSUPPORTED_FORMAT, f"image_details.format={show(fmt)} is not an accepted format; "
                          "allowed: " + ", ".join(e[1:] for e in IMAGE_EXTENSIONS), out.line,
                          "image_details.format", fmt)
                out.bad = True
            else:
                out.format = norm

    # --- classification ---
    def _trimmed(self, name: str, line: int, field_: str, index: int | None = None) -> bool:
        """True if the (non-blank) class name has no spaces around it; else a problem."""
        if name != name.strip():
            self._add(P.EMPTY_CLASS, f"{field_}={show(name)} has spaces around the class name", line,
                      field_, name, index)
            return False
        return True

    def _multiclass(self, label: Any, out: ParsedLine, present: bool, row: dict) -> None:
        task = self.task.value
        if type(label) is str:
            if not label.strip():
                self._add(P.EMPTY_CLASS, f"label={show(label)} must be one non-empty class name for {task}",
                          out.line, "label", label)
                out.bad = True
            elif self._trimmed(label, out.line, "label"):
                out.labels = (self._names.setdefault(label, label),)
            else:
                out.bad = True
            return
        if not present:
            self._add(P.MISSING_FIELD, f"label=null must be one non-empty class name for {task}; the field "
                      f"is missing{suggest('label', row.keys())}", out.line, "label")
        else:
            hint = _looks_like(label, self.task)
            self._add(P.LABEL_TYPE, f"label={show(label)} must be one non-empty class name for {task}{hint}",
                      out.line, "label", label)
        out.bad = True

    def _multilabel(self, label: Any, out: ParsedLine, present: bool) -> None:
        task = self.task.value
        if type(label) is not list or not all(type(x) is str for x in label):
            field_missing = "; the field is missing (use [] for an image without labels)" if not present else ""
            code = P.MISSING_FIELD if not present else P.LABEL_TYPE
            hint = _looks_like(label, self.task)
            self._add(code, f"label={show(label)} must be a list of class names for {task}{field_missing}{hint}",
                      out.line, "label", label)
            out.bad = True
            return
        for i, name in enumerate(label):
            if not name.strip():
                self._add(P.EMPTY_CLASS, f"label={show(label)} must be a list of class names: item {i} is empty",
                          out.line, "label", label)
                out.bad = True
                return
            if not self._trimmed(name, out.line, f"label[{i}]"):
                out.bad = True
                return
        if len(set(label)) != len(label):
            twice = sorted({x for x in label if label.count(x) > 1})
            self._add(P.BAD_VALUE, f"label={show(label)} names {', '.join(map(repr, twice))} more than once",
                      out.line, "label", label)
            out.bad = True
            return
        out.labels = tuple(self._names.setdefault(x, x) for x in label)

    # --- detection and segmentation ---
    def _objects(self, label: Any, out: ParsedLine) -> None:
        if type(label) is dict:  # the seed document's one-object form
            items, single = [label], True
        elif type(label) is list:
            items, single = label, False
        else:
            hint = _looks_like(label, self.task)
            self._add(P.LABEL_TYPE, f"label={show(label)} must be a list of objects "
                      f'[{{"label": ..., "topX": ..., "topY": ..., "bottomX": ..., "bottomY": ...}}] '
                      f"for {self.task.value}{hint}", out.line, "label", label)
            out.bad = True
            return
        fast = self._fast_object
        line = out.line
        objects = []
        for i, obj in enumerate(items):
            o = fast(obj)
            if o is None:
                o = self._object(obj, line, "label" if single else f"label[{i}]", i)
            objects.append(o)
        out.objects = objects

    def _fast_object(self, obj: Any) -> ObjectAnnotation | None:
        """The common valid object (numbers, a known-good class name, no polygon) without building any
        message; None sends the object through the full check."""
        if type(obj) is not dict or "polygon" in obj or self.segmentation:
            return None
        name = obj.get("label")
        if type(name) is not str:
            return None
        name = self._names.get(name)  # already checked, and shared to save memory
        if name is None:
            return None
        x1, y1, x2, y2 = obj.get("topX"), obj.get("topY"), obj.get("bottomX"), obj.get("bottomY")
        if not (type(x1) in _NUMBER and type(y1) in _NUMBER and type(x2) in _NUMBER and type(y2) in _NUMBER
                and 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            return None
        crowd = obj.get("isCrowd", 0)
        if type(crowd) not in _CROWD_TYPES:
            return None
        crowd = _CROWD.get(crowd)
        if crowd is None:
            return None
        return ObjectAnnotation(name, (float(x1), float(y1), float(x2), float(y2)), crowd)

    def _object(self, obj: Any, line: int, where: str, index: int) -> ObjectAnnotation | None:
        if type(obj) is not dict:
            hint = " (this looks like classification data; is the task right?)" if type(obj) is str else ""
            self._add(P.LABEL_TYPE, f"{where}={show(obj)} must be {_OBJECT_FORM}{hint}", line, where, obj, index)
            return None
        ok = True
        name = obj.get("label")
        if type(name) is not str:
            if name is None:
                self._add(P.MISSING_FIELD, f"{where}.label is missing: each object needs a class name"
                          f"{suggest('label', obj.keys()) if 'label' not in obj else ''}", line,
                          f"{where}.label", None, index)
            else:
                self._add(P.LABEL_TYPE, f"{where}.label={show(name)} must be a class name (a string)", line,
                          f"{where}.label", name, index)
            ok = False
        elif not name.strip():
            self._add(P.EMPTY_CLASS, f"{where}.label={show(name)} is an empty class name", line,
                      f"{where}.label", name, index)
            ok = False
        elif not self._trimmed(name, line, f"{where}.label", index):
            ok = False

        polygons: tuple[tuple[float, ...], ...] = ()
        if "polygon" in obj:
            result = self._polygon(obj["polygon"], line, where, index)
            if result is None:
                ok = False
            else:
                polygons = result
        elif self.segmentation:
            self._add(P.MISSING_FIELD, f"{where}.polygon is missing: instance segmentation needs a polygon "
                      "[[x1, y1, x2, y2, ...], ...] for each object"
                      f"{suggest('polygon', obj.keys())}", line, f"{where}.polygon", None, index)
            ok = False

        box = self._box(obj, line, where, index, polygons, name if ok else None)
        if box is None:
            ok = False
        crowd = False
        if "isCrowd" in obj:
            value = to_crowd(obj["isCrowd"])
            if value is None:
                self._add(P.BAD_VALUE, f"{where}.isCrowd={show(obj['isCrowd'])} must be 0, 1, true or false",
                          line, f"{where}.isCrowd", obj["isCrowd"], index)
                ok = False
            else:
                crowd = value
        if not ok:
            return None
        name = self._names.setdefault(name, name)
        return ObjectAnnotation(name, box, crowd, polygons)

    def _box(self, obj: dict, line: int, where: str, index: int, polygons: tuple[tuple[float, ...], ...],
             name: str | None) -> tuple[float, float, float, float] | None:
        if self.segmentation and polygons and not any(k in obj for k in COORDS):
            xs = [v for ring in polygons for v in ring[0::2]]
            ys = [v for ring in polygons for v in ring[1::2]]
            return (min(xs), min(ys), max(xs), max(ys))
        values = []
        ok = True
        for key in COORDS:
            raw = obj.get(key)
            f = f"{where}.{key}"
            if raw is None:
                hint = suggest(key, obj.keys()) if key not in obj else ""
                self._add(P.MISSING_FIELD, f"{f} is missing{hint}", line, f, None, index)
                ok = False
                continue
            v = to_number(raw)
            if v is None:
                self._add(P.BAD_VALUE, f"{f}={show(raw)} must be a number", line, f, raw, index)
                ok = False
            elif not 0.0 <= v <= 1.0:  # NaN fails this too
                self._add(P.OUT_OF_RANGE, f"{f}={show(raw)} not in [0, 1] (coordinates are fractions of the "
                          "image's width and height)", line, f, raw, index)
                ok = False
            values.append(v)
        if not ok:
            return None
        x1, y1, x2, y2 = values
        flat = [f"{lo}={_num(a)} equals {hi}={_num(b)}"
                for a, b, lo, hi in ((x1, x2, "topX", "bottomX"), (y1, y2, "topY", "bottomY")) if a == b]
        if flat:
            self._add(P.ZERO_AREA, f"{where}{_named(name)}: zero-area box, {' and '.join(flat)}", line, where,
                      {"topX": obj["topX"], "topY": obj["topY"], "bottomX": obj["bottomX"], "bottomY": obj["bottomY"]},
                      index)
            ok = False
        for a, b, lo, hi in ((x1, x2, "topX", "bottomX"), (y1, y2, "topY", "bottomY")):
            if a > b:
                self._add(P.BOX_ORDER, f"{where}{_named(name)}: {lo}={_num(a)} must be less than {hi}={_num(b)} "
                          f"({lo} >= {hi}: corners swapped?)", line, f"{where}.{lo}", obj[lo], index)
                ok = False
        return (x1, y1, x2, y2) if ok else None

    def _polygon(self, polygon: Any, line: int, where: str, index: int) -> tuple[tuple[float, ...], ...] | None:
        f = f"{where}.polygon"
        if type(polygon) is not list or not polygon:
            self._add(P.BAD_VALUE,
                      f"{f}={show(polygon)} must be a non-empty list of rings [[x1, y1, x2, y2, ...], ...]",
                      line, f, polygon, index)
            return None
        if all(type(v) is not list for v in polygon):
            self._add(P.BAD_VALUE, f"{f}={show(polygon)} is one flat list of numbers; it must be a list of rings "
                      "[[x1, y1, x2, y2, ...], ...] (wrap it in another list)", line, f, polygon, index)
            return None
        rings = []
        ok = True
        for j, ring in enumerate(polygon):
            rf = f"{f}[{j}]"
            if type(ring) is not list:
                self._add(P.BAD_VALUE, f"{rf}={show(ring)} must be a list of numbers x1, y1, x2, y2, ...", line, rf,
                          ring, index)
                ok = False
                continue
            values = [to_number(v) for v in ring]
            if any(v is None for v in values):
                bad = next(v for v, n in zip(ring, values) if n is None)
                self._add(P.BAD_VALUE, f"{rf} holds {show(bad)}, which is not a number", line, rf, bad, index)
                ok = False
                continue
            if len(values) % 2:
                self._add(P.BAD_VALUE, f"{rf} has {len(values)} numbers; it needs x, y pairs (an even count)",
                          line, rf, ring, index)
                ok = False
                continue
            if len(values) < 6:
                self._add(P.POLYGON_POINTS, f"{rf} has {len(values) // 2} point(s); a polygon needs at least 3",
                          line, rf, ring, index)
                ok = False
                continue
            outside = [v for v in values if not 0.0 <= v <= 1.0]
            if outside:
                self._add(P.OUT_OF_RANGE, f"{rf} has coordinate {_num(outside[0])} not in [0, 1]", line, rf,
                          outside[0], index)
                ok = False
                continue
            rings.append(tuple(values))
        return tuple(rings) if ok else None


def _nesting_limit() -> int:
    return sys.getrecursionlimit()


def _named(name: str | None) -> str:
    return f" ({name})" if name else ""


def _num(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:g}" if abs(v) >= 1e-4 or v == 0 else repr(v)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "str", int: "int", float: "float", bool: "bool",
            type(None): "null"}.get(type(value), type(value).__name__)


def _looks_like(label: Any, task: ImageTask) -> str:
    """A hint when the label has the shape of another task's label."""
    if task.is_classification and (type(label) is dict or (type(label) is list and label and
                                                           all(type(x) is dict for x in label))):
        return " (this looks like object detection data; is the task right?)"
    if not task.is_classification and (type(label) is str or (type(label) is list and label and
                                                              all(type(x) is str for x in label))):
        return " (this looks like classification data; is the task right?)"
    if task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL and type(label) is str:
        return ' (write ["name"] for one label)'
    return ""
