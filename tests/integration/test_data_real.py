"""The data commands on the real sets in ../shared/data: BCCD (Pascal VOC detection) and fridge_small150
(classification), through the CLI and the Python API."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from automl_vision.data import load_dataset
from automl_vision.data import problems as P
from automl_vision.data.convert import convert
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BCCD = SHARED / "bccd"
FRIDGE = SHARED / "fridge_small150"
OD = ImageTask.IMAGE_OBJECT_DETECTION
MC = ImageTask.IMAGE_CLASSIFICATION

pytestmark = pytest.mark.skipif(not BCCD.is_dir() or not FRIDGE.is_dir(), reason="needs ../shared/data")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bccd_conversion(tmp_path_factory):
    out = tmp_path_factory.mktemp("bccd") / "bccd.jsonl"
    conv = convert("voc", BCCD, out)
    assert len(conv.lines) == 364
    return out, conv


@pytest.fixture(scope="module")
def bccd_jsonl(bccd_conversion) -> Path:
    return bccd_conversion[0]


def test_bccd_converts_leaving_out_the_two_empty_boxes(bccd_conversion):
    bccd_jsonl, conv = bccd_conversion
    (note,) = [n for n in conv.notes if "empty box" in n]
    assert note.startswith("2 object(s) with an empty box (xmax == xmin or ymax == ymin) left out: ")
    assert "BloodImage_0033" in note or "BloodImage_0034" in note
    assert conv.objects == 4886
    report = validate_dataset(bccd_jsonl, OD).report
    assert (report.lines, report.images, report.objects_read) == (364, 364, 4886)
    assert report.problems == [] and report.ok
    assert report.stats["images_per_class"] == {"Platelets": 201, "RBC": 349, "WBC": 358}
    assert report.stats["image_size"]["most_common"] == {"640x480": 364}
    assert report.stats["objects_per_class"] == {"Platelets": 361, "RBC": 4153, "WBC": 372}


def test_bccd_official_image_set(tmp_path):
    conv = convert("voc", BCCD, tmp_path / "train.jsonl", image_set="train")
    assert len(conv.lines) == 205


def test_bccd_through_the_cli(bccd_jsonl, tmp_path):
    out = tmp_path / "cli.jsonl"
    p = cli("data", "convert", "--from", "voc", str(BCCD), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "364 images, 4,886 objects, 3 classes (Platelets, RBC, WBC)" in p.stdout
    assert "2 object(s) with an empty box" in p.stdout + p.stderr
    assert out.read_text() == bccd_jsonl.read_text()

    p = cli("data", "validate", str(out), "--task", OD.value)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "364 lines, 364 valid images, 4,886 objects read, 4,886 valid, 3 classes" in p.stdout
    assert re.search(r"\n  RBC +349 +4,153\n", p.stdout)  # valid images and objects per class

    # The same file with one empty box put back (what BloodImage_00033 has in its XML): refused.
    broken = tmp_path / "broken.jsonl"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    lines[0]["label"].append({"label": "RBC", "topX": 0.5, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.4, "isCrowd": 0})
    broken.write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = cli("data", "validate", str(broken), "--task", OD.value, "--json")
    assert p.returncode == 2
    report = json.loads(p.stdout)
    assert report["ok"] is False and report["problem_counts"] == {"zero_area": 1}
    assert {x["rule"] for x in report["problems"]} == {"zero_area"}

    ingested = tmp_path / "ingested"
    p = cli("data", "validate", str(broken), "--task", OD.value, "--on-invalid", "skip", "--output-dir", str(ingested))
    assert p.returncode == 0, p.stderr
    assert "skipped: 0 images and 1 objects" in p.stdout
    stats = json.loads((ingested / "stats.json").read_text())
    # iterative stratification over the three classes' objects: about split_ratio 0.2 of the images
    assert stats["objects"] == 4886 and stats["splits"] == {"train": 289, "validation": 75}

    ds = load_dataset(ingested, OD)
    assert len(ds.train) == 289 and len(ds.validation) == 75
    record = ds.records[0]
    assert (record.width, record.height, record.format) == (640, 480, "jpeg")
    assert record.objects[0].label == "WBC" and record.objects[0].box == (260 / 640, 177 / 480, 491 / 640, 376 / 480)

    coco_path = tmp_path / "coco.json"
    p = cli("data", "export", "--to", "coco", str(broken), "--out", str(coco_path))
    assert p.returncode == 2 and "zero-area box" in p.stderr  # export refuses invalid data too
    p = cli("data", "export", "--to", "coco", str(out), "--out", str(coco_path))
    assert p.returncode == 0, p.stderr
    assert "364 images, 4,886 annotations, 3 categories" in p.stdout


def test_bccd_coco_export_evaluates_with_pycocotools(bccd_jsonl, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from automl_vision.data.convert import export_coco

    ds = load_dataset(bccd_jsonl, OD, options=ValidationOptions(on_invalid="skip", check_images=False))
    export_coco(ds, tmp_path / "gt.json", images_dir=BCCD / "JPEGImages")
    gt = COCO(str(tmp_path / "gt.json"))
    assert len(gt.getImgIds()) == 364 and len(gt.getAnnIds()) == 4886
    assert gt.loadImgs(1)[0]["file_name"] == "BloodImage_00000.jpg"
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt.dataset["annotations"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def _fridge_csv(tmp_path: Path) -> Path:
    path = tmp_path / "fridge.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "labels"])
        for image in sorted(FRIDGE.glob("*.jpg")):
            w.writerow([image.name, image.stem.rsplit("_", 1)[0]])
    return path


def test_fridge_classification_jsonl_from_csv(tmp_path):
    out = tmp_path / "fridge.jsonl"
    p = cli("data", "convert", "--from", "csv", str(_fridge_csv(tmp_path)), "--images-dir", str(FRIDGE),
            "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "134 images, 4 classes (can, carton, milk_bottle, water_bottle)" in p.stdout
    result = validate_dataset(out, MC)
    assert result.report.problems == [] and result.report.images == 134
    assert result.report.stats["image_size"]["most_common"] == {"113x150": 134}
    per_class = result.report.stats["images_per_class"]
    assert sorted(per_class) == ["can", "carton", "milk_bottle", "water_bottle"] and sum(per_class.values()) == 134

    p = cli("data", "split", str(out), "--task", MC.value, "--output-dir", str(tmp_path / "parts"))
    assert p.returncode == 0, p.stderr
    val = load_dataset(tmp_path / "parts" / "validation.jsonl", MC)
    assert {r.labels[0] for r in val.records} == set(per_class)  # stratified: every class held out


@pytest.mark.slow
def test_fridge_ingested_once_then_trained_from_the_manifest(tmp_path):
    out = tmp_path / "fridge.jsonl"
    convert("csv", _fridge_csv(tmp_path), out, task=MC, images_dir=FRIDGE)
    ingested = tmp_path / "ingested"
    p = cli("data", "validate", str(out), "--task", MC.value, "--output-dir", str(ingested), "--seed", "3")
    assert p.returncode == 0, p.stderr
    p = cli("train", "--task", MC.value, "--training_data", str(ingested), "--model_name", "mobilenetv2",
            "--number_of_epochs", "1", "--pretrained", "0", "--train_crop_size", "32", "--valid_resize_size", "32",
            "--valid_crop_size", "32", "--training_batch_size", "16", "--output-dir", str(tmp_path / "trial"))
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "trial" / "result.json").read_text())["status"] == "completed"
    stats = json.loads((ingested / "stats.json").read_text())
    assert stats["splits"] == {"train": 108, "validation": 26}  # 20% of each class, rounded
