"""Splitting (seeded, stratified, the same split a trial makes) and the ingested dataset (Parquet manifest)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from automl_vision.data import load_dataset
from automl_vision.data.classification import load_classification_splits
from automl_vision.data.load import split_jsonl
from automl_vision.data.manifest import ingest, read_manifest, write_manifest
from automl_vision.data.records import Dataset, ImageRecord, ObjectAnnotation
from automl_vision.data.split import split_records
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION


def _records(labels: list[str]) -> list[ImageRecord]:
    return [ImageRecord(f"{i}.png", f"/d/{i}.png", labels=(c,), line=i + 1) for i, c in enumerate(labels)]


def test_split_is_seeded_deterministic_and_stratified():
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 5
    recs = _records(labels)
    one = split_records(recs, MC, 0.2, seed=3)
    assert one == split_records(recs, MC, 0.2, seed=3)
    assert one != split_records(recs, MC, 0.2, seed=4)
    held = Counter(r.labels[0] for r in one if r.split == "validation")
    assert held == {"a": 10, "b": 4, "c": 1}
    assert [r.image_url for r in one] == [r.image_url for r in recs]  # order kept


def test_split_detection_is_not_stratified_and_ratio_is_respected():
    recs = [ImageRecord(f"{i}.png", f"/d/{i}.png", objects=(ObjectAnnotation("x", (0, 0, 1, 1)),)) for i in range(50)]
    out = split_records(recs, OD, 0.3, seed=0)
    assert sum(r.split == "validation" for r in out) == 15


def test_split_ratio_errors():
    with pytest.raises(ValueError, match=r"split_ratio=1.0 must be in \(0, 1\)"):
        split_records(_records(["a", "b"]), MC, 1.0, seed=0)


def _write_set(root: Path, rows: list[tuple[str, str]], name: str = "d.jsonl") -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for file, _ in rows:
        Image.new("RGB", (6, 4), (len(file) * 20 % 255, 0, 0)).save(root / "img" / file)
    path = root / name
    path.write_text("".join(json.dumps({"image_url": f"img/{f}", "label": c}) + "\n" for f, c in rows))
    return path


def test_split_jsonl_matches_the_trial_split_and_rewrites_relative_paths(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=10, classes=("red", "green", "blue"), name="all.jsonl")
    files = split_jsonl(data, MC, tmp_path / "parts", ratio=0.2, seed=5)
    train, val = files.train.read_text().splitlines(), files.validation.read_text().splitlines()
    assert (files.train_images, files.validation_images) == (24, 6)
    assert len(train) == 24 and len(val) == 6
    # the same images a trial with the same split_ratio and seed holds out
    trial_train, trial_val = load_classification_splits(data, None, MC, split_ratio=0.2, seed=5)
    from_file = load_dataset(files.validation, MC)
    assert sorted(r.path for r in from_file.records) == sorted(s.image_path for s in trial_val)
    assert json.loads(val[0])["image_url"].startswith(f"{tmp_path}/data/images/")  # outside parts/: absolute
    beside = split_jsonl(data, MC, tmp_path / "data", ratio=0.2, seed=5)  # same folder: lines unchanged
    assert json.loads(beside.validation.read_text().splitlines()[0])["image_url"].startswith("images/")
    with pytest.raises(DataError, match="splitting would overwrite the input"):
        split_jsonl(beside.train, MC, tmp_path / "data")
    assert Counter(json.loads(x)["label"] for x in val) == {"red": 2, "green": 2, "blue": 2}


def test_split_jsonl_refuses_bad_data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"image_url": "a.png", "label": ""}\n{"image_url": "b.png", "label": "x"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: label=\"\" must be one non-empty class name"):
        split_jsonl(path, MC, tmp_path / "out")


def test_manifest_round_trip_all_fields(tmp_path):
    records = (
        ImageRecord("a.png", "/x/a.png", 640, 480, "png", objects=(
            ObjectAnnotation("cat", (0.1, 0.2, 0.5, 0.9), True, ((0.1, 0.2, 0.5, 0.2, 0.5, 0.9),)),
            ObjectAnnotation("dog", (0.0, 0.0, 1.0, 1.0))), split="train", uri="/x/a.png", source="d.jsonl",
            line=1, file_size=123),
        ImageRecord("s3://b/k.jpg", "/cache/k.jpg", None, None, None, split="validation", uri="s3://b/k.jpg",
                    source="d.jsonl", line=3),
    )
    ds = Dataset(IS, records, "d.jsonl")
    path = write_manifest(ds, tmp_path / "m" / "manifest.parquet")
    back = read_manifest(path, IS, options=ValidationOptions(check_files=False))
    assert back.records == records
    assert back.classes == ("cat", "dog") and back.task is IS
    table = pq.read_table(path)
    assert table.schema.metadata[b"automl_vision.task"] == b"image_instance_segmentation"
    assert table.column_names[:4] == ["image_url", "path", "uri", "width"]


def test_manifest_task_must_match(tmp_path):
    ds = Dataset(OD, (ImageRecord("a.png", "/x/a.png", split="train"),), "d.jsonl")
    path = write_manifest(ds, tmp_path / "manifest.parquet")
    with pytest.raises(DataError, match=r"the dataset was ingested for image_object_detection, not image_classification"):
        read_manifest(path, MC)


def test_manifest_not_a_manifest(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="not an automl-vision manifest"):
        read_manifest(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet manifest"):
        read_manifest(tmp_path / "junk.parquet")


def test_ingest_writes_manifest_stats_report_and_trials_read_it(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=5, classes=("red", "green"))
    out = tmp_path / "ingested"
    done = ingest(data, MC, out, split_ratio=0.2, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "report.json", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_per_class"] == {"green": 5, "red": 5}
    assert stats["splits"] == {"train": 8, "validation": 2}
    assert json.loads((out / "report.json").read_text())["ok"] is True
    ds = load_dataset(out, MC)
    assert ds.records == done.dataset.records
    assert all(r.width == 24 and r.format == "png" for r in ds.records)
    # a trial reads the ingested folder, keeps its split, and takes the same images a JSONL trial would
    train, val = load_classification_splits(out, None, MC, split_ratio=0.5, seed=9)
    jtrain, jval = load_classification_splits(data, None, MC, split_ratio=0.2, seed=1)
    assert [s.image_path for s in val] == [s.image_path for s in jval]
    assert [s.image_path for s in train] == [s.image_path for s in jtrain]


def test_ingest_refuses_invalid_data_and_writes_nothing(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    with data.open("a") as f:
        f.write('{"image_url": "images/none.png", "label": "red"}\n')
    with pytest.raises(DataError, match="image not found"):
        ingest(data, MC, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_ingested_images_gone_are_reported(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=3)
    ingest(data, MC, tmp_path / "out")
    (tmp_path / "data" / "images" / "red_001_0.png").unlink()
    with pytest.raises(DataError, match=r"images gone since it was ingested.*red_001_0.png': image not found"):
        load_dataset(tmp_path / "out", MC)


def test_ingest_with_a_validation_file(tmp_path):
    train = _write_set(tmp_path, [("a.png", "x"), ("b.png", "y")], "train.jsonl")
    val = _write_set(tmp_path, [("c.png", "x")], "val.jsonl")
    done = ingest(train, MC, tmp_path / "out", validation=val)
    assert [(r.image_url, r.split) for r in done.dataset.records] == [("img/a.png", "train"), ("img/b.png", "train"),
                                                                      ("img/c.png", "validation")]
    train_s, val_s = load_classification_splits(tmp_path / "out", None, MC, split_ratio=0.2, seed=0)
    assert [s.labels for s in val_s] == [("x",)]


def test_validation_result_split_from_ratio(tmp_path, make_dataset):
    data = make_dataset(tmp_path, n_per_class=5)
    result = validate_dataset(data, MC, split_ratio=0.4, seed=0)
    assert result.report.stats["splits"] == {"train": 6, "validation": 4}
