"""The request forms the server accepts, read into a list of images to score.

* the original product's: ``{"input_data": {"columns": ["image"], "index": [0, ...], "data": ["<base64>", ...]}}``
  (pandas "split" style: ``index`` optional, rows may also be lists ``[["<base64>"], ...]`` or objects
  ``[{"image": "<base64>"}, ...]``; base64 with line breaks, as ``base64.encodebytes`` writes it);
  answered with a JSON list, one entry per image. A row may also be the original's explanation request,
  a JSON object or that object as a JSON string: ``{"image_base64": "<base64>", "model_explainability":
  true, "xai_parameters": {...}}``;
* raw image bytes (``Content-Type`` ``image/*``, ``application/octet-stream`` or none): one image,
  answered like the original (a list of one);
* KServe v1: ``{"instances": ["<base64>" | {"b64": ...} | {"image": {"b64": ...}}, ...]}``,
  answered with ``{"predictions": [...]}``; an instance object may carry ``model_explainability`` and
  ``xai_parameters`` as the original's rows do;
* the Open Inference Protocol v2 (read in ``predictor.py``, where KServe's types live).

Any other shape is a :class:`BadRequest` whose message shows the expected one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from automl_vision.errors import DataError
from automl_vision.serving.images import b64decode

ORIGINAL = "original"
RAW = "raw"
INSTANCES = "instances"
V2 = "v2"

EXPECTED = '{"input_data": {"columns": ["image"], "data": ["<base64 image>", ...]}}'


class BadRequest(DataError):
    """The request is not one of the accepted forms, or holds no image."""


@dataclass
class ParsedRequest:
    form: str
    #: Encoded image bytes, or for v2 UINT8 inputs decoded ``[H, W, 3]`` pixel arrays.
    images: list[Any]
    #: Where each image came from, for messages (``input_data.data[2]``).
    where: list[str]
    #: v2 only: the request id and the outputs asked for.
    request_id: str | None = None
    outputs: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Per image: None (no explanation asked), else the request's ``xai_parameters`` ({}: the defaults).
    explain: list[Any] | None = None

    def explained(self) -> list[int]:
        return [i for i, e in enumerate(self.explain or []) if e is not None]


#: The keys of the original's explanation row (its scoring schema for explainability).
EXPLAIN_ROW_KEYS = ("image_base64", "model_explainability", "xai_parameters")


def _explanation_row(row: Mapping, at: str) -> tuple[Any, Any]:
    """``(base64 image, xai_parameters or None)`` of an explanation row (one with ``image_base64``); None as
    the second value when ``model_explainability`` is absent or false."""
    unknown = [k for k in row if k not in EXPLAIN_ROW_KEYS]
    if unknown:
        raise BadRequest(f"{at}: unknown key(s) {', '.join(map(str, unknown))}; an explanation row has "
                         f"{', '.join(EXPLAIN_ROW_KEYS)}")
    return row["image_base64"], _explain_flag(row, at)


def _explain_flag(row: Mapping, at: str) -> Any:
    flag = row.get("model_explainability", False)
    if not isinstance(flag, bool):
        raise BadRequest(f"{at}.model_explainability={_show(flag)}: expected true or false")
    if not flag:
        return None
    params = row.get("xai_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise BadRequest(f"{at}.xai_parameters must be a JSON object like {{\"xai_algorithm\": \"xrai\"}}, got a "
                         f"JSON {_kind(params)}")
    return dict(params or {})


def _empty(where: str) -> BadRequest:
    return BadRequest(f"empty batch: {where} holds no image; send at least one, e.g. {EXPECTED}")


def parse_json_request(body: Any) -> ParsedRequest:
    """The original's or KServe v1's JSON body (already parsed)."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"expected a JSON object like {EXPECTED}, got a JSON {_kind(body)}")
    if "input_data" in body:
        return _parse_original(body["input_data"])
    if "instances" in body:
        return _parse_instances(body["instances"])
    keys = ", ".join(sorted(map(str, body))) or "none"
    raise BadRequest(f"expected {EXPECTED} (or KServe's {{\"instances\": [...]}}); the body's keys: {keys}")


