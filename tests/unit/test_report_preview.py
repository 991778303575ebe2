"""The augmentation preview: the trainer's own transforms, drawn boxes and masks on the right pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from browser_support import BACKGROUND, make_box_dataset
from kfp.dsl import HTML
from PIL import Image

from automl_vision.cli import main
from automl_vision.errors import ConfigError, DataError
from automl_vision.pipeline.components import preview
from automl_vision.report.draw import BOX_WIDTH, colour
from automl_vision.report.preview import preview_rows, supported, write_preview
from automl_vision.spec.tasks import ImageTask

BOX = (22, 14, 61, 47)  # the white square of make_box_dataset, in its 96 x 72 images
SQUARE = colour(0)  # the only class, so the first colour


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _is(pixels: np.ndarray, rgb, tol: int = 8) -> np.ndarray:
    return (np.abs(pixels - np.asarray(rgb)) <= tol).all(-1)


def _object_bbox(tile: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive bbox of the object's pixels: rows and columns where ``mask`` covers much of the object
    (the class tag's white letters are too sparse to count)."""
    rows, cols = mask.sum(1), mask.sum(0)
    if rows.max(initial=0) < 4:
        return None
    r = np.flatnonzero(rows >= rows.max() * 0.5)
    c = np.flatnonzero(cols >= cols.max() * 0.5)
    return int(c[0]), int(r[0]), int(c[-1]), int(r[-1])


@pytest.mark.parametrize("task, multilabel", [(ImageTask.IMAGE_CLASSIFICATION, False),
                                               (ImageTask.IMAGE_CLASSIFICATION_MULTILABEL, True)])
def test_classification_samples_are_the_train_transform_output(tmp_path, make_dataset, task, multilabel):
    data = make_dataset(tmp_path / "d", n_per_class=3, classes=("red", "green", "blue"), multilabel=multilabel)
    chosen, rows, hp, _ = preview_rows(data, task, count=6, draws=3, model_name="resnet18",
                                       hyperparameters={"train_crop_size": 40})
    assert hp["train_crop_size"] == 40 and len(rows) == 2 and [len(r) for r in rows] == [4, 4]
    # one image of each of two classes first (classes take turns)
    assert len({item.annotations.labels[0] for item in chosen}) == 2
    for item, row in zip(chosen, rows):
        original, *draws = row
        assert original.image.size == (24, 24)  # the file as it is
        for tile in draws:
            assert tile.image.size == (40, 40)  # RandomResizedCrop(train_crop_size)
            assert tile.annotations.labels == list(item.annotations.labels)
        assert len({t.image.tobytes() for t in draws}) == 3  # independent draws


