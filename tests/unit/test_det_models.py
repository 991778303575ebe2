"""Detection and segmentation models: registry, one training step each, freezing, local-only
pretrained weights, inference settings, the augmentation and the yolov5 settings mapping."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torchvision

from automl_vision.errors import ConfigError
from automl_vision.models.detection import (DetectorSettings, apply_inference_settings, build_detector,
                                            predict_tensors, scoring_output)
from automl_vision.models.registry import freeze_layers, get_entry, registered_models
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.catalogue import FPN_GROUPS, MODELS
from automl_vision.spec.tasks import DETECTION_MODELS, SEGMENTATION_MODELS, TORCHVISION_DETECTORS, ImageTask
from automl_vision.training.detection import train_step
from automl_vision.training.detection_common import crop_around_boxes, hflip, zoom_out
from weights_testdata import publish_torchvision, torch_bytes

OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION
SMALL = DetectorSettings(min_size=64, max_size=96, box_score_thresh=0.0)


@pytest.fixture
def one_thread():
    # Two small CPU cores: one thread avoids oversubscription when other processes run.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_spec_model_is_registered():
    assert set(registered_models(OD)) == set(DETECTION_MODELS)
    assert set(registered_models(IS)) == set(SEGMENTATION_MODELS)
    assert len(DETECTION_MODELS) == 7 and len(SEGMENTATION_MODELS) == 5
    for name in TORCHVISION_DETECTORS:
        assert get_entry(name, OD if name in DETECTION_MODELS else IS).layer_groups[0] == (
            "backbone.body.conv1.", "backbone.body.bn1.")
    assert get_entry("yolov5", OD).layer_groups == tuple((f"model.{i}.",) for i in range(10))


def test_segmentation_models_not_offered_for_detection():
    with pytest.raises(ConfigError, match="model_name='maskrcnn_resnet50_fpn' is not available for image_object_detection"):
        get_entry("maskrcnn_resnet50_fpn", OD)


def _targets(masks: bool):
    out = []
    for box in ([8.0, 10, 40, 44], [20.0, 16, 56, 52]):
        t = {"boxes": torch.tensor([box]), "labels": torch.tensor([1])}
        if masks:
            m = torch.zeros(1, 64, 80, dtype=torch.uint8)
            m[0, int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 1
            t["masks"] = m
        out.append(t)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_DETECTORS)
def test_builds_and_trains_one_step(name, one_thread):
    torch.manual_seed(0)
    task = IS if name in SEGMENTATION_MODELS else OD
    model = get_entry(name, task).builder(2, pretrained=False, settings=SMALL)
    if hasattr(model, "roi_heads"):  # fewer sampled regions: the same step, cheaper on a CPU
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.train()
    images = [torch.rand(3, 64, 80) for _ in range(2)]
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss = train_step(model, images, _targets(task is IS), scaler, torch.device("cpu"))
    assert math.isfinite(float(loss))
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    (pred,) = predict_tensors(model, images[:1], SMALL, with_masks=task is IS)
    assert pred.boxes.shape[1] == 4 and ((pred.labels >= 0) & (pred.labels < 2)).all()
    assert (pred.masks is not None) == (task is IS)


def test_yolov5_builds_every_size_from_yaml():
    from automl_vision.models.yolo import build_yolo, yaml_name

    sizes = MODELS["yolov5"].sizes
    assert [yaml_name(s) for s in sizes] == ["yolov5su.yaml", "yolov5mu.yaml", "yolov5lu.yaml", "yolov5xu.yaml"]
    model = build_yolo(3, pretrained=False, model_size="small")
    assert model.yaml["nc"] == 3
    model.train()
    out = model(torch.rand(2, 3, 64, 64))

    def tensors(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from tensors(v)

    loss = sum(t.float().mean() for t in tensors(out))
    loss.backward()
    assert math.isfinite(float(loss))
    frozen = freeze_layers(model, "yolov5", OD, 2)
    assert frozen and all(n.startswith(("model.0.", "model.1.")) for n in frozen)


def test_freezing_fpn_layer_groups():
    model = build_detector("fasterrcnn", 18, 2, pretrained=False)
    frozen = freeze_layers(model, "fasterrcnn_resnet18_fpn", OD, 2)
    assert set(frozen) == {n for n, _ in model.named_parameters()
                           if n.startswith(("backbone.body.conv1.", "backbone.body.bn1.", "backbone.body.layer1."))}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.body.layer2."))
    with pytest.raises(ConfigError, match="layers_to_freeze=6: fasterrcnn_resnet18_fpn has 5 layer groups"):
        freeze_layers(model, "fasterrcnn_resnet18_fpn", OD, 6)
    assert len(FPN_GROUPS) == 5


@pytest.mark.parametrize("name, task, expected", [
    ("fasterrcnn_resnet50_fpn", OD, torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.url),
    ("retinanet_resnet50_fpn", OD, torchvision.models.detection.RetinaNet_ResNet50_FPN_Weights.DEFAULT.url),
    ("maskrcnn_resnet50_fpn", IS, torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.DEFAULT.url),
    ("maskrcnn_resnet34_fpn", IS, torchvision.models.ResNet34_Weights.DEFAULT.url),
    ("fasterrcnn_resnet152_fpn", OD, torchvision.models.ResNet152_Weights.DEFAULT.url),
    ("yolov5", OD, "https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov5mu.pt"),
])
def test_missing_pretrained_weights_name_the_file(name, task, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")  # never the real download site from a test
    with pytest.raises(ConfigError) as info:
        get_entry(name, task).builder(2, pretrained=True)
    message = str(info.value)
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(expected)
    assert f"expected {path}" in message and expected in message
    assert "pretrained: 0" in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


def test_pretrained_backbone_loaded_from_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)
    data = torch_bytes(source.state_dict())  # named after its own hash, as torchvision names its files
    (folder / publish_torchvision(monkeypatch, torchvision.models.ResNet18_Weights.DEFAULT, data, "r18")).write_bytes(data)
    model = get_entry("fasterrcnn_resnet18_fpn", OD).builder(2, pretrained=True)
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert isinstance(model.backbone.body.bn1, torchvision.ops.misc.FrozenBatchNorm2d)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background


@pytest.mark.slow
def test_pretrained_coco_checkpoint_loaded_except_class_heads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(4)
    coco = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    weights = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT
    data = torch_bytes(coco.state_dict())
    (folder / publish_torchvision(monkeypatch, weights, data, "frcnn")).write_bytes(data)
    model = get_entry("fasterrcnn_resnet50_fpn", OD).builder(4, pretrained=True)
    assert torch.equal(model.roi_heads.box_head.fc6.weight, coco.roi_heads.box_head.fc6.weight)
    assert torch.equal(model.rpn.head.conv[0][0].weight, coco.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


@pytest.mark.slow
def test_yolov5_pretrained_transfers_matching_weights(tmp_path, monkeypatch):
    from automl_vision.models.yolo import build_yolo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(5)
    source = build_yolo(80, pretrained=False, model_size="small")
    torch.save({"model": source}, folder / "yolov5su.pt")  # ultralytics' checkpoint layout
    model = build_yolo(2, pretrained=True, model_size="small")
    assert torch.equal(model.model[0].conv.weight, source.model[0].conv.weight)
    assert model.yaml["nc"] == 2


def test_inference_settings_from_hyperparameters_and_applied():
    hp = hps.resolve(OD, {"model_name": "retinanet_resnet50_fpn", "min_size": 300, "box_score_thresh": 0.2,
                          "tile_grid_size": "3x2", "box_detections_per_img": 7})
    s = DetectorSettings.from_hyperparameters(hp)
    assert (s.min_size, s.max_size, s.box_score_thresh, s.tile_grid_size) == (300, 1333, 0.2, (3, 2))
    assert s.to_json()["tile_grid_size"] == "3x2"
    model = build_detector("fasterrcnn", 18, 2, pretrained=False)
    apply_inference_settings(model, s)
    assert model.transform.min_size == (300,) and model.roi_heads.score_thresh == 0.2
    assert model.roi_heads.detections_per_img == 7


def test_inference_defaults_are_the_hyperparameter_tables():
    from automl_vision.models.yolo import YoloSettings

    assert tuple(vars(DetectorSettings()).values()) == (600, 1333, 0.3, 0.5, 100, None, 0.25, 0.25, 0.5, 100)
    for name, value in vars(DetectorSettings()).items():
        task = IS if name in ("mask_pixel_score_threshold", "max_number_of_polygon_points") else OD
        assert hps.get(name).default_for(task, "retinanet_resnet50_fpn") == value, name
    assert tuple(vars(YoloSettings()).values()) == (640, "medium", 0.1, 0.5, 300)
    assert hps.defaults(OD, "yolov5").items() >= {k: v for k, v in vars(YoloSettings()).items()
                                                  if k != "max_detections"}.items()


def test_scoring_output_format():
    from automl_vision.models.detections import ImagePredictions
    from automl_vision.models.masks import encode_mask

    mask = np.zeros((50, 100), bool)
    mask[10:30, 20:60] = True
    p = ImagePredictions([[20, 10, 60, 30]], [1], [0.87654321], [encode_mask(mask)])
    out = scoring_output(p, ["can", "carton"], 100, 50, polygons=True)
    (entry,) = out["boxes"]
    assert entry["box"] == {"topX": 0.2, "topY": 0.2, "bottomX": 0.6, "bottomY": 0.6}
    assert entry["label"] == "carton" and entry["score"] == 0.876543
    (ring,) = entry["polygon"]
    xs, ys = ring[0::2], ring[1::2]
    assert min(xs) == pytest.approx(0.2, abs=0.01) and max(ys) == pytest.approx(0.6, abs=0.01)
    assert "polygon" not in scoring_output(p, ["can", "carton"], 100, 50)["boxes"][0]


# --- augmentation --------------------------------------------------------------------------------

def _image_with_box():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, 10:20, 30:50] = 200
    boxes = np.array([[30.0, 10, 50, 20]])
    masks = np.zeros((1, 40, 60), bool)
    masks[0, 10:20, 30:50] = True
    return image, boxes, masks


def _content_matches(image, boxes, masks):
    x1, y1, x2, y2 = (int(v) for v in boxes[0])
    assert (image[:, y1:y2, x1:x2] == 200).all()
    assert masks[0].sum() == (x2 - x1) * (y2 - y1) and masks[0, y1:y2, x1:x2].all()
    assert masks.shape[1:] == tuple(image.shape[1:])


@pytest.mark.parametrize("u", [(0, 0, 0, 0), (0.99, 0.99, 0.99, 0.99), (0.5, 0.2, 0.7, 0.1)])
def test_crop_keeps_boxes_whole(u):
    image, boxes, masks = crop_around_boxes(*_image_with_box(), u)
    assert boxes[0, 0] >= 0 and boxes[0, 2] <= image.shape[2] and boxes[0, 3] <= image.shape[1]
    _content_matches(image, boxes, masks)


def test_crop_extremes():
    image, boxes, _ = crop_around_boxes(*_image_with_box(), (0.999, 0.999, 0, 0))
    assert tuple(image.shape[1:]) == (11, 21) or tuple(image.shape[1:]) == (10, 20)  # tight around the box
    image, boxes, _ = crop_around_boxes(*_image_with_box(), (0, 0, 0.999, 0.999))
    assert tuple(image.shape[1:]) == (40, 60)


def test_zoom_out_and_flip_move_boxes_with_the_image():
    image, boxes, masks = zoom_out(*_image_with_box(), 2.0, (0.5, 0.25))
    assert tuple(image.shape[1:]) == (80, 120)
    assert boxes[0].tolist() == [30 + 15, 10 + 20, 50 + 15, 20 + 20]
    assert (image[:, 0, 0] == torch.tensor([124, 116, 104], dtype=torch.uint8)).all()
    _content_matches(image, boxes, masks)
    image, boxes, masks = hflip(image, boxes, masks)
    assert boxes[0].tolist() == [120 - 65, 30, 120 - 45, 40]
    _content_matches(image, boxes, masks)


# --- yolov5 settings mapping ---------------------------------------------------------------------

def test_ultralytics_overrides_follow_our_hyperparameters(tmp_path):
    from automl_vision.training.yolo import lr_lambda, ultralytics_overrides

    hp = hps.resolve(OD, {"model_name": "yolov5", "model_size": "large", "img_size": 320, "multi_scale": 1,
                          "optimizer": "adamw", "beta1": 0.8, "grad_accumulation_step": 3,
                          "training_batch_size": 4, "box_score_thresh": 0.25, "box_iou_thresh": 0.6,
                          "layers_to_freeze": 4, "lr_scheduler": "step", "step_lr_gamma": 0.5,
                          "step_lr_step_size": 2})
    o = ultralytics_overrides(hp, tmp_path / "data.yaml", tmp_path, "cpu", 0)
    assert o["model"] == "yolov5lu.yaml" and o["imgsz"] == 320 and o["multi_scale"] == 0.5
    assert o["momentum"] == 0.8 and o["nbs"] == 12 and o["batch"] == 4
    assert (o["conf"], o["iou"], o["freeze"], o["warmup_epochs"]) == (0.25, 0.6, 4, 0)
    assert o["project"] == str(tmp_path) and o["plots"] is False and o["pretrained"] is False
    f = lr_lambda(hp)
    assert [f(e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = lr_lambda(hps.resolve(OD, {"model_name": "yolov5", "number_of_epochs": 12}))
    assert cos(0) == cos(1) == 1.0 and cos(2) == pytest.approx(1.0) and 0 < cos(11) < cos(6) < 1