def _parse_original(data: Any) -> ParsedRequest:
    if not isinstance(data, Mapping):
        raise BadRequest('input_data must be an object like {"columns": ["image"], "data": ["<base64 image>", ...]}, '
                         f"got a JSON {_kind(data)}")
    columns = data.get("columns", ["image"])
    if not isinstance(columns, list) or "image" not in columns:
        raise BadRequest(f"input_data.columns must be a list naming the column \"image\", got {_show(columns)}")
    col = columns.index("image")
    if "data" not in data:
        raise BadRequest(f"input_data.data missing: expected {EXPECTED}")
    rows = data["data"]
    if not isinstance(rows, list):
        raise BadRequest(f"input_data.data must be a list of base64 images, got a JSON {_kind(rows)}")
    if not rows:
        raise _empty("input_data.data")
    if "index" in data:
        index = data["index"]
        if not isinstance(index, list) or len(index) != len(rows):
            got = f"{len(index)} entries" if isinstance(index, list) else f"a JSON {_kind(index)}"
            raise BadRequest(f"input_data.index must be a list with one entry per row of input_data.data "
                             f"({len(rows)}), got {got}")
    images, where, explain = [], [], []
    for i, row in enumerate(rows):
        at = f"input_data.data[{i}]"
        if isinstance(row, list):
            if len(row) != len(columns):
                raise BadRequest(f"{at}: a row of {len(row)} values for {len(columns)} columns {_show(columns)}")
            row = row[col]
        if isinstance(row, str) and row.lstrip()[:1] == "{":  # the original's row: the object as a JSON string
            try:
                row = orjson.loads(row)
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"{at}: a string starting with {{ is read as a JSON object, but it is not valid "
                                 f"JSON ({e.msg})") from None
            if not isinstance(row, Mapping):
                raise BadRequest(f"{at}: expected a base64 image or a JSON object, got a JSON {_kind(row)}")
        wanted = None
        if isinstance(row, Mapping):
            if "image_base64" in row:
                row, wanted = _explanation_row(row, at)
            elif "image" in row:
                wanted = _explain_flag(row, at)
                row = row["image"]
            else:
                keys = ", ".join(map(str, row)) or "none"
                raise BadRequest(f"{at}: a row object needs the key \"image\" (or the original's \"image_base64\"); "
                                 f"its keys: {keys}")
        images.append(b64decode(row, at))
        where.append(at)
        explain.append(wanted)
    return ParsedRequest(ORIGINAL, images, where, explain=explain)


def _parse_instances(instances: Any) -> ParsedRequest:
    if not isinstance(instances, list):
        raise BadRequest(f"instances must be a list, got a JSON {_kind(instances)}")
    if not instances:
        raise _empty("instances")
    images, where, explain = [], [], []
    for i, inst in enumerate(instances):
        at = f"instances[{i}]"
        value = inst
        wanted = None
        if isinstance(value, Mapping):
            wanted = _explain_flag(value, at)
            for key in ("image", "image_bytes", "image_base64", "data"):
                if key in value:
                    value = value[key]
                    break
            if isinstance(value, Mapping):
                if "b64" not in value:
                    raise BadRequest(f"{at}: expected a base64 string, {{\"b64\": ...}} or {{\"image\": {{\"b64\": ...}}}}; "
                                     f"got keys {', '.join(map(str, value))}")
                value = value["b64"]
        images.append(b64decode(value, at))
        where.append(at)
        explain.append(wanted)
    return ParsedRequest(INSTANCES, images, where, explain=explain)


#: Content types under which a body may be either JSON or an image: it is JSON when it starts like JSON
#: (an encoded image never starts with ``{`` or ``[``).
_SNIFFED = ("", "application/octet-stream")


def parse_body(body: bytes) -> Any:
    """A JSON body; BadRequest for invalid JSON, text that is not UTF-8 or nesting deeper than 1024
    levels (no accepted form nests deeper than 4)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "depth" in e.msg or "recursion" in e.msg:
            raise BadRequest("the JSON body is nested too deeply (more than 1024 levels); "
                             f"expected {EXPECTED}") from None
        if "UTF-8" in e.msg:
            raise BadRequest("the body is declared JSON but is not UTF-8 text") from None
        raise BadRequest(f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def parse_bytes_request(body: bytes, content_type: str | None) -> ParsedRequest:
    """A request body as received: JSON (declared, or sniffed when the content type is absent or
    ``application/octet-stream``), else the raw bytes of one image."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype.endswith("json") or (ctype in _SNIFFED and body.lstrip()[:1] in (b"{", b"[")):
        return parse_json_request(parse_body(body))
    if not body:
        raise _empty("the request body")
    return ParsedRequest(RAW, [body], ["request body"])


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = orjson.dumps(value, default=str).decode()
    except (orjson.JSONEncodeError, RecursionError):  # nested too deeply to show whole
        text = f"a JSON {_kind(value)}"
    return text if len(text) <= limit else text[:limit] + "..."
