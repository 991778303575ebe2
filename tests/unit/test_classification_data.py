"""read_classification_jsonl: happy paths and every problem reported with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automl_vision.data.classification import read_classification_jsonl
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_multiclass_happy_path(tmp_path, make_dataset):
    jsonl = make_dataset(tmp_path, n_per_class=3)
    data = read_classification_jsonl(jsonl, MC)
    assert len(data.samples) == 6
    assert data.classes == ["green", "red"]
    assert data.source == str(jsonl)
    assert [s.line for s in data.samples] == [1, 2, 3, 4, 5, 6]
    assert [s.labels for s in data.samples] == [("red",)] * 3 + [("green",)] * 3
    for s in data.samples:
        # relative urls resolve against the JSONL's folder
        assert Path(s.image_path).parent == tmp_path / "images"
        assert Path(s.image_path).is_file()


def test_multilabel_happy_path_including_empty_list(tmp_path, make_dataset):
    jsonl = make_dataset(tmp_path, n_per_class=2, multilabel=True)
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    rows.append({"image_url": "images/none.png", "label": []})
    (tmp_path / "images" / "none.png").write_bytes((tmp_path / rows[0]["image_url"]).read_bytes())
    _write(jsonl, rows)
    data = read_classification_jsonl(jsonl, ML)
    labels = [s.labels for s in data.samples]
    assert labels == [("red",), ("green", "red"), ("green",), ("green", "red"), ()]
    assert data.classes == ["green", "red"]
    assert data.samples[-1].line == 5


def test_relative_path_resolved_against_jsonl_folder_not_cwd(tmp_path, make_dataset, monkeypatch):
    jsonl = make_dataset(tmp_path / "data", n_per_class=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = read_classification_jsonl(jsonl, MC)
    assert all(Path(s.image_path).parent == tmp_path / "data" / "images" for s in data.samples)


def test_absolute_paths(tmp_path, make_dataset):
    make_dataset(tmp_path / "data", n_per_class=1)
    img = (tmp_path / "data" / "images" / "red_000_0.png").resolve()
    (tmp_path / "other").mkdir()
    jsonl = _write(tmp_path / "other" / "abs.jsonl", [{"image_url": str(img), "label": "red"}])
    data = read_classification_jsonl(jsonl, MC)
    assert data.samples[0].image_path == str(img)


def test_blank_lines_skipped_but_counted(tmp_path, make_dataset):
    jsonl = make_dataset(tmp_path, n_per_class=1)
    rows = jsonl.read_text().splitlines()
    jsonl.write_text(rows[0] + "\n\n   \n" + rows[1] + "\n")
    data = read_classification_jsonl(jsonl, MC)
    assert [s.line for s in data.samples] == [1, 4]


def test_check_files_false_does_not_need_images(tmp_path):
    jsonl = _write(tmp_path / "t.jsonl", [{"image_url": "nowhere/a.jpg", "label": "cat"}])
    data = read_classification_jsonl(jsonl, MC, check_files=False)
    assert data.samples[0].image_path == str(tmp_path / "nowhere" / "a.jpg")


GOOD = {"image_url": "images/red_000_0.png", "label": "red"}

ERROR_CASES = [
    # (id, task, bad line as raw text or object, expected fragments)
    ("bad-json", MC, '{"image_url": "images/red_000_0.png", "label": }',
     [":2: not valid JSON", "at column"]),
    ("not-object", MC, "[1, 2]", [":2: a line must be a JSON object, got list"]),
    ("string-line", MC, '"hello"', [":2: a line must be a JSON object, got str"]),
    ("missing-image-url", MC, {"label": "red"}, [":2: field image_url is missing or not a string"]),
    ("image-url-not-string", MC, {"image_url": 3, "label": "red"}, [":2: field image_url is missing"]),
    ("mc-label-list", MC, {"image_url": "images/red_001_0.png", "label": ["red"]},
     [':2: label=["red"] must be one non-empty class name for image_classification']),
    ("mc-label-empty", MC, {"image_url": "images/red_001_0.png", "label": ""},
     [':2: label="" must be one non-empty class name']),
    ("mc-label-missing", MC, {"image_url": "images/red_001_0.png"},
     [":2: label=null must be one non-empty class name"]),
    ("ml-label-string", ML, {"image_url": "images/red_001_0.png", "label": "red"},
     [':2: label="red" must be a list of class names for image_classification_multilabel']),
    ("ml-label-blank-item", ML, {"image_url": "images/red_001_0.png", "label": ["red", " "]},
     [":2: label=", "must be a list of class names"]),
    ("gif", MC, {"image_url": "images/red_001_0.gif", "label": "red"},
     [":2: image_url='images/red_001_0.gif' has an unsupported format; allowed: jpg, jpeg, png"]),
    ("image-missing", MC, {"image_url": "images/ghost.png", "label": "red"},
     [":2: image_url='images/ghost.png': image not found at", "ghost.png"]),
    ("duplicate", MC, GOOD, [":2: image_url='images/red_000_0.png' duplicates line 1"]),
    ("duplicate-other-spelling", MC, {"image_url": "images/../images/red_000_0.png", "label": "red"},
     [":2: image_url='images/../images/red_000_0.png' duplicates line 1"]),
    ("s3", MC, {"image_url": "s3://bucket/red.png", "label": "red"},
     [":2: remote image_url 's3://bucket/red.png' is not supported by this reader yet; use a local path"]),
]


@pytest.mark.parametrize("task,bad,fragments", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_line(tmp_path, make_dataset, task, bad, fragments):
    make_dataset(tmp_path, n_per_class=2)
    good = dict(GOOD, label=["red"]) if task is ML else GOOD
    jsonl = _write(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(DataError) as info:
        read_classification_jsonl(jsonl, task)
    err = info.value
    assert len(err.problems) == 1
    message = str(err)
    assert message.startswith(f"{jsonl}:2: ")
    for fragment in fragments:
        assert fragment in message


def test_bad_json_names_column(tmp_path):
    jsonl = _write(tmp_path / "t.jsonl", ['{"image_url": x}'])
    with pytest.raises(DataError, match=r"t\.jsonl:1: not valid JSON \(Expecting value at column 15\)"):
        read_classification_jsonl(jsonl, MC)


def test_several_bad_lines_in_one_error(tmp_path, make_dataset):
    make_dataset(tmp_path, n_per_class=2)
    jsonl = _write(tmp_path / "bad.jsonl", [
        GOOD,                                                      # 1 ok
        "{oops",                                                   # 2
        {"image_url": "images/red_001_0.png", "label": "red"},    # 3 ok
        {"image_url": "images/x.gif", "label": "red"},            # 4
        {"label": "red"},                                          # 5
        GOOD,                                                      # 6 duplicate of 1
    ])
    with pytest.raises(DataError) as info:
        read_classification_jsonl(jsonl, MC)
    err = info.value
    assert len(err.problems) == 4
    assert [p.split(": ")[0] for p in err.problems] == [f"{jsonl}:{n}" for n in (2, 4, 5, 6)]
    text = str(err)
    assert text.splitlines()[0] == "4 problems:"
    for n in (2, 4, 5, 6):
        assert f"{jsonl}:{n}:" in text
    assert "duplicates line 1" in text


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "only-blank-lines"])
def test_empty_file(tmp_path, content):
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: no images"):
        read_classification_jsonl(jsonl, MC)


def test_file_not_found(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        read_classification_jsonl(missing, MC)
    assert str(info.value) == f"file not found: {missing}"


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_classification_jsonl(tmp_path, MC)
