"""``automl-vision data validate|convert|export|split`` in-process: output, exit codes, flags."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from automl_vision.cli import main


def _detection_set(tmp_path, lines: list[dict]):
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(len(lines)):
        Image.new("RGB", (40, 20), (i * 30 % 255, 10, 10)).save(tmp_path / "img" / f"{i}.png")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _box(label="cat", **changes):
    return {"label": label, "topX": 0.1, "topY": 0.1, "bottomX": 0.6, "bottomY": 0.9, **changes}


def test_validate_summary_and_exit_codes(tmp_path, capsys):
    data = _detection_set(tmp_path, [{"image_url": "img/0.png", "label": [_box(), _box("dog")]},
                                     {"image_url": "img/1.png", "label": [_box(topX=0.9)]}])
    assert main(["data", "validate", str(data), "--task", "image_object_detection"]) == 2
    out = capsys.readouterr().out
    assert "2 lines, 2 valid images, 3 objects read, 2 valid, 2 classes" in out
    assert f"{data}:2: label[0] (cat): topX=0.9 must be less than bottomX=0.6" in out
    assert "image sizes: width 40-40, height 20-20; most common 40x20 (2)" in out
    assert "pass --on-invalid skip" in out

    assert main(["data", "validate", str(data), "--task", "image_object_detection", "--on-invalid", "skip"]) == 0
    assert "skipped: 0 images and 1 objects (on_invalid skip)" in capsys.readouterr().out


def test_validate_json_report(tmp_path, capsys):
    data = _detection_set(tmp_path, [{"image_url": "img/0.png", "label": [_box()]},
                                     {"image_url": "img/1.png", "label": [_box("Cat")]}])
    code = main(["data", "validate", str(data), "--task", "image_object_detection", "--json", "--classes", "cat,dog"])
    assert code == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["images"] == 2 and report["objects"] == 1
    (problem,) = report["problems"]
    assert problem == {"file": str(data), "line": 2, "field": "label[0].label", "value": "Cat", "rule": "unknown_class",
                       "scope": "object", "object_index": 0,
                       "message": f"{data}:2: label[0].label=\"Cat\" is not a known class (did you mean 'cat'?); "
                                  "known: cat, dog"}
    assert report["stats"]["objects_per_class"] == {"cat": 1}


def test_validate_ingests_with_output_dir(tmp_path, capsys):
    data = _detection_set(tmp_path, [{"image_url": f"img/{i}.png", "label": [_box()]} for i in range(10)])
    out = tmp_path / "ingested"
    code = main(["data", "validate", str(data), "--task", "image_object_detection", "--output-dir", str(out),
                 "--split_ratio", "0.3", "--seed", "2"])
    assert code == 0
    assert f"ingested: {out / 'manifest.parquet'}" in capsys.readouterr().out
    assert json.loads((out / "stats.json").read_text())["splits"] == {"train": 7, "validation": 3}


def test_validate_bad_task_and_missing_file(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope.jsonl"), "--task", "image_object_detection"]) == 2
    assert f"error: file not found: {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err
    (tmp_path / "d.jsonl").write_text("{}\n")
    assert main(["data", "validate", str(tmp_path / "d.jsonl"), "--task", "detection"]) == 2
    assert "--task: task='detection' is not a task; allowed: image_classification" in capsys.readouterr().err


def test_convert_export_split(tmp_path, capsys):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "cat" / f"{i}.jpg")
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "dog" / f"{i}.jpg")
    out = tmp_path / "photos" / "all.jsonl"
    assert main(["data", "convert", "--from", "folders", str(tmp_path / "photos"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: 10 images, 2 classes (cat, dog)" in text
    assert f"next: automl-vision data validate {out} --task image_classification" in text

    assert main(["data", "split", str(out), "--task", "image_classification", "--output-dir",
                 str(tmp_path / "parts")]) == 0
    assert "(8 images) and" in capsys.readouterr().out
    assert len((tmp_path / "parts" / "validation.jsonl").read_text().splitlines()) == 2

    assert main(["data", "convert", "--from", "folders", str(tmp_path / "photos"), "--out", str(out),
                 "--names", "x.txt"]) == 2
    assert "--names do(es) not apply to --from folders" in capsys.readouterr().err

    (tmp_path / "det").mkdir()
    det = _detection_set(tmp_path / "det", [{"image_url": "img/0.png", "label": [_box()]}])
    coco = tmp_path / "coco.json"
    assert main(["data", "export", "--to", "coco", str(det), "--out", str(coco)]) == 0
    assert "1 images, 1 annotations, 1 categories" in capsys.readouterr().out
    assert json.loads(coco.read_text())["annotations"][0]["bbox"] == pytest.approx([4.0, 2.0, 20.0, 16.0])