def test_preview_is_seeded_and_leaves_the_global_rng_alone(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", n_per_class=2)
    before = torch.random.get_rng_state()
    a = preview_rows(data, "image_classification", count=4, model_name="mobilenetv2")[1]
    assert torch.equal(before, torch.random.get_rng_state())
    b = preview_rows(data, "image_classification", count=4, model_name="mobilenetv2")[1]
    c = preview_rows(data, "image_classification", count=4, model_name="mobilenetv2", hyperparameters={"seed": 1})[1]
    pictures = [[t.image.tobytes() for t in row[1:]] for row in a]
    assert pictures == [[t.image.tobytes() for t in row[1:]] for row in b]
    assert pictures != [[t.image.tobytes() for t in row[1:]] for row in c]


def test_detection_boxes_land_on_the_object(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=3)
    result = write_preview(data, "image_object_detection", tmp_path / "out", count=12, draws=4,
                           model_name="fasterrcnn_resnet18_fpn")
    meta = json.loads(result.json.read_text())
    pixels = _pixels(result.png)
    assert (meta["images"], meta["samples"]) == (3, 12)
    checked = 0
    for row in meta["rows"]:
        for t in row["tiles"]:
            tile = pixels[t["y"]:t["y"] + t["height"], t["x"]:t["x"] + t["width"]]
            assert len(t["boxes"]) == 1 and t["labels"] == ["square"]
            x0, y0, x1, y1 = (v - o for v, o in zip(t["boxes"][0], (t["x"], t["y"], t["x"], t["y"])))
            # the white square, minus the outline drawn over its border, is the box's inside
            inner = _object_bbox(tile, _is(tile, (255, 255, 255), tol=0))
            assert inner is not None
            assert abs(inner[0] - (x0 + BOX_WIDTH)) <= 1 and abs(inner[1] - (y0 + BOX_WIDTH)) <= 1, (t, inner)
            assert abs(inner[2] - (x1 - BOX_WIDTH)) <= 1 and abs(inner[3] - (y1 - BOX_WIDTH)) <= 1, (t, inner)
            # and the outline is drawn there: the class colour on the box's left, right and bottom edges
            mid_y, mid_x = (y0 + y1) // 2, (x0 + x1) // 2
            for y, x in ((mid_y, x0), (mid_y, x1), (y1, mid_x), (mid_y, x0 + 1), (mid_y, x1 - 1)):
                assert _is(tile[y, x], SQUARE, tol=0), (t, y, x, tile[y, x])
            if x0 > 0:
                assert not _is(tile[mid_y, x0 - 1], SQUARE, tol=0)
            if t["kind"] == "original":  # known exactly: the file's box at the tile's scale
                s = t["width"] / 96
                assert [x0, y0, x1, y1] == [round(BOX[0] * s), round(BOX[1] * s), round(BOX[2] * s) - 1,
                                            round(BOX[3] * s) - 1]
            checked += 1
    assert checked == 15
    page = result.html.read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")


def test_segmentation_masks_cover_the_object(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2, segmentation=True)
    result = write_preview(data, "image_instance_segmentation", tmp_path / "out", count=6, draws=3,
                           model_name="maskrcnn_resnet18_fpn")
    meta = json.loads(result.json.read_text())
    pixels = _pixels(result.png)
    tinted = np.round(0.55 * np.array([255, 255, 255]) + 0.45 * np.array(SQUARE))  # white under the mask colour
    for row in meta["rows"]:
        for t in row["tiles"]:
            tile = pixels[t["y"]:t["y"] + t["height"], t["x"]:t["x"] + t["width"]]
            x0, y0, x1, y1 = (v - o for v, o in zip(t["boxes"][0], (t["x"], t["y"], t["x"], t["y"])))
            inside = tile[y0 + 3:y1 - 2, x0 + 3:x1 - 2]
            assert _is(inside, tinted, tol=2).mean() > 0.98, t  # the mask lies on the object
            assert not _is(tile, (255, 255, 255), tol=0).reshape(-1).sum() > 60  # no untinted object left
            # outside the box: background or zoom-out canvas, never the mask's tint
            outside = np.ones(tile.shape[:2], dtype=bool)
            outside[max(0, y0 - 14):y1 + 2, max(0, x0 - 2):x1 + 2] = False  # box, outline and class tag
            assert not _is(tile[outside], tinted, tol=2).any()


@pytest.mark.slow
def test_yolo_mosaic_boxes_enclose_bright_objects(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=4)
    result = write_preview(data, "image_object_detection", tmp_path / "out", count=4, draws=4,
                           model_name="yolov5", hyperparameters={"img_size": 160})
    meta = json.loads(result.json.read_text())
    pixels = _pixels(result.png)
    gaps = []
    for t in meta["rows"][0]["tiles"][1:]:
        assert (t["width"], t["height"]) == (192, 192)  # img_size 160 shown at 192
        tile = pixels[t["y"]:t["y"] + t["height"], t["x"]:t["x"] + t["width"]].mean(-1)
        assert t["boxes"], "a mosaic of four images with one object each holds objects"
        for x0, y0, x1, y1 in ((b[0] - t["x"], b[1] - t["y"], b[2] - t["x"], b[3] - t["y"]) for b in t["boxes"]):
            if x1 - x0 < 10 or y1 - y0 < 10:
                continue
            inside = tile[y0 + 3:y1 - 2, x0 + 3:x1 - 2].mean()
            ring = np.concatenate([tile[y0 + 3:y1 - 2, max(0, x0 - 4):max(0, x0 - 1)].ravel(),
                                   tile[y0 + 3:y1 - 2, x1 + 2:x1 + 5].ravel(), tile[y1 + 2:y1 + 5, x0:x1].ravel()])
            if ring.size:
                gaps.append(inside - ring.mean())
    assert gaps and float(np.median(gaps)) > 60, gaps


def test_every_task_has_a_preview_for_its_trained_models():
    assert supported(ImageTask.IMAGE_CLASSIFICATION) == list(ImageTask.IMAGE_CLASSIFICATION.models)
    assert supported(ImageTask.IMAGE_CLASSIFICATION_MULTILABEL) == list(ImageTask.IMAGE_CLASSIFICATION_MULTILABEL.models)
    assert supported(ImageTask.IMAGE_OBJECT_DETECTION) == list(ImageTask.IMAGE_OBJECT_DETECTION.models)
    assert supported(ImageTask.IMAGE_INSTANCE_SEGMENTATION) == list(ImageTask.IMAGE_INSTANCE_SEGMENTATION.models)


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count=0 must be >= 1"),
    ({"draws": 0}, "draws=0 must be >= 1"),
    ({"count": 0, "model_name": "yolov5"}, "2 problems:"),
    ({"model_name": "yolov5"}, "model_name='yolov5' is not a model for image_classification"),
    ({"task": "image_segmentation"}, "task='image_segmentation' is not a task"),
    ({"hyperparameters": {"train_crop_size": 0}}, "train_crop_size"),
    ({"hyperparameters": {"min_size": 600}}, "min_size does not apply to task image_classification"),
])
def test_bad_requests_name_the_problem(tmp_path, make_dataset, kwargs, message):
    data = make_dataset(tmp_path / "d", n_per_class=2)
    kwargs = {"task": "image_classification", **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preview_rows(data, kwargs.pop("task"), **kwargs)


def test_missing_data_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing.jsonl"):
        preview_rows(tmp_path / "nothing.jsonl", "image_classification")


def test_preview_command(tmp_path, make_dataset, capsys):
    data = make_dataset(tmp_path / "d", n_per_class=3)
    out = tmp_path / "preview"
    code = main(["preview", str(data), "--task", "image_classification", "--out", str(out), "--count", "4",
                 "--model_name", "resnet18", "--train_crop_size", "32"])
    assert code == 0
    assert "preview of 4 augmented samples from 1 images" in capsys.readouterr().out
    assert json.loads((out / "preview.json").read_text())["rows"][0]["tiles"][1]["width"] == 192
    assert _pixels(out / "preview.png").shape[1] == 10 + 5 * (192 + 10)
    assert main(["preview", str(data), "--task", "image_classification", "--out", str(out), "--count", "0"]) == 2
    assert "count=0 must be >= 1" in capsys.readouterr().err


def test_background_is_what_the_synthetic_data_says(tmp_path):
    # guards the tests above: the object is white and the only white thing in the image
    data = make_box_dataset(tmp_path / "d", n=1)
    px = _pixels(data.parent / "images" / "box_00.png")
    assert _is(px[BOX[1]:BOX[3], BOX[0]:BOX[2]], (255, 255, 255), tol=0).all()
    assert _is(px, BACKGROUND, tol=0).sum() == px.shape[0] * px.shape[1] - (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])


