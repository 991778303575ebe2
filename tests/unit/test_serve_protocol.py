"""Request forms the server reads, and the message for each shape it refuses."""

from __future__ import annotations

import json
import re

import pytest
from serve_testdata import b64, png_bytes, sample_client_body

from automl_vision.serving import protocol
from automl_vision.serving.images import InvalidImage
from automl_vision.serving.protocol import BadRequest, parse_bytes_request, parse_json_request

IMG = png_bytes(8, 8)


@pytest.mark.parametrize("body, form, where", [
    ({"input_data": {"columns": ["image"], "data": [b64(IMG), b64(IMG)]}}, protocol.ORIGINAL,
     ["input_data.data[0]", "input_data.data[1]"]),
    ({"input_data": {"columns": ["id", "image"], "index": [0], "data": [["a", b64(IMG)]]}}, protocol.ORIGINAL,
     ["input_data.data[0]"]),
    ({"input_data": {"columns": ["image"], "data": ["data:image/png;base64," + b64(IMG)]}}, protocol.ORIGINAL,
     ["input_data.data[0]"]),
    ({"instances": [b64(IMG), {"b64": b64(IMG)}, {"image": {"b64": b64(IMG)}}, {"image_bytes": b64(IMG)}]},
     protocol.INSTANCES, ["instances[0]", "instances[1]", "instances[2]", "instances[3]"]),
])
def test_accepted_json_forms(body, form, where):
    parsed = parse_json_request(body)
    assert parsed.form == form and parsed.where == where
    assert all(x == IMG for x in parsed.images)


def test_bytes_are_an_image_unless_declared_json():
    assert parse_bytes_request(IMG, "image/png").form == protocol.RAW
    assert parse_bytes_request(IMG, "application/octet-stream").images == [IMG]
    body = json.dumps({"input_data": {"columns": ["image"], "data": [b64(IMG)]}}).encode()
    assert parse_bytes_request(body, "application/json; charset=utf-8").form == protocol.ORIGINAL


@pytest.mark.parametrize("body, message", [
    ([1, 2], "expected a JSON object like {\"input_data\""),
    ({"data": [b64(IMG)]}, "the body's keys: data"),
    ({"input_data": [b64(IMG)]}, "input_data must be an object"),
    ({"input_data": {"columns": ["text"], "data": [b64(IMG)]}}, 'must be a list naming the column "image"'),
    ({"input_data": {"columns": ["image"]}}, "input_data.data missing"),
    ({"input_data": {"columns": ["image"], "data": b64(IMG)}}, "input_data.data must be a list"),
    ({"input_data": {"columns": ["image"], "data": []}}, "empty batch: input_data.data holds no image"),
    ({"input_data": {"columns": ["image", "id"], "data": [[b64(IMG)]]}}, "input_data.data[0]: a row of 1 values for 2"),
    ({"input_data": {"columns": ["image"], "data": ["not base64!"]}}, "input_data.data[0]: not valid base64"),
    ({"input_data": {"columns": ["image"], "data": [""]}}, "input_data.data[0]: empty string"),
    ({"input_data": {"columns": ["image"], "data": [42]}}, "input_data.data[0]: expected a base64-encoded image"),
    ({"instances": []}, "empty batch: instances holds no image"),
    ({"instances": {"b64": b64(IMG)}}, "instances must be a list"),
    ({"instances": [{"picture": "x"}]}, "instances[0]: expected a base64 string"),
])
def test_refused_json_shapes(body, message):
    with pytest.raises((BadRequest, InvalidImage)) as e:
        parse_json_request(body)
    assert message in str(e.value)


@pytest.mark.parametrize("body, ctype, message", [
    (b'{"input_data": ', "application/json; charset=utf-8", "the body is not valid JSON"),
    (b"", "image/png", "empty batch: the request body holds no image"),
])
def test_refused_bodies(body, ctype, message):
    with pytest.raises(BadRequest, match=message):
        parse_bytes_request(body, ctype)


def test_the_original_sample_clients_body_is_read():
    """Built as the original's published samples build it: encodebytes (line breaks) and an index."""
    images = [png_bytes(8, 8, seed=i) for i in range(3)]
    parsed = parse_bytes_request(sample_client_body(*images).encode(), "application/json")
    assert parsed.form == protocol.ORIGINAL and parsed.images == images
    assert parsed.where == ["input_data.data[0]", "input_data.data[1]", "input_data.data[2]"]
    rows = {"input_data": {"columns": ["image"], "index": [0], "data": [{"image": b64(IMG)}]}}
    assert parse_json_request(rows).images == [IMG]


def test_octet_stream_or_no_content_type_is_json_when_it_starts_like_json_else_an_image():
    body = sample_client_body(IMG).encode()
    assert parse_bytes_request(body, None).form == protocol.ORIGINAL
    assert parse_bytes_request(body, "application/octet-stream").form == protocol.ORIGINAL
    for ctype in (None, "", "application/octet-stream", "image/jpeg"):
        parsed = parse_bytes_request(IMG, ctype)
        assert parsed.form == protocol.RAW and parsed.images == [IMG]


@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, "the JSON body is nested too deeply (more than 1024 levels)"),
    (b'{"input_data": {"columns": ["image"], "data": [' + b"[" * 5000 + b"]" * 5000 + b"]}}",
     "the JSON body is nested too deeply"),
    (b'{"input_data": ', "the body is not valid JSON (unexpected end of data at line 1 column 16)"),
])
def test_bodies_that_are_not_json_we_can_read(body, message):
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_bytes_request(body, "application/json")


@pytest.mark.parametrize("body, message", [
    ({"input_data": {"columns": ["image"], "index": [0, 1], "data": [b64(IMG)]}},
     "input_data.index must be a list with one entry per row of input_data.data (1), got 2 entries"),
    ({"input_data": {"columns": ["image"], "index": 0, "data": [b64(IMG)]}},
     "input_data.index must be a list with one entry per row of input_data.data (1), got a JSON number"),
    ({"input_data": {"columns": ["image"], "data": [{"picture": b64(IMG)}]}},
     'input_data.data[0]: a row object needs the key "image" (or the original\'s "image_base64"); its keys: picture'),
])
def test_refused_original_shapes(body, message):
    with pytest.raises(BadRequest) as e:
        parse_json_request(body)
    assert message in str(e.value)
