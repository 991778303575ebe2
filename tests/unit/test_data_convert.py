"""Converters: COCO (boxes, polygons, RLE, iscrowd), Pascal VOC (with instance masks), YOLO, class folders,
CSV; JSONL -> COCO and the COCO round trip; none of the original converters' bugs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from automl_vision.data.convert import coco_to_jsonl, convert, export_coco, jsonl_to_coco
from automl_vision.data.convert.common import mask_to_polygons
from automl_vision.data.load import load_dataset
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

MC = ImageTask.IMAGE_CLASSIFICATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION


def _img(path: Path, w: int, h: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 30)).save(path, fmt)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --- COCO --------------------------------------------------------------------------------------------

def _rle_uncompressed(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            run, current = 0, v
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _rle_compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def coco_dir(tmp_path):
    root = tmp_path / "coco"
    _img(root / "images" / "a" / "x.jpg", 64, 48)
    _img(root / "images" / "b" / "x.jpg", 32, 40)  # same file name, other folder, other size
    _img(root / "images" / "empty.jpg", 10, 10)
    mask = np.zeros((40, 32), dtype=bool)
    mask[5:20, 4:15] = True
    coco = {
        "images": [{"id": 10, "file_name": "a/x.jpg", "width": 64, "height": 48},
                   {"id": 11, "file_name": "b/x.jpg", "width": 32, "height": 40},
                   {"id": 12, "file_name": "empty.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1.5, 2.25, 10, 20], "iscrowd": 0,
             "segmentation": [[1.5, 2.25, 11.5, 2.25, 11.5, 22.25, 1.5, 22.25], [20, 20, 30, 20, 25, 30]]},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [4, 5, 11, 15], "iscrowd": 0,
             "segmentation": _rle_compressed(mask)},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [4, 5, 11, 15], "iscrowd": 1,
             "segmentation": _rle_uncompressed(mask)},
            # a box smaller than 1.5 pixels everywhere: still pixels, never "already normalized"
            {"id": 4, "image_id": 10, "category_id": 7, "bbox": [0.5, 0.25, 1.0, 1.0], "iscrowd": 0,
             "segmentation": [[0.5, 0.25, 1.5, 0.25, 1.5, 1.25]]},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_coco_boxes_each_image_its_own_size(coco_dir, tmp_path):
    out = tmp_path / "out" / "train.jsonl"
    convert("coco", coco_dir / "annotations.json", out, images_dir=coco_dir / "images")
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == [str(coco_dir / "images/a/x.jpg"), str(coco_dir / "images/b/x.jpg"),
                                              str(coco_dir / "images/empty.jpg")]
    assert [x["image_details"] for x in lines] == [{"format": "jpeg", "width": 64, "height": 48},
                                                   {"format": "jpeg", "width": 32, "height": 40},
                                                   {"format": "jpeg", "width": 10, "height": 10}]
    first = lines[0]["label"]
    assert first[0] == {"label": "cat", "topX": 1.5 / 64, "topY": 2.25 / 48, "bottomX": 11.5 / 64,
                        "bottomY": 22.25 / 48, "isCrowd": 0}
    assert first[1]["topX"] == 0.5 / 64 and first[1]["bottomX"] == 1.5 / 64
    assert [o["isCrowd"] for o in lines[1]["label"]] == [0, 1]
    assert lines[1]["label"][0]["bottomY"] == 20 / 40
    assert lines[2]["label"] == []
    assert "polygon" not in first[0]  # detection keeps boxes only
    assert validate_dataset(out, OD).report.problems == []


def test_coco_polygons_and_rle_for_segmentation(coco_dir, tmp_path):
    out = tmp_path / "seg.jsonl"
    convert("coco", coco_dir / "annotations.json", out, task=IS, images_dir=coco_dir / "images")
    lines = _lines(out)
    rings = lines[0]["label"][0]["polygon"]
    assert len(rings) == 2
    assert rings[0] == [1.5 / 64, 2.25 / 48, 11.5 / 64, 2.25 / 48, 11.5 / 64, 22.25 / 48, 1.5 / 64, 22.25 / 48]
    for obj in lines[1]["label"]:  # compressed and uncompressed RLE give the same outline
        xs, ys = obj["polygon"][0][0::2], obj["polygon"][0][1::2]
        assert (min(xs) * 32, max(xs) * 32, min(ys) * 40, max(ys) * 40) == (4.5, 14.5, 5.5, 19.5)
    assert lines[1]["label"][0]["polygon"] == lines[1]["label"][1]["polygon"]
    ds = load_dataset(out, IS)
    assert [len(r.objects) for r in ds.records] == [2, 2, 0]


def test_coco_round_trip_keeps_boxes_and_polygons(coco_dir, tmp_path):
    src = json.loads((coco_dir / "annotations.json").read_text())
    jsonl = coco_dir / "train.jsonl"  # beside the COCO file: image_url relative
    convert("coco", coco_dir / "annotations.json", jsonl, task=IS, images_dir=coco_dir / "images")
    assert _lines(jsonl)[0]["image_url"] == "images/a/x.jpg"
    back = export_coco(load_dataset(jsonl, IS), tmp_path / "back.json", images_dir=coco_dir / "images")
    assert json.loads((tmp_path / "back.json").read_text()) == back
    assert [im["file_name"] for im in back["images"]] == [im["file_name"] for im in src["images"]]
    names = {c["id"]: c["name"] for c in src["categories"]}
    new_names = {c["id"]: c["name"] for c in back["categories"]}
    src_by_image = {}
    for a in src["annotations"]:
        src_by_image.setdefault(a["image_id"], []).append(a)
    image_ids = {im["file_name"]: im["id"] for im in back["images"]}
    for im in src["images"]:
        new = [a for a in back["annotations"] if a["image_id"] == image_ids[im["file_name"]]]
        old = src_by_image.get(im["id"], [])
        assert len(new) == len(old)
        for a, b in zip(old, new):
            assert names[a["category_id"]] == new_names[b["category_id"]]
            assert a["iscrowd"] == b["iscrowd"]
            np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1e-6)
            if isinstance(a["segmentation"], list):
                assert len(b["segmentation"]) == len(a["segmentation"])
                for ra, rb in zip(a["segmentation"], b["segmentation"]):
                    np.testing.assert_allclose(rb, ra, atol=1e-6)
            else:
                assert b["segmentation"] and len(b["segmentation"][0]) >= 6


def test_exported_coco_reads_in_pycocotools_and_scores_itself_perfectly(coco_dir, tmp_path):
    jsonl = coco_dir / "train.jsonl"
    convert("coco", coco_dir / "annotations.json", jsonl, images_dir=coco_dir / "images")
    export_coco(load_dataset(jsonl, OD), tmp_path / "gt.json")
    gt = COCO(str(tmp_path / "gt.json"))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"] if not a["iscrowd"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


def _coco_with(tmp_path, **changes) -> Path:
    _img(tmp_path / "a.jpg", 20, 10)
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}]}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            coco[section][0][field] = value
        else:
            coco[section] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    return path


COCO_ERRORS = [
    ("unknown-image", {"annotations__image_id": 9}, OD, "annotations[0] (id 1): image_id 9 is not in images"),
    ("unknown-category", {"annotations__category_id": 4}, OD, "annotations[0] (id 1): category_id 4 is not in categories"),
    ("bad-bbox", {"annotations__bbox": [1, 2, 3]}, OD, "annotations[0] (id 1): bbox=[1, 2, 3] must be [x, y, width, height]"),
    ("bad-iscrowd", {"annotations__iscrowd": 2}, OD, "annotations[0] (id 1): iscrowd=2 must be 0 or 1"),
    ("no-segmentation", {}, IS, "annotations[0] (id 1): no segmentation; image_instance_segmentation needs one"),
    ("duplicate-image-id", {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}] * 2}, OD,
     "images[1]: id 1 is used twice"),
    ("no-image", {"images": [{"id": 1, "file_name": "gone.jpg"}]}, OD,
     "images[0] (gone.jpg): image not found; looked in "),
    ("category-name-twice", {"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}]}, OD,
     "categories[1]: name 'cat' is used by ids 1 and 2"),
]


@pytest.mark.parametrize("changes, task, message", [c[1:] for c in COCO_ERRORS], ids=[c[0] for c in COCO_ERRORS])
def test_coco_errors(tmp_path, changes, task, message):
    path = _coco_with(tmp_path, **changes)
    with pytest.raises(DataError) as info:
        convert("coco", path, tmp_path / "o.jsonl", task=task)
    assert message in str(info.value)
    assert f"{path}: " in str(info.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_coco_missing_size_read_from_the_image(tmp_path):
    path = _coco_with(tmp_path, images=[{"id": 1, "file_name": "a.jpg"}])
    conv = coco_to_jsonl(path, tmp_path)
    assert conv.lines[0]["image_details"] == {"format": "jpeg", "width": 20, "height": 10}
    assert conv.lines[0]["label"][0]["bottomX"] == 6 / 20


# --- Pascal VOC --------------------------------------------------------------------------------------

def _voc_xml(filename: str, w: int, h: int, objects: list[tuple]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, d, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>wrong/on/purpose</folder><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_dir(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations" / "day").mkdir(parents=True)
    (root / "Annotations" / "night").mkdir(parents=True)
    _img(root / "JPEGImages" / "day" / "001.jpg", 100, 50)
    _img(root / "JPEGImages" / "night" / "001.jpg", 40, 80)
    (root / "Annotations" / "day" / "001.xml").write_text(
        _voc_xml("001.jpg", 100, 50, [("car", 0, 10, 5, 60, 45), ("person", 1, 70, 10, 90, 40)]))
    (root / "Annotations" / "night" / "001.xml").write_text(_voc_xml("001.jpg", 40, 80, [("car", 0, 4, 8, 20, 40)]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("night/001\n")
    masks = root / "SegmentationObject"
    for sub, (w, h), boxes in (("day", (100, 50), [(10, 5, 60, 45), (70, 10, 90, 40)]), ("night", (40, 80), [(4, 8, 20, 40)])):
        arr = np.zeros((h, w), dtype=np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes, start=1):
            arr[y1:y2, x1:x2] = k
        arr[0, :] = 255  # VOC's "void" border value is not an object
        (masks / sub).mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(arr, mode="L").convert("P")
        im.save(masks / sub / "001.png")
    return root


def test_voc_sizes_subfolders_and_difficult_is_not_crowd(voc_dir, tmp_path):
    out = tmp_path / "voc.jsonl"
    conv = convert("voc", voc_dir, out)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == ["voc/JPEGImages/day/001.jpg", "voc/JPEGImages/night/001.jpg"]
    assert [x["image_details"]["width"] for x in lines] == [100, 50 - 10]
    assert lines[0]["label"] == [
        {"label": "car", "topX": 0.1, "topY": 0.1, "bottomX": 0.6, "bottomY": 0.9, "isCrowd": 0},
        {"label": "person", "topX": 0.7, "topY": 0.2, "bottomX": 0.9, "bottomY": 0.8, "isCrowd": 0}]
    assert lines[1]["label"][0] == {"label": "car", "topX": 0.1, "topY": 0.1, "bottomX": 0.5, "bottomY": 0.5,
                                    "isCrowd": 0}
    assert conv.notes == ["1 objects marked <difficult> kept as ordinary objects (not crowd); --skip-difficult "
                          "leaves them out"]
    assert validate_dataset(out, OD).report.problems == []


def test_voc_skip_difficult_and_image_set(voc_dir, tmp_path):
    conv = convert("voc", voc_dir, tmp_path / "a.jsonl", skip_difficult=True)
    assert [len(x["label"]) for x in conv.lines] == [1, 1]
    conv = convert("voc", voc_dir, tmp_path / "b.jsonl", image_set="train")
    assert [x["image_url"] for x in conv.lines] == ["voc/JPEGImages/night/001.jpg"]


def test_voc_instance_masks_become_polygons(voc_dir, tmp_path):
    out = tmp_path / "seg.jsonl"
    convert("voc", voc_dir, out, task=IS)
    ds = load_dataset(out, IS)
    car, person = ds.records[0].objects
    xs, ys = car.polygons[0][0::2], car.polygons[0][1::2]
    assert (min(xs) * 100, max(xs) * 100, min(ys) * 50, max(ys) * 50) == (10.5, 59.5, 5.5, 44.5)
    assert person.label == "person" and person.polygons


VOC_ERRORS = [
    ("bad-xml", "<annotation><filename>", "not valid XML"),
    ("no-bndbox", "<annotation><filename>001.jpg</filename><size><width>10</width><height>10</height></size>"
                  "<object><name>car</name></object></annotation>",
     "object 1 (car): <bndbox> needs numeric xmin, ymin, xmax, ymax"),
    ("no-name", "<annotation><filename>001.jpg</filename><size><width>10</width><height>10</height></size>"
                "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
     "object 1 has no <name>"),
    ("no-image", _voc_xml("002.jpg", 10, 10, []), "image not found: tried <filename> '002.jpg', 002.* (any image "
                                                    "extension) in "),
    ("inverted-box", _voc_xml("001.jpg", 10, 10, [("car", 0, 6, 1, 2, 9)]),
     "object 1 (car): <bndbox> xmin 6, ymin 1, xmax 2, ymax 9: xmax must be >= xmin and ymax >= ymin"),
]


@pytest.mark.parametrize("xml, message", [c[1:] for c in VOC_ERRORS], ids=[c[0] for c in VOC_ERRORS])
def test_voc_errors(tmp_path, xml, message):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    _img(root / "JPEGImages" / "001.jpg", 10, 10)
    (root / "Annotations" / "001.xml").write_text(xml)
    with pytest.raises(DataError) as info:
        convert("voc", root, tmp_path / "o.jsonl")
    assert f"{root / 'Annotations' / '001.xml'}: {message}" in str(info.value)


def test_voc_empty_boxes_are_left_out_with_a_note(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    _img(root / "JPEGImages" / "001.jpg", 10, 10)
    (root / "Annotations" / "001.xml").write_text(
        _voc_xml("001.jpg", 10, 10, [("car", 0, 1, 1, 5, 5), ("car", 0, 3, 2, 3, 8), ("dog", 0, 2, 4, 9, 4)]))
    out = tmp_path / "o.jsonl"
    conv = convert("voc", root, out)
    assert [o["label"] for o in conv.lines[0]["label"]] == ["car"]
    xml = root / "Annotations" / "001.xml"
    assert conv.notes == [f"2 object(s) with an empty box (xmax == xmin or ymax == ymin) left out: {xml} object 2 "
                          f"(car); {xml} object 3 (dog)"]
    assert validate_dataset(out, OD).report.ok


def test_voc_segmentation_without_masks(tmp_path, voc_dir):
    shutil.rmtree(voc_dir / "SegmentationObject")
    with pytest.raises(DataError, match="instance segmentation needs instance masks in"):
        convert("voc", voc_dir, tmp_path / "o.jsonl", task=IS)


# --- YOLO --------------------------------------------------------------------------------------------

@pytest.fixture
def yolo_dir(tmp_path):
    root = tmp_path / "yolo"
    _img(root / "images" / "train" / "a.jpg", 100, 50)
    _img(root / "images" / "train" / "b.png", 20, 20, "PNG")
    _img(root / "images" / "val" / "c.jpg", 30, 30)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.75 0.1 0.1\n\n")
    (root / "labels" / "val" / "c.txt").write_text("1 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n")
    (root / "data.yaml").write_text("path: .\nnames: {0: cat, 1: dog}\n")
    return root


def test_yolo_detection(yolo_dir, tmp_path):
    out = yolo_dir / "train.jsonl"
    conv = convert("yolo", yolo_dir, out)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == ["images/train/a.jpg", "images/train/b.png", "images/val/c.jpg"]
    a = lines[0]["label"]
    assert a[0]["label"] == "cat"
    np.testing.assert_allclose([a[0][k] for k in ("topX", "topY", "bottomX", "bottomY")], [0.4, 0.3, 0.6, 0.7])
    assert lines[1]["label"] == []
    np.testing.assert_allclose([lines[2]["label"][0][k] for k in ("topX", "topY", "bottomX", "bottomY")],
                               [0.1, 0.1, 0.4, 0.5])
    assert conv.notes == ["1 images have no label file: converted as images without objects"]
    assert validate_dataset(out, OD).report.problems == []


def test_yolo_segmentation_from_data_yaml(yolo_dir, tmp_path):
    (yolo_dir / "labels" / "train" / "a.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    out = tmp_path / "seg.jsonl"
    convert("yolo", yolo_dir / "data.yaml", out, task=IS)
    ds = load_dataset(out, IS)
    assert ds.records[0].objects[0].polygons == ((0.1, 0.1, 0.9, 0.1, 0.5, 0.9),)
    assert ds.records[2].objects[0].label == "dog"


def test_yolo_names_file_txt(yolo_dir, tmp_path):
    (yolo_dir / "data.yaml").unlink()
    (yolo_dir / "classes.txt").write_text("cat\ndog\n")
    conv = convert("yolo", yolo_dir, tmp_path / "o.jsonl")
    assert conv.classes == ["cat", "dog"]


YOLO_ERRORS = [
    ("unknown-class", "5 0.5 0.5 0.2 0.2", OD, ":1: class id 5 is not a known class (the names file"),
    ("count", "0 0.5 0.5 0.2", OD, ":1: 3 numbers after the class id; expected 4 (a box) or an even count of at least 6"),
    ("text", "cat 0.5 0.5 0.2 0.2", OD, ":1: 'cat 0.5 0.5 0.2 0.2' must be 'class x y ...' with numbers"),
    ("box-for-segmentation", "0 0.5 0.5 0.2 0.2", IS, ":1: a box (class cx cy w h) where instance segmentation needs a polygon"),
]


@pytest.mark.parametrize("text, task, message", [c[1:] for c in YOLO_ERRORS], ids=[c[0] for c in YOLO_ERRORS])
def test_yolo_errors(yolo_dir, tmp_path, text, task, message):
    (yolo_dir / "labels" / "train" / "a.txt").write_text(text + "\n")
    with pytest.raises(DataError) as info:
        convert("yolo", yolo_dir, tmp_path / "o.jsonl", task=task)
    assert f"{yolo_dir / 'labels' / 'train' / 'a.txt'}{message}" in str(info.value)


# --- class folders and CSV ---------------------------------------------------------------------------

def test_folders_keep_subfolders_so_names_never_collide(tmp_path):
    root = tmp_path / "photos"
    _img(root / "cat" / "1.jpg", 8, 8)
    _img(root / "cat" / "indoor" / "1.jpg", 8, 8)
    _img(root / "dog" / "1.png", 8, 8, "PNG")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    out = root / "train.jsonl"
    conv = convert("folders", root, out)
    assert _lines(out) == [{"image_url": "cat/1.jpg", "label": "cat"}, {"image_url": "cat/indoor/1.jpg", "label": "cat"},
                           {"image_url": "dog/1.png", "label": "dog"}]
    assert conv.notes == ["folder empty/ has no images; not a class"]
    assert validate_dataset(out, MC).report.problems == []


def test_folders_stray_images(tmp_path):
    root = tmp_path / "photos"
    _img(root / "cat" / "1.jpg", 8, 8)
    _img(root / "loose.jpg", 8, 8)
    with pytest.raises(DataError, match=r"1 images are not inside a class folder \(first: loose.jpg\)"):
        convert("folders", root, tmp_path / "o.jsonl")


def test_csv_multilabel_and_multiclass(tmp_path):
    _img(tmp_path / "imgs" / "a.jpg", 8, 8)
    _img(tmp_path / "imgs" / "b.jpg", 8, 8)
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,labels\na.jpg,can milk_bottle\nb.jpg,\n")
    out = tmp_path / "ml.jsonl"
    convert("csv", csv, out, task=ML, images_dir=tmp_path / "imgs")
    assert _lines(out) == [{"image_url": "imgs/a.jpg", "label": ["can", "milk_bottle"]},
                           {"image_url": "imgs/b.jpg", "label": []}]
    assert validate_dataset(out, ML).report.problems == []
    csv.write_text("a.jpg,can\nb.jpg,carton\n")  # no header
    conv = convert("csv", csv, tmp_path / "mc.jsonl", task=MC, images_dir=tmp_path / "imgs")
    assert [x["label"] for x in conv.lines] == ["can", "carton"]


CSV_ERRORS = [
    ("two-labels-multiclass", "a.jpg,can carton", MC, ":1: labels='can carton' must be exactly one class name"),
    ("no-label-multiclass", "a.jpg,", MC, ":1: labels='' must be exactly one class name"),
    ("three-columns", "a.jpg,can,carton", MC, ":1: 3 columns; expected 2 (filename,labels)"),
    ("empty-filename", ",can", MC, ":1: empty filename"),
]


@pytest.mark.parametrize("row, task, message", [c[1:] for c in CSV_ERRORS], ids=[c[0] for c in CSV_ERRORS])
def test_csv_errors(tmp_path, row, task, message):
    csv = tmp_path / "labels.csv"
    csv.write_text(row + "\n")
    with pytest.raises(DataError) as info:
        convert("csv", csv, tmp_path / "o.jsonl", task=task)
    assert f"{csv}{message}" in str(info.value)


def test_converter_task_checks(tmp_path, coco_dir):
    with pytest.raises(DataError, match="COCO files hold detection or segmentation labels, not image_classification"):
        convert("coco", coco_dir / "annotations.json", tmp_path / "o.jsonl", task=MC)
    with pytest.raises(DataError, match="a folder-per-class layout gives one class per image"):
        convert("folders", tmp_path, tmp_path / "o.jsonl", task=ML)


def test_export_refuses_classification(tmp_path):
    _img(tmp_path / "a.png", 8, 8, "PNG")
    (tmp_path / "d.jsonl").write_text('{"image_url": "a.png", "label": "cat"}\n')
    with pytest.raises(DataError, match="COCO export needs detection or segmentation data"):
        jsonl_to_coco(load_dataset(tmp_path / "d.jsonl", MC))


def test_export_needs_sizes(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"image_url": "a.png", "label": []}\n')
    ds = load_dataset(tmp_path / "d.jsonl", OD, options=ValidationOptions(check_files=False))
    with pytest.raises(DataError, match=r"d.jsonl:1: image size unknown; add image_details or make the image readable"):
        jsonl_to_coco(ds)


def test_mask_to_polygons_holes_are_rings():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 2:18] = True
    mask[8:12, 8:12] = False
    rings = mask_to_polygons(mask)
    assert len(rings) == 2 and all(len(r) >= 6 for r in rings)
    assert mask_to_polygons(np.zeros((4, 4), dtype=bool)) == []
