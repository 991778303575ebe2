"""Converters on datasets laid out as popular public datasets publish them: each fixture below is built
in the exact folder and file naming of the dataset it names (tiny generated images stand in for theirs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.cli import main
from automl_vision.data.convert import convert
from automl_vision.data.validate import validate_dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION


def _img(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (30, 90, 160)).save(path)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _box(obj: dict) -> list[float]:
    return [obj[k] for k in ("topX", "topY", "bottomX", "bottomY")]


def _voc(folder: str | None, filename: str | None, path: str | None, w: int, h: int,
         objects: list[tuple[str, int, int, int, int]], database: str = "Unknown") -> str:
    """An XML written as LabelImg, Roboflow and the VOC devkit write them (tab-indented, one <object> each)."""
    parts = ["<annotation>"]
    if folder is not None:
        parts.append(f"\t<folder>{folder}</folder>")
    if filename is not None:
        parts.append(f"\t<filename>{filename}</filename>")
    if path is not None:
        parts.append(f"\t<path>{path}</path>")
    parts.append(f"\t<source>\n\t\t<database>{database}</database>\n\t</source>")
    parts.append(f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>")
    parts.append("\t<segmented>0</segmented>")
    for name, x1, y1, x2, y2 in objects:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>"
                     f"\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>"
                     f"\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>")
    parts.append("</annotation>\n")
    return "\n".join(parts)


# --- Pascal VOC-style --------------------------------------------------------------------------------

def test_voc_kaggle_face_mask_detection_lowercase_annotations_and_images(tmp_path):
    """Kaggle's "Face Mask Detection" (andrewmvd): annotations/maksssksksss<N>.xml and images/maksssksksss<N>.png,
    <folder>images</folder>, <filename> only, no <path>."""
    root = tmp_path / "face-mask-detection"
    for n, (w, h) in enumerate([(40, 20), (30, 30)]):
        _img(root / "images" / f"maksssksksss{n}.png", w, h)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"maksssksksss{n}.xml").write_text(
            _voc("images", f"maksssksksss{n}.png", None, w, h,
                 [("with_mask", 4, 2, 20, 10), ("without_mask", 0, 0, 10, 10)]))
    out = root / "train.jsonl"
    conv = convert("voc", root, out)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == ["images/maksssksksss0.png", "images/maksssksksss1.png"]
    assert _box(lines[0]["label"][0]) == [0.1, 0.1, 0.5, 0.5]
    assert conv.classes == ["with_mask", "without_mask"]
    assert validate_dataset(out, OD).report.problems == []


def test_voc_fridge_objects_path_relative_to_the_xml(tmp_path):
    """The original product's own sample odFridgeObjects: annotations/<N>.xml + images/<N>.jpg,
    <folder>images</folder><filename>10.jpg</filename><path>../images/10.jpg</path>. When the image is
    not where <filename> says, <path> (relative to the XML) still finds it."""
    root = tmp_path / "odFridgeObjects"
    _img(root / "images" / "10.jpg", 50, 100)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "10.xml").write_text(
        _voc("images", "10.jpg", "../images/10.jpg", 50, 100,
             [("carton", 5, 10, 25, 60), ("milk_bottle", 10, 20, 45, 90)]))
    out = tmp_path / "fridge.jsonl"
    convert("voc", root, out)
    assert [x["image_url"] for x in _lines(out)] == ["odFridgeObjects/images/10.jpg"]
    # the images moved to another folder, named only by <path>
    (root / "images").rename(root / "photos")
    (root / "annotations" / "10.xml").write_text(
        _voc("photos", "IMG_10.jpg", "../photos/10.jpg", 50, 100, [("carton", 5, 10, 25, 60)]))
    conv = convert("voc", root, out)
    assert [x["image_url"] for x in conv.lines] == ["odFridgeObjects/photos/10.jpg"]
    assert validate_dataset(out, OD).report.problems == []


def test_voc_roboflow_export_images_beside_their_xml(tmp_path):
    """Roboflow's "Pascal VOC XML" export: train/, valid/, test/ each holding <name>_jpg.rf.<hash>.jpg beside
    <name>_jpg.rf.<hash>.xml; <folder></folder>, <path> = the file name, <database>roboflow.ai</database>."""
    root = tmp_path / "BCCD.v3-raw.voc"
    names = {"train": "BloodImage_00001_jpg.rf.1a2b3c", "valid": "BloodImage_00007_jpg.rf.4d5e6f"}
    for split, stem in names.items():
        _img(root / split / f"{stem}.jpg", 64, 48)
        (root / split / f"{stem}.xml").write_text(
            _voc("", f"{stem}.jpg", f"{stem}.jpg", 64, 48, [("RBC", 8, 4, 40, 36)], database="roboflow.ai"))
    (root / "README.roboflow.txt").write_text("exported via roboflow.com\n")
    out = root / "all.jsonl"
    convert("voc", root, out)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == [f"train/{names['train']}.jpg", f"valid/{names['valid']}.jpg"]
    assert _box(lines[1]["label"][0]) == [8 / 64, 4 / 48, 40 / 64, 36 / 48]
    assert validate_dataset(out, OD).report.problems == []


def test_voc_labelimg_absolute_windows_path_and_images_dir(tmp_path, capsys):
    """LabelImg saves <path> as the annotator's absolute path (C:\\Users\\...): the XML files given as the
    source folder, the images in --images-dir, found by <filename> or by the last part of <path>."""
    xmls, photos = tmp_path / "labels_xml", tmp_path / "photos"
    _img(photos / "dog1.jpg", 20, 20)
    _img(photos / "dog2.jpg", 20, 40)
    xmls.mkdir()
    (xmls / "dog1.xml").write_text(_voc("dogs", "dog1.jpg", r"C:\Users\ann\Pictures\dogs\dog1.jpg", 20, 20,
                                        [("dog", 2, 2, 12, 12)]))
    (xmls / "dog2.xml").write_text(_voc("dogs", "DSC_0002.JPG", r"C:\Users\ann\Pictures\dogs\dog2.jpg", 20, 40,
                                        [("dog", 2, 4, 12, 20)]))
    out = tmp_path / "dogs.jsonl"
    code = main(["data", "convert", "--from", "voc", str(xmls), "--images-dir", str(photos), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert [x["image_url"] for x in _lines(out)] == ["photos/dog1.jpg", "photos/dog2.jpg"]
    assert validate_dataset(out, OD).report.problems == []


def test_voc_missing_image_names_the_xml_the_names_tried_and_the_folders(tmp_path, capsys):
    root = tmp_path / "VOC2012"
    _img(root / "JPEGImages" / "2007_000027.jpg", 10, 10)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "2007_000027.xml").write_text(
        _voc("VOC2012", "2007_000027.jpg", None, 10, 10, [("person", 1, 1, 5, 5)]))
    xml = root / "Annotations" / "2007_000032.xml"
    xml.write_text(_voc("VOC2012", "2007_000032.jpg", "/data/VOC2012/JPEGImages/2007_000032.jpg", 10, 10,
                        [("aeroplane", 1, 1, 5, 5)]))
    out = tmp_path / "o.jsonl"
    code = main(["data", "convert", "--from", "voc", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"{xml}: image not found: tried <filename> '2007_000032.jpg', <path> "
            f"'/data/VOC2012/JPEGImages/2007_000032.jpg', 2007_000032.* (any image extension) in "
            f"{root / 'JPEGImages'}, {root / 'Annotations'}; pass --images-dir if the images are elsewhere") in err
    assert not out.exists()


# --- YOLO (ultralytics data YAMLs) -------------------------------------------------------------------

def _yolo_image(root: Path, rel: str, w: int, h: int, label_lines: list[str] | None) -> None:
    image = _img(root / rel, w, h)
    if label_lines is not None:
        head, tail = str(image).rsplit("/images/", 1)
        label = Path(head + "/labels/" + tail).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(x + "\n" for x in label_lines))


@pytest.fixture
def coco8(tmp_path):
    """ultralytics' coco8: datasets/coco8/images/{train,val}/<12-digit id>.jpg with labels/{train,val}/*.txt,
    described by coco8.yaml (path: coco8, train: images/train, val: images/val, test: empty, names {id: name})."""
    datasets = tmp_path / "datasets"
    root = datasets / "coco8"
    _yolo_image(root, "images/train/000000000009.jpg", 64, 48, ["45 0.5 0.5 0.5 0.5", "50 0.25 0.25 0.1 0.1"])
    _yolo_image(root, "images/train/000000000025.jpg", 32, 32, ["23 0.5 0.5 1 1"])
    _yolo_image(root, "images/val/000000000036.jpg", 48, 64, ["0 0.5 0.5 0.2 0.4"])
    _yolo_image(root, "images/val/000000000042.jpg", 40, 40, None)  # an image without objects
    (root / "LICENSE").write_text("AGPL-3.0\n")
    names = {0: "person", 23: "giraffe", 45: "bowl", 50: "broccoli"}
    full = "\n".join(f"  {i}: {names.get(i, f'class{i}')}" for i in range(80))
    (datasets / "coco8.yaml").write_text(
        "# COCO8 dataset (first 8 images from COCO train2017) by Ultralytics\n"
        f"path: coco8 # dataset root dir\ntrain: images/train # train images (relative to 'path') 4 images\n"
        f"val: images/val # val images (relative to 'path') 4 images\ntest: # test images (optional)\n\n"
        f"# Classes\nnames:\n{full}\n\n"
        "download: https://github.com/ultralytics/assets/releases/download/v0.0.0/coco8.zip\n")
    return datasets


def test_yolo_coco8_yaml_splits_and_names_dict(coco8, tmp_path, capsys):
    out = coco8 / "coco8.jsonl"
    conv = convert("yolo", coco8 / "coco8.yaml", out)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == [
        "coco8/images/train/000000000009.jpg", "coco8/images/train/000000000025.jpg",
        "coco8/images/val/000000000036.jpg", "coco8/images/val/000000000042.jpg"]
    assert [[o["label"] for o in x["label"]] for x in lines] == [["bowl", "broccoli"], ["giraffe"], ["person"], []]
    np.testing.assert_allclose(_box(lines[0]["label"][0]), [0.25, 0.25, 0.75, 0.75])
    assert f"images from {coco8 / 'coco8.yaml'}: train 2, val 2" in conv.notes[0]
    assert validate_dataset(out, OD).report.problems == []
    # one split only, through the CLI
    val = tmp_path / "val.jsonl"
    assert main(["data", "convert", "--from", "yolo", str(coco8 / "coco8.yaml"), "--image-set", "val",
                 "--out", str(val)]) == 0
    assert [x["image_url"].rsplit("/", 1)[1] for x in _lines(val)] == ["000000000036.jpg", "000000000042.jpg"]
    assert main(["data", "convert", "--from", "yolo", str(coco8 / "coco8.yaml"), "--image-set", "test",
                 "--out", str(val)]) == 2
    assert "no test: entry; this YAML lists: train, val" in capsys.readouterr().err


def test_yolo_roboflow_export_dot_dot_paths_and_names_list(tmp_path):
    """Roboflow's YOLOv8 export: data.yaml (no path:) with train: ../train/images, val: ../valid/images,
    test: ../test/images, nc and a names list; the folders are train/images + train/labels beside it,
    and ultralytics drops the leading ../ when the path does not exist."""
    root = tmp_path / "Hard-Hat-Workers.v2-raw.yolov8"
    _yolo_image(root, "train/images/000001_jpg.rf.aa11.jpg", 40, 20, ["1 0.5 0.5 0.5 0.5"])
    _yolo_image(root, "valid/images/000002_jpg.rf.bb22.jpg", 20, 20, ["0 0.5 0.5 0.2 0.2"])
    _yolo_image(root, "test/images/000003_jpg.rf.cc33.jpg", 20, 20, ["2 0.5 0.5 0.2 0.2"])
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                    "nc: 3\nnames: ['head', 'helmet', 'person']\n\n"
                                    "roboflow:\n  workspace: joseph-nelson\n")
    out = tmp_path / "hardhat.jsonl"
    conv = convert("yolo", root, out)  # the folder: its data.yaml is used
    assert [x["label"][0]["label"] for x in conv.lines] == ["helmet", "head", "person"]
    assert conv.lines[0]["image_url"].endswith("train/images/000001_jpg.rf.aa11.jpg")
    assert validate_dataset(out, OD).report.problems == []
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 4\n"
                                    "names: ['head', 'helmet', 'person']\n")
    with pytest.raises(DataError, match=r"data.yaml: nc: 4 but names has 3 classes; they must match"):
        convert("yolo", root / "data.yaml", out)


def test_yolo_voc_yaml_list_of_folders_and_coco_txt_listing(tmp_path):
    """ultralytics' VOC.yaml lists several folders per split (train: [images/train2012, images/train2007, ...]);
    its coco.yaml names txt files (train: train2017.txt) whose lines are ./images/train2017/<id>.jpg,
    relative to the txt file."""
    voc = tmp_path / "VOC"
    _yolo_image(voc, "images/train2012/2008_000008.jpg", 20, 20, ["14 0.5 0.5 0.4 0.4"])
    _yolo_image(voc, "images/train2007/000005.jpg", 20, 20, ["7 0.5 0.5 0.4 0.4"])
    _yolo_image(voc, "images/test2007/000001.jpg", 20, 20, ["11 0.5 0.5 0.4 0.4"])
    voc_names = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
                 "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    (tmp_path / "VOC.yaml").write_text(
        f"path: {voc}\ntrain: # train images (relative to 'path')  16551 images\n  - images/train2012\n"
        "  - images/train2007\nval: # val images\n  - images/test2007\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(voc_names)))
    conv = convert("yolo", tmp_path / "VOC.yaml", tmp_path / "voc.jsonl", image_set="train")
    assert [x["label"][0]["label"] for x in conv.lines] == ["cat", "person"]  # a split's images sorted, as ultralytics

    coco = tmp_path / "coco"
    _yolo_image(coco, "images/train2017/000000000009.jpg", 32, 32, ["0 0.5 0.5 0.5 0.5 "])
    _yolo_image(coco, "images/train2017/000000000025.jpg", 32, 32, ["1 0.5 0.5 0.5 0.5"])
    _yolo_image(coco, "images/train2017/000000000030.jpg", 32, 32, ["1 0.5 0.5 0.5 0.5"])  # not listed
    (coco / "train2017.txt").write_text("./images/train2017/000000000009.jpg\n./images/train2017/000000000025.jpg\n")
    (tmp_path / "coco.yaml").write_text(f"path: {coco}\ntrain: train2017.txt\nnames:\n  0: person\n  1: bicycle\n")
    out = coco / "train.jsonl"
    conv = convert("yolo", tmp_path / "coco.yaml", out)
    assert [x["image_url"] for x in conv.lines] == ["images/train2017/000000000009.jpg",
                                                    "images/train2017/000000000025.jpg"]
    assert validate_dataset(out, OD).report.problems == []
    (coco / "train2017.txt").write_text("./images/train2017/000000000009.jpg\n./images/train2017/000000999999.jpg\n")
    with pytest.raises(DataError) as info:
        convert("yolo", tmp_path / "coco.yaml", out)
    assert (f"{coco / 'train2017.txt'}:2: image './images/train2017/000000999999.jpg' not found at "
            f"{coco / 'images/train2017/000000999999.jpg'}") in str(info.value)


def test_yolo_labels_replace_only_the_last_images_folder(tmp_path):
    """A dataset kept under a folder itself named images/ (~/images/datasets/<set>/images/train/x.jpg): only
    the last /images/ becomes /labels/, as ultralytics' img2label_paths does."""
    root = tmp_path / "images" / "datasets" / "bikes"
    _yolo_image(root, "images/train/a.jpg", 20, 20, ["0 0.5 0.5 0.5 0.5"])
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [bike]\n")
    conv = convert("yolo", root / "data.yaml", tmp_path / "o.jsonl")
    assert len(conv.lines) == 1 and conv.lines[0]["label"][0]["label"] == "bike"
    assert conv.notes == [f"images from {root / 'data.yaml'}: train 1, val 0; --image-set train (or val, test) "
                          "converts one split"]