# --- a job's preview: its own models, one per model family ----------------------------------------

FRCNN = {"model_name": {"type": "choice", "values": ["fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn"]},
         "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.01}}


def test_a_detection_jobs_preview_shows_its_rcnn_with_the_jobs_min_and_max_size(tmp_path):
    # the job trains only Faster R-CNN models: its R-CNN settings must not be checked against yolov5
    data = make_box_dataset(tmp_path / "d", n=2)
    result = write_preview(data, "image_object_detection", tmp_path / "out", count=4, draws=2,
                           hyperparameters={"min_size": 64, "max_size": 96}, search_space=[FRCNN])
    assert result.models == ("fasterrcnn_resnet18_fpn",)  # one per family: the 34 trains through the same transform
    meta = json.loads(result.json.read_text())
    assert meta["models"] == ["fasterrcnn_resnet18_fpn"]
    assert {r["model_name"] for r in meta["rows"]} == {"fasterrcnn_resnet18_fpn"}
    assert "min_size=64 (long side at most max_size=96)" in meta["transform"]
    assert "fasterrcnn_resnet18_fpn" in result.html.read_text()


def test_a_jobs_preview_has_a_section_per_model_family_with_the_values_its_entry_fixes(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2)
    space = [{**FRCNN, "min_size": {"type": "choice", "values": [72]}},
             {"model_name": {"type": "choice", "values": ["retinanet_resnet50_fpn"]}},  # same family as R-CNN
             {"model_name": {"type": "choice", "values": ["yolov5"]}, "img_size": {"type": "choice", "values": [96]}}]
    result = write_preview(data, "image_object_detection", tmp_path / "out", count=2, draws=2, search_space=space)
    assert result.models == ("fasterrcnn_resnet18_fpn", "yolov5") and result.samples == 4
    meta = json.loads(result.json.read_text())
    assert [r["model_name"] for r in meta["rows"]] == ["fasterrcnn_resnet18_fpn", "yolov5"]
    assert "min_size=72" in meta["transforms"]["fasterrcnn_resnet18_fpn"]
    assert "img_size=96" in meta["transforms"]["yolov5"]
    page = result.html.read_text()
    assert 'id="preview-grid"' in page and 'id="preview-grid-1"' in page
    assert page.count("<h3>The train-time transform</h3>") == 2


def test_a_tiling_jobs_preview_draws_the_tiles_the_trainer_trains_on(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=1)
    common = dict(count=3, draws=3)
    plain = preview_rows(data, "image_object_detection", model_name="fasterrcnn_resnet18_fpn", **common)
    tiled = preview_rows(data, "image_object_detection", model_name="fasterrcnn_resnet18_fpn",
                         hyperparameters={"tile_grid_size": "2x1"}, **common)
    (_, plain_whole, *plain_rest), = plain[1]
    (_, tiled_whole, *tiled_rest), = tiled[1]
    assert tiled_whole.image.tobytes() == plain_whole.image.tobytes()  # draw 1: the whole image, same draw
    # draws 2 and 3: the image's two tiles, narrower than the whole image before augmentation
    assert all(a.image.tobytes() != b.image.tobytes() for a, b in zip(plain_rest, tiled_rest))
    assert "tile_grid_size=2x1" in tiled[3].description and "3 training samples" in tiled[3].description
    result = write_preview(data, "image_object_detection", tmp_path / "out", count=3, draws=3,
                           search_space=[{"model_name": "fasterrcnn_resnet18_fpn", "tile_grid_size": "2x1"}])
    assert "tile_grid_size=2x1" in json.loads(result.json.read_text())["transform"]


def test_an_instance_segmentation_jobs_preview(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2, segmentation=True)
    result = write_preview(data, "image_instance_segmentation", tmp_path / "out", count=2, draws=2,
                           hyperparameters={"min_size": 64, "max_size": 96}, search_space=[])
    assert result.models == ("maskrcnn_resnet50_fpn",)  # no search space: the task's default model


@pytest.mark.parametrize("kwargs, message", [
    ({"search_space": [{"model_name": {"type": "choice", "values": ["yolov5"]}}],
      "hyperparameters": {"min_size": 600}}, "min_size does not apply to model yolov5"),
    ({"search_space": [FRCNN], "model_name": "yolov5"}, "give model_name or search_space, not both"),
])
def test_a_jobs_preview_refuses_what_the_job_would(tmp_path, kwargs, message):
    data = make_box_dataset(tmp_path / "d", n=1)
    with pytest.raises(ConfigError, match=message):
        write_preview(data, "image_object_detection", tmp_path / "out", **kwargs)


def test_the_preview_step_shows_the_jobs_models(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2)
    page = HTML(uri=str(tmp_path / "preview"))
    preview.python_func(task="image_object_detection", training_data=str(data), preview=page, count=2,
                        training_parameters={"min_size": 64, "max_size": 96}, search_space=[FRCNN])
    text = (tmp_path / "preview").read_text()
    assert "fasterrcnn_resnet18_fpn" in text and "min_size=64" in text and "yolov5" not in text
