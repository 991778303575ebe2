"""The JSONL schema for all four tasks: accepted forms, and every rule's message with file:line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from automl_vision.data import InvalidDataError, problems as P
from automl_vision.data.storage import StorageConfig
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION

NO_FILES = ValidationOptions(check_files=False)
BOX = {"label": "cat", "topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9}
RING = [0.1, 0.2, 0.5, 0.2, 0.5, 0.9]
GOOD = {MC: {"image_url": "a.png", "label": "cat"},
        ML: {"image_url": "a.png", "label": ["cat"]},
        OD: {"image_url": "a.png", "label": [BOX]},
        IS: {"image_url": "a.png", "label": [dict(BOX, polygon=[RING])]}}


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _obj(**changes):
    obj = dict(BOX, **changes)
    return {k: v for k, v in obj.items() if v is not None}


def _line(*objects, url="b.png"):
    return {"image_url": url, "label": list(objects)}


def _validate(tmp_path, task, lines, options=NO_FILES):
    jsonl = _write(tmp_path / "data.jsonl", lines)
    return jsonl, validate_dataset(jsonl, task, options=options).report


# --- accepted forms --------------------------------------------------------------------------------

def test_seed_single_object_with_strings_is_accepted(tmp_path):
    seed = {"image_url": "AmlDatastore://image_data/Image_01.png",
            "image_details": {"format": "png", "width": "2230px", "height": "4356px"},
            "label": {"label": "cat", "topX": "0", "topY": "0", "bottomX": "1", "bottomY": "1", "isCrowd": "true"}}
    options = ValidationOptions(check_files=False, storage=_store(tmp_path))
    jsonl, report = _validate(tmp_path, OD, [seed], options)
    assert report.problems == []
    validate = validate_dataset(jsonl, OD, options=options)
    (record,) = validate.dataset.records
    (obj,) = record.objects
    assert obj.label == "cat" and obj.box == (0.0, 0.0, 1.0, 1.0) and obj.is_crowd is True
    assert (record.width, record.height, record.format) == (2230, 4356, "png")
    assert record.uri == str(tmp_path / "store" / "image_data" / "Image_01.png")


def _store(tmp_path):
    return StorageConfig(store_root=str(tmp_path / "store"))


@pytest.mark.parametrize("crowd, expected", [(0, False), (1, True), ("0", False), ("1", True), ("true", True),
                                             ("false", False), ("True", True), (True, True), (False, False)])
def test_is_crowd_forms(tmp_path, crowd, expected):
    jsonl, report = _validate(tmp_path, OD, [_line(_obj(isCrowd=crowd), url="a.png")])
    assert report.problems == []
    ds = validate_dataset(jsonl, OD, options=NO_FILES).dataset
    assert ds.records[0].objects[0].is_crowd is expected


def test_list_of_objects_numbers_as_strings_and_no_objects(tmp_path):
    lines = [_line(_obj(), _obj(label="dog", topX="0.2", bottomX="0.30"), url="a.png"), _line(url="b.png")]
    jsonl, report = _validate(tmp_path, OD, lines)
    assert report.problems == []
    ds = validate_dataset(jsonl, OD, options=NO_FILES).dataset
    assert [len(r.objects) for r in ds.records] == [2, 0]
    assert ds.records[0].objects[1].box == (0.2, 0.2, 0.3, 0.9)
    assert ds.classes == ("cat", "dog")
    assert report.stats["objects_per_class"] == {"cat": 1, "dog": 1}
    assert report.stats["images_without_objects"] == 1


def test_segmentation_box_from_polygon_and_several_rings(tmp_path):
    obj = {"label": "cat", "polygon": [RING, ["0.6", "0.1", "0.9", "0.1", "0.9", "0.4"]]}
    jsonl, report = _validate(tmp_path, IS, [{"image_url": "a.png", "label": [obj]}])
    assert report.problems == []
    (o,) = validate_dataset(jsonl, IS, options=NO_FILES).dataset.records[0].objects
    assert o.box == (0.1, 0.1, 0.9, 0.9)
    assert o.polygons == (tuple(RING), (0.6, 0.1, 0.9, 0.1, 0.9, 0.4))


def test_multilabel_empty_list_is_no_label(tmp_path):
    jsonl, report = _validate(tmp_path, ML, [{"image_url": "a.png", "label": []},
                                             {"image_url": "b.png", "label": ["x", "y"]}])
    assert report.problems == []
    assert report.stats["images_without_labels"] == 1


def test_image_details_optional_and_sizes_as_int_or_px(tmp_path):
    lines = [{"image_url": "a.png", "label": "cat", "image_details": {"width": 30, "height": "20px"}},
             {"image_url": "b.png", "label": "dog"}]
    jsonl, report = _validate(tmp_path, MC, lines)
    assert report.problems == []
    records = validate_dataset(jsonl, MC, options=NO_FILES).dataset.records
    assert [(r.width, r.height) for r in records] == [(30, 20), (None, None)]


# --- every rule, one bad line at a time ------------------------------------------------------------

CASES = [
    # (id, task, bad line, rule, fragment of the message)
    ("bad-json", OD, '{"image_url": "b.png", "label": [}', P.BAD_JSON, "not valid JSON (Expecting value at column"),
    ("not-object", OD, "[1, 2]", P.NOT_OBJECT, "a line must be a JSON object, got list"),
    ("missing-image-url", OD, {"label": []}, P.MISSING_FIELD, "field image_url is missing or not a string"),
    ("image-url-typo", OD, {"imageUrl": "b.png", "label": []}, P.MISSING_FIELD, "(found 'imageUrl': did you mean image_url?)"),
    ("image-url-number", OD, {"image_url": 7, "label": []}, P.MISSING_FIELD, "(image_url =7 is not a path or URI)"),
    ("gif", OD, _line(url="b.gif"), P.UNSUPPORTED_FORMAT,
     "image_url='b.gif' has an unsupported format; allowed: jpg, jpeg, png, jpe, jfif, bmp, tif, tiff"),
    ("od-missing-label", OD, {"image_url": "b.png"}, P.MISSING_FIELD,
     "field label is missing; use [] for an image without objects"),
    ("od-label-string", OD, {"image_url": "b.png", "label": "cat"}, P.LABEL_TYPE,
     'label="cat" must be a list of objects [{"label": ..., "topX": ...'),
    ("od-label-string-hint", OD, {"image_url": "b.png", "label": "cat"}, P.LABEL_TYPE,
     "(this looks like classification data; is the task right?)"),
    ("od-object-string", OD, _line("cat"), P.LABEL_TYPE,
     'label[0]="cat" must be an object {"label", "topX", "topY", "bottomX", "bottomY"}'),
    ("missing-coordinate", OD, _line(_obj(bottomY=None)), P.MISSING_FIELD, "label[0].bottomY is missing"),
    ("coordinate-case", OD, _line({**_obj(bottomY=None), "bottomy": 0.9}), P.MISSING_FIELD,
     "label[0].bottomY is missing (found 'bottomy': names are case-sensitive)"),
    ("not-a-number", OD, _line(_obj(topX="abc")), P.BAD_VALUE, 'label[0].topX="abc" must be a number'),
    ("bool-coordinate", OD, _line(_obj(topX=True)), P.BAD_VALUE, "label[0].topX=true must be a number"),
    ("over-1", OD, _line(_obj(bottomX=1.2)), P.OUT_OF_RANGE, "label[0].bottomX=1.2 not in [0, 1]"),
    ("negative", OD, _line(_obj(topY=-0.1)), P.OUT_OF_RANGE, "label[0].topY=-0.1 not in [0, 1]"),
    ("nan", OD, '{"image_url": "b.png", "label": [{"label": "cat", "topX": NaN, "topY": 0.2, "bottomX": 0.5, '
     '"bottomY": 0.9}]}', P.OUT_OF_RANGE, "label[0].topX=NaN not in [0, 1]"),
    ("pixels-not-fractions", OD, _line(_obj(bottomX=200)), P.OUT_OF_RANGE,
     "label[0].bottomX=200 not in [0, 1] (coordinates are fractions of the image's width and height)"),
    ("topx-after-bottomx", OD, _line(_obj(topX=0.6, bottomX=0.4)), P.BOX_ORDER,
     "label[0] (cat): topX=0.6 must be less than bottomX=0.4 (topX >= bottomX: corners swapped?)"),
    ("topy-after-bottomy", OD, _line(_obj(topY=0.95)), P.BOX_ORDER, "topY=0.95 must be less than bottomY=0.9"),
    ("zero-width", OD, _line(_obj(topX=0.5)), P.ZERO_AREA, "label[0] (cat): zero-area box, topX=0.5 equals bottomX=0.5"),
    ("zero-both", OD, _line(_obj(topX=0.5, topY=0.9)), P.ZERO_AREA,
     "zero-area box, topX=0.5 equals bottomX=0.5 and topY=0.9 equals bottomY=0.9"),
    ("seed-example-box", OD, {"image_url": "b.png", "label": {"label": "cat", "topX": "1", "topY": "0",
                                                              "bottomX": "0", "bottomY": "1", "isCrowd": "true"}},
     P.BOX_ORDER, "label (cat): topX=1 must be less than bottomX=0"),
    ("bad-crowd", OD, _line(_obj(isCrowd="yes")), P.BAD_VALUE, 'label[0].isCrowd="yes" must be 0, 1, true or false'),
    ("crowd-2", OD, _line(_obj(isCrowd=2)), P.BAD_VALUE, "label[0].isCrowd=2 must be 0, 1, true or false"),
    ("object-without-class", OD, _line(_obj(label=None)), P.MISSING_FIELD,
     "label[0].label is missing: each object needs a class name"),
    ("object-class-number", OD, _line(_obj(label=3)), P.LABEL_TYPE, "label[0].label=3 must be a class name (a string)"),
    ("object-empty-class", OD, _line(_obj(label="")), P.EMPTY_CLASS, 'label[0].label="" is an empty class name'),
    ("object-blank-class", OD, _line(_obj(label="  ")), P.EMPTY_CLASS, 'label[0].label="  " is an empty class name'),
    ("object-padded-class", OD, _line(_obj(label="cat ")), P.EMPTY_CLASS,
     'label[0].label="cat " has spaces around the class name'),
    ("details-not-object", OD, {"image_url": "b.png", "label": [], "image_details": "640x480"}, P.BAD_VALUE,
     'image_details="640x480" must be an object with format, width, height'),
    ("details-width", OD, {"image_url": "b.png", "label": [], "image_details": {"width": "wide"}}, P.BAD_VALUE,
     'image_details.width="wide" must be a positive integer or a string such as "400px"'),
    ("details-height-zero", OD, {"image_url": "b.png", "label": [], "image_details": {"height": 0}}, P.BAD_VALUE,
     "image_details.height=0 must be a positive integer"),
    ("details-format", OD, {"image_url": "b.png", "label": [], "image_details": {"format": "gif"}},
     P.UNSUPPORTED_FORMAT, 'image_details.format="gif" is not an accepted format'),
    ("duplicate", OD, GOOD[OD], P.DUPLICATE_IMAGE, "image_url='a.png' duplicates line 1"),
    ("duplicate-other-spelling", OD, _line(url="x/../a.png"), P.DUPLICATE_IMAGE,
     "image_url='x/../a.png' duplicates line 1"),
    ("escapes-root", OD, _line(url="../outside.png"), P.PATH_ESCAPES_ROOT,
     "image_url='../outside.png' resolves to"),
    ("unknown-scheme", OD, _line(url="http://example.com/a.png"), P.UNSUPPORTED_URI,
     "image_url='http://example.com/a.png': scheme http:// is not supported"),
    ("datastore-without-root", OD, _line(url="AmlDatastore://images/a.png"), P.UNSUPPORTED_URI,
     "names datastore 'images' but no store root is configured"),
    ("azureml-without-paths", OD, _line(url="azureml://subscriptions/s/workspaces/w/a.png"), P.UNSUPPORTED_URI,
     "an azureml URI must contain /datastores/<name>/paths/<path>"),
    # instance segmentation
    ("is-missing-polygon", IS, _line(_obj()), P.MISSING_FIELD,
     "label[0].polygon is missing: instance segmentation needs a polygon"),
    ("is-two-points", IS, _line(_obj(polygon=[[0.1, 0.2, 0.5, 0.2]])), P.POLYGON_POINTS,
     "label[0].polygon[0] has 2 point(s); a polygon needs at least 3"),
    ("is-flat-polygon", IS, _line(_obj(polygon=RING)), P.BAD_VALUE,
     "label[0].polygon=[0.1, 0.2, 0.5, 0.2, 0.5, 0.9] is one flat list of numbers; it must be a list of rings"),
    ("is-odd-count", IS, _line(_obj(polygon=[RING + [0.3]])), P.BAD_VALUE,
     "label[0].polygon[0] has 7 numbers; it needs x, y pairs"),
    ("is-polygon-outside", IS, _line(_obj(polygon=[[0.1, 0.2, 1.5, 0.2, 0.5, 0.9]])), P.OUT_OF_RANGE,
     "label[0].polygon[0] has coordinate 1.5 not in [0, 1]"),
    ("is-polygon-text", IS, _line(_obj(polygon=[[0.1, "x", 0.5, 0.2, 0.5, 0.9]])), P.BAD_VALUE,
     'label[0].polygon[0] holds "x", which is not a number'),
    ("is-polygon-empty", IS, _line(_obj(polygon=[])), P.BAD_VALUE, "label[0].polygon=[] must be a non-empty list of rings"),
    # multi-class
    ("mc-detection-label", MC, _line(_obj()), P.LABEL_TYPE,
     "must be one non-empty class name for image_classification (this looks like object detection data"),
    ("mc-list", MC, {"image_url": "b.png", "label": ["cat"]}, P.LABEL_TYPE,
     'label=["cat"] must be one non-empty class name for image_classification'),
    ("mc-empty", MC, {"image_url": "b.png", "label": ""}, P.EMPTY_CLASS, 'label="" must be one non-empty class name'),
    ("mc-missing", MC, {"image_url": "b.png", "lable": "cat"}, P.MISSING_FIELD,
     "label=null must be one non-empty class name for image_classification; the field is missing (found 'lable': "
     "did you mean label?)"),
    ("mc-padded", MC, {"image_url": "b.png", "label": " cat"}, P.EMPTY_CLASS, 'label=" cat" has spaces around'),
    # multi-label
    ("ml-string", ML, {"image_url": "b.png", "label": "cat"}, P.LABEL_TYPE,
     'label="cat" must be a list of class names for image_classification_multilabel (write ["name"] for one label)'),
    ("ml-blank-item", ML, {"image_url": "b.png", "label": ["cat", ""]}, P.EMPTY_CLASS,
     'label=["cat", ""] must be a list of class names: item 1 is empty'),
    ("ml-twice", ML, {"image_url": "b.png", "label": ["cat", "dog", "cat"]}, P.BAD_VALUE, "names 'cat' more than once"),
    ("ml-missing", ML, {"image_url": "b.png"}, P.MISSING_FIELD, "the field is missing (use [] for an image without labels)"),
]


@pytest.mark.parametrize("task, bad, rule, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule(tmp_path, task, bad, rule, fragment):
    jsonl, report = _validate(tmp_path, task, [GOOD[task], bad])
    assert [p.code for p in report.problems] == [rule], [str(p) for p in report.problems]
    (problem,) = report.problems
    assert str(problem).startswith(f"{jsonl}:2: ")
    assert fragment in str(problem)
    assert problem.line == 2 and problem.file == str(jsonl)
    assert not report.ok
    as_json = problem.to_json()
    assert as_json["rule"] == rule and as_json["line"] == 2 and as_json["message"] == str(problem)


def test_every_problem_collected_with_its_field_and_value(tmp_path):
    lines = [
        GOOD[OD],
        _line(_obj(topX=1.5), _obj(label="", bottomY=0.1), url="b.png"),  # 3 problems in two objects
        "{oops",
        _line(_obj(topX=0.5), url="c.gif"),  # two problems: extension, zero-area box
        GOOD[OD],  # duplicate of line 1
    ]
    jsonl, report = _validate(tmp_path, OD, lines)
    got = [(p.line, p.code, p.field, p.value, p.object_index) for p in report.problems]
    assert got == [
        (2, P.OUT_OF_RANGE, "label[0].topX", 1.5, 0),
        (2, P.EMPTY_CLASS, "label[1].label", "", 1),
        (2, P.BOX_ORDER, "label[1].topY", 0.2, 1),
        (3, P.BAD_JSON, None, None, None),
        (4, P.UNSUPPORTED_FORMAT, "image_url", "c.gif", None),
        (4, P.ZERO_AREA, "label[0]", {"topX": 0.5, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9}, 0),
        (5, P.DUPLICATE_IMAGE, "image_url", "a.png", None),
    ]
    assert report.lines == 5 and report.objects_read == 5


def test_pretty_printed_json_gets_a_hint(tmp_path):
    jsonl = tmp_path / "pretty.jsonl"
    jsonl.write_text(json.dumps(GOOD[OD], indent=2) + "\n")
    report = validate_dataset(jsonl, OD, options=NO_FILES).report
    assert "this file looks like pretty-printed JSON" in str(report.problems[0])
    assert str(report.problems[0]).startswith(f"{jsonl}:1: not valid JSON")


def test_not_utf8(tmp_path):
    jsonl = tmp_path / "latin.jsonl"
    jsonl.write_bytes(json.dumps(GOOD[MC]).encode() + b"\n" + '{"image_url": "b.png", "label": "caf\xe9"}'.encode("latin-1")
                      + b"\n")
    report = validate_dataset(jsonl, MC, options=NO_FILES).report
    assert [str(p) for p in report.problems] == [f"{jsonl}:2: not valid UTF-8 text (byte 37 of the line)"]


def test_skip_mode_drops_invalid_objects_and_lines_and_says_so(tmp_path):
    lines = [_line(_obj(), _obj(topX=0.5), url="a.png"), "{oops", _line(_obj(), url="c.gif"), _line(_obj(), url="d.png")]
    jsonl = _write(tmp_path / "d.jsonl", lines)
    options = ValidationOptions(check_files=False, on_invalid="skip")
    result = validate_dataset(jsonl, OD, options=options)
    report = result.report
    assert report.ok
    assert [p.code for p in report.problems] == [P.ZERO_AREA, P.BAD_JSON, P.UNSUPPORTED_FORMAT]
    assert (report.skipped_images, report.skipped_objects) == (2, 1)
    assert [r.image_url for r in result.dataset.records] == ["a.png", "d.png"]
    assert [len(r.objects) for r in result.dataset.records] == [1, 1]
    assert report.to_json()["skipped"] == {"images": 2, "objects": 1}


def test_fail_mode_raises_with_every_problem(tmp_path):
    jsonl = _write(tmp_path / "d.jsonl", [_line(_obj(topX=2), url="a.png"), _line(_obj(topY=0.9), url="b.png")])
    with pytest.raises(InvalidDataError) as info:
        validate_dataset(jsonl, OD, options=NO_FILES).raise_if_invalid()
    text = str(info.value)
    assert text.splitlines()[0] == "2 problems:"
    assert f"{jsonl}:1: label[0].topX=2 not in [0, 1]" in text
    assert f"{jsonl}:2: label[0] (cat): zero-area box, topY=0.9 equals bottomY=0.9" in text
    assert len(info.value.details) == 2


def test_long_error_lists_are_cut_in_the_message_only(tmp_path):
    jsonl = _write(tmp_path / "d.jsonl", ["{"] * 150)
    with pytest.raises(InvalidDataError) as info:
        validate_dataset(jsonl, OD, options=NO_FILES).raise_if_invalid()
    assert len(info.value.problems) == 150
    assert "... and 50 more" in str(info.value)
    assert str(info.value).splitlines()[0] == "150 problems:"


@pytest.mark.parametrize("content", ["", "\n \n"], ids=["empty", "blank"])
def test_no_images(tmp_path, content):
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(content)
    result = validate_dataset(jsonl, OD, options=NO_FILES)
    assert not result.report.ok
    assert [str(p) for p in result.report.problems] == [f"{jsonl}: no images"]


def test_unknown_classes_against_a_given_list(tmp_path):
    lines = [_line(_obj(label="RBc"), url="a.png"), {"image_url": "b.png", "label": [_obj(label="WBC")]}]
    options = ValidationOptions(check_files=False, classes=("RBC", "WBC", "Platelets"))
    jsonl, report = _validate(tmp_path, OD, lines, options)
    assert [str(p) for p in report.problems] == [
        f"{jsonl}:1: label[0].label=\"RBc\" is not a known class (did you mean 'RBC'?); known: Platelets, RBC, WBC"]
    assert report.problems[0].code == P.UNKNOWN_CLASS


def test_validation_file_classes_must_appear_in_training(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"image_url": "a.png", "label": "cat"}, {"image_url": "b.png", "label": "dog"}])
    val = _write(tmp_path / "val.jsonl", [{"image_url": "c.png", "label": "cat"}, {"image_url": "d.png", "label": "cow"},
                                          {"image_url": "a.png", "label": "cat"}])
    report = validate_dataset(train, MC, validation=val, options=NO_FILES).report
    assert [str(p) for p in report.problems] == [
        f"{val}:2: label=\"cow\" is not a class of the training data; known: cat, dog",
        f"{val}:3: image_url='a.png' duplicates {train}:1",
    ]


def test_problems_round_trip_through_json(tmp_path):
    jsonl, report = _validate(tmp_path, OD, [_line(_obj(topX=float("inf")), url="a.png")])
    text = json.dumps(report.to_json(), allow_nan=False)
    problem = json.loads(text)["problems"][0]
    assert problem["rule"] == P.OUT_OF_RANGE and problem["field"] == "label[0].topX"
    assert problem["value"] == "inf" and not math.isnan(json.loads(text)["images"])