# --- COCO --------------------------------------------------------------------------------------------

@pytest.fixture
def coco2017(tmp_path):
    """COCO 2017 as downloaded: coco/annotations/instances_val2017.json and coco/val2017/<12-digit id>.jpg,
    file_name without a folder."""
    root = tmp_path / "coco"
    _img(root / "val2017" / "000000000139.jpg", 64, 32)
    _img(root / "val2017" / "000000000285.jpg", 32, 64)
    coco = {"info": {"description": "COCO 2017 Dataset"}, "licenses": [],
            "images": [{"license": 2, "file_name": "000000000139.jpg", "height": 32, "width": 64, "id": 139},
                       {"license": 4, "file_name": "000000000285.jpg", "height": 64, "width": 32, "id": 285}],
            "annotations": [{"segmentation": [[8, 4, 40, 4, 40, 28]], "area": 100.0, "iscrowd": 0, "image_id": 139,
                             "bbox": [8, 4, 32, 24], "category_id": 64, "id": 26547},
                            {"segmentation": [[4, 8, 28, 8, 28, 56]], "area": 100.0, "iscrowd": 0, "image_id": 285,
                             "bbox": [4, 8, 24, 48], "category_id": 23, "id": 1409}],
            "categories": [{"supercategory": "animal", "id": 23, "name": "bear"},
                           {"supercategory": "furniture", "id": 64, "name": "potted plant"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return root


def test_coco2017_images_found_beside_the_annotations_folder(coco2017, tmp_path):
    out = coco2017 / "val.jsonl"
    convert("coco", coco2017 / "annotations" / "instances_val2017.json", out, task=IS)
    lines = _lines(out)
    assert [x["image_url"] for x in lines] == ["val2017/000000000139.jpg", "val2017/000000000285.jpg"]
    assert [x["label"][0]["label"] for x in lines] == ["potted plant", "bear"]
    assert validate_dataset(out, IS).report.problems == []


def test_coco_file_names_with_a_split_folder_under_images_dir(coco2017, tmp_path):
    """file_name with its split folder (train2017/000000000009.jpg, as many COCO-style exports write it):
    relative to --images-dir, or to its parent when --images-dir is that split folder itself."""
    path = coco2017 / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["file_name"] = "val2017/" + im["file_name"]
    path.write_text(json.dumps(data))
    for images_dir in (coco2017, coco2017 / "val2017"):
        out = tmp_path / "out.jsonl"
        conv = convert("coco", path, out, images_dir=images_dir)
        assert [x["image_url"] for x in conv.lines] == ["coco/val2017/000000000139.jpg",
                                                        "coco/val2017/000000000285.jpg"]
        assert validate_dataset(out, OD).report.problems == []
    with pytest.raises(DataError) as info:
        convert("coco", path, tmp_path / "o.jsonl", images_dir=tmp_path)
    assert (f"{path}: images[0] (val2017/000000000139.jpg): image not found; looked in {tmp_path}, "
            f"{tmp_path.parent}") in str(info.value)
    assert not (tmp_path / "o.jsonl").exists()
