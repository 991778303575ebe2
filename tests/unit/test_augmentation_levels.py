"""The ``augmentation`` hyperparameter: none, light and default, per model kind (classification
transforms and jitter, torchvision detectors' augment, yolov5's ultralytics arguments), its
validation, its flag and its preview."""

from __future__ import annotations

import colorsys
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from browser_support import make_box_dataset
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from automl_vision.cli import build_parser
from automl_vision.errors import ConfigError
from automl_vision.models.preprocessing import (DEFAULT_JITTER, LIGHT_CROP_SCALE, LIGHT_JITTER, BatchPreparer,
                                                normalization, train_image_transform, train_jitter,
                                                train_transform)
from automl_vision.report.preview import preview_rows
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.job import parse_job
from automl_vision.spec.tasks import ImageTask
from automl_vision.sweep.katib.experiment import katib_parameter
from automl_vision.training.detection_common import DetectionDataset, augment, crop_around_boxes, hflip, zoom_out
from automl_vision.training.yolo import ULTRALYTICS_HSV, ultralytics_overrides, yolo_augmentation

MC = ImageTask.IMAGE_CLASSIFICATION
OD = ImageTask.IMAGE_OBJECT_DETECTION
CLS = {"model_name": "resnet18", "pretrained": False, "train_crop_size": 24, "valid_resize_size": 28,
       "valid_crop_size": 24}

pytestmark = pytest.mark.usefixtures("one_thread")


def _hp(**given):
    return hps.resolve(MC, {**CLS, **given})


@pytest.fixture
def photo() -> Image.Image:
    """A 40 x 32 image with a colour gradient (mid-range values, so jitter never clips)."""
    y, x = np.mgrid[0:32, 0:40]
    pixels = np.stack([60 + 3 * x, 80 + 2 * y, 150 - 2 * x], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


# --- the row ---------------------------------------------------------------------------------------

def test_the_row():
    hp = hps.get("augmentation")
    assert hp.type is str and hp.choices == ("none", "light", "default") and hp.default == "default"
    assert hp.origin == "extension" and hp.sweepable and hp.tasks == frozenset(ImageTask)
    assert hp.models is None and not hp.exclude_models
    for task in ImageTask:
        for model in task.models:
            assert hps.defaults(task, model)["augmentation"] == "default"
    assert hps.augmentation_level({}) == "default"  # settings written before the row existed
    with pytest.raises(ValueError, match="augmentation='strong' is not allowed; expected one of 'none', 'light', "
                                         "'default'"):
        hps.augmentation_level({"augmentation": "strong"})


def test_a_jobs_search_space_takes_a_choice_of_levels():
    job = parse_job({"task": "image_object_detection", "training_data": "train.jsonl",
                     "sweep": {"sampling_algorithm": "random"}, "limits": {"max_trials": 3},
                     "search_space": [{"model_name": "yolov5",
                                       "augmentation": {"type": "choice", "values": ["none", "light", "default"]}},
                                      {"model_name": "fasterrcnn_resnet50_fpn", "augmentation": "light"}]},
                    source="job.yaml")
    assert job.search_space[0]["augmentation"].values == ["none", "light", "default"]
    assert katib_parameter("augmentation", job.search_space[0]["augmentation"], "random") == {
        "name": "augmentation", "parameterType": "categorical",
        "feasibleSpace": {"list": ["none", "light", "default"]}}


@pytest.mark.parametrize("where", ["search_space", "training_parameters"])
def test_a_job_refuses_an_unknown_level_naming_the_allowed_ones(where):
    spec = {"task": "image_classification", "training_data": "train.jsonl"}
    if where == "search_space":
        spec |= {"sweep": {"sampling_algorithm": "random"}, "limits": {"max_trials": 2},
                 "search_space": [{"augmentation": {"type": "choice", "values": ["light", "heavy"]}}]}
    else:
        spec["training_parameters"] = {"augmentation": "heavy"}
    with pytest.raises(ConfigError) as info:
        parse_job(spec, source="job.yaml")
    assert "'heavy'" in str(info.value) and "expected one of 'none', 'light', 'default'" in str(info.value)


def test_the_train_command_has_the_flag(capsys):
    args = build_parser().parse_args(["train", "--task", "image_classification", "--training_data", "t.jsonl",
                                      "--augmentation", "light"])
    assert args.augmentation == "light"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--augmentation" in capsys.readouterr().out


# --- classification --------------------------------------------------------------------------------

def _today(hp) -> v2.Compose:
    """The training transform as it was before the levels: the spec's, which default must keep."""
    interpolation = v2.InterpolationMode(normalization(hp)["interpolation"])
    return v2.Compose([v2.PILToTensor(),
                       v2.RandomResizedCrop(hp["train_crop_size"], interpolation=interpolation, antialias=True),
                       v2.RandomHorizontalFlip()])


def _draw(transform, image, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(image)


@pytest.mark.parametrize("given", [{}, {"augmentation": "default"}])
def test_default_is_the_spec_augmentation_bit_for_bit(photo, given):
    hp = _hp(**given)
    assert train_jitter(hp) == DEFAULT_JITTER
    assert repr(train_image_transform(hp)) == repr(_today(hp))
    norm = normalization(hp)
    prepare = BatchPreparer(torch.device("cpu"), jitter=DEFAULT_JITTER, mean=norm["mean"], std=norm["std"])
    for seed in range(5):
        assert torch.equal(_draw(train_image_transform(hp), photo, seed), _draw(_today(hp), photo, seed))
        expected = _draw(lambda im: prepare(_today(hp)(im).unsqueeze(0)).squeeze(0), photo, seed)
        assert torch.equal(_draw(train_transform(hp), photo, seed), expected)


def test_none_is_resize_and_centre_crop_with_no_random_step(photo):
    hp = _hp(augmentation="none")
    assert train_jitter(hp) is None
    norm = normalization(hp)
    x = F.center_crop(F.resize(F.pil_to_tensor(photo), [24], antialias=True), [24, 24])
    assert torch.equal(_draw(train_image_transform(hp), photo, 0), x)
    expected = F.normalize(x.float() / 255, norm["mean"], norm["std"])
    outputs = [_draw(train_transform(hp), photo, seed) for seed in (0, 1, 2)]
    assert all(torch.equal(o, outputs[0]) for o in outputs)  # whatever the RNG: the same tensor
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=0)
    assert "Random" not in repr(train_transform(hp)) and "ColorJitter" not in repr(train_transform(hp))


def test_light_crops_at_least_half_the_image_and_flips(photo):
    hp = _hp(augmentation="light")
    steps = train_image_transform(hp).transforms
    crop = next(t for t in steps if isinstance(t, v2.RandomResizedCrop))
    assert crop.scale == LIGHT_CROP_SCALE == (0.5, 1.0)
    assert any(isinstance(t, v2.RandomHorizontalFlip) and t.p == 0.5 for t in steps)
    default_crop = next(t for t in _today(hp).transforms if isinstance(t, v2.RandomResizedCrop))
    assert default_crop.scale == (0.08, 1.0)
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    torch.manual_seed(0)
    areas = [p["height"] * p["width"] / 100**2 for p in (crop.make_params([image]) for _ in range(300))]
    assert min(areas) >= 0.48 and max(areas) <= 1.0  # 0.5 of the area, give or take the rounding to pixels
    torch.manual_seed(0)
    assert min(p["height"] * p["width"] / 100**2 for p in (default_crop.make_params([image]) for _ in range(300))) < 0.2
    out = {tuple(_draw(train_transform(hp), photo, seed).shape) for seed in range(3)}
    assert out == {(3, 24, 24)}


def _hues(x: torch.Tensor) -> np.ndarray:
    rgb = x.permute(1, 2, 0).reshape(-1, 3).numpy()
    return np.array([colorsys.rgb_to_hsv(*p)[0] for p in rgb])


def test_light_jitter_is_mild_and_never_shifts_the_hue():
    assert LIGHT_JITTER == (0.1, 0.1, 0.1, 0.0)
    assert train_jitter(_hp(augmentation="light")) == LIGHT_JITTER
    torch.manual_seed(0)
    x = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.45, 0.6], [0.4, 0.55, 0.3]]).view(3, 3, 1, 1).repeat(1, 1, 4, 4)
    x = x.permute(1, 0, 2, 3).contiguous()  # three images, each one colour
    batch = (x * 255).round().to(torch.uint8).repeat(4, 1, 1, 1)
    plain = BatchPreparer(torch.device("cpu"), mean=(0, 0, 0), std=(1, 1, 1))(batch)
    light = BatchPreparer(torch.device("cpu"), jitter=LIGHT_JITTER, mean=(0, 0, 0), std=(1, 1, 1))(batch)
    full = BatchPreparer(torch.device("cpu"), jitter=DEFAULT_JITTER, mean=(0, 0, 0), std=(1, 1, 1))(batch)
    for i in range(len(batch)):
        np.testing.assert_allclose(_hues(light[i]), _hues(plain[i]), atol=1e-4)
        change = (light[i] / plain[i]).mean().item()
        assert 0.75 < change < 1.3  # brightness, contrast and saturation within 10% each
    assert max(np.abs(_hues(full[i]) - _hues(plain[i])).max() for i in range(len(batch))) > 0.01


@pytest.mark.parametrize("level", ["none", "light", "default"])
def test_loaders_follow_the_level_on_both_devices(tmp_path, make_dataset, level):
    from automl_vision.training.classification_data import build_loaders, load_splits
    from automl_vision.training.trial import TrialSettings

    data = make_dataset(tmp_path / "data", n_per_class=2, classes=("red", "blue"))
    hp = _hp(augmentation=level)
    settings = TrialSettings(task=MC, training_data=str(data), validation_data=None, hyperparameters=hp,
                             output_dir=str(tmp_path / "out"), device="cpu", num_workers=0)
    train_s, val_s, classes = load_splits(settings)
    cpu, _ = build_loaders(hp, train_s, val_s, classes, multilabel=False, device=torch.device("cpu"), num_workers=0)
    assert repr(cpu.dataset.transform) == repr(train_transform(hp))
    # on CUDA the loader keeps uint8 images and the jitter of the level runs on the device
    cuda, _ = build_loaders(hp, train_s, val_s, classes, multilabel=False, device=torch.device("cuda"),
                            num_workers=0)
    assert repr(cuda.dataset.transform) == repr(train_image_transform(hp))


# --- torchvision detectors -----------------------------------------------------------------------------

def _scene():
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    boxes = np.array([[10.0, 5, 30, 25], [35, 12, 50, 30]])
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 5:25, 10:30] = masks[1, 12:30, 35:50] = True
    return image, boxes, masks


def _today_augment(image, boxes, masks, generator):
    """The detectors' augmentation as it was before the levels: the spec's, which default must keep."""
    r = torch.rand(9, generator=generator).tolist()
    if r[0] < 0.5:
        image, boxes, masks = crop_around_boxes(image, boxes, masks, r[1:5])
    if r[5] < 0.5:
        image, boxes, masks = zoom_out(image, boxes, masks, 1.0 + r[6], r[7:9])
    if torch.rand(1, generator=generator).item() < 0.5:
        image, boxes, masks = hflip(image, boxes, masks)
    return image, boxes, masks


def test_detection_default_is_the_spec_augmentation_bit_for_bit():
    for seed in range(12):
        got = augment(*_scene(), torch.Generator().manual_seed(seed))
        same = augment(*_scene(), torch.Generator().manual_seed(seed), level="default")
        expected = _today_augment(*_scene(), torch.Generator().manual_seed(seed))
        for a, b, c in zip(got, same, expected):
            assert (torch.equal(a, c) and torch.equal(b, c)) if isinstance(a, torch.Tensor) else (
                np.array_equal(a, c) and np.array_equal(b, c))


def test_detection_none_returns_the_sample_untouched():
    image, boxes, masks = _scene()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = augment(image, boxes, masks, g, level="none")
    assert out[0] is image and out[1] is boxes and out[2] is masks
    assert torch.equal(g.get_state(), state)  # not even a draw


def test_detection_light_only_flips():
    image, boxes, masks = _scene()
    flipped = hflip(image, boxes, masks)
    kinds = []
    for seed in range(16):
        out_image, out_boxes, out_masks = augment(image, boxes, masks, torch.Generator().manual_seed(seed), "light")
        assert out_image.shape == image.shape  # no crop, no zoom out
        if torch.equal(out_image, image):
            assert np.array_equal(out_boxes, boxes) and np.array_equal(out_masks, masks)
            kinds.append("kept")
        else:
            assert torch.equal(out_image, flipped[0]) and np.array_equal(out_boxes, flipped[1])
            assert np.array_equal(out_masks, flipped[2])
            kinds.append("flipped")
    assert set(kinds) == {"kept", "flipped"}


def test_detection_dataset_takes_the_level(tmp_path):
    from automl_vision.data.load import load_dataset

    data = make_box_dataset(tmp_path / "d", n=2, segmentation=True)
    dataset = load_dataset(data, ImageTask.IMAGE_INSTANCE_SEGMENTATION)
    classes = list(dataset.classes)
    records = dataset.records
    none = DetectionDataset(records, classes, masks=True, train=True, augmentation="none")
    plain = DetectionDataset(records, classes, masks=True, train=False)
    assert none.augmentation == "none" and plain.augmentation == "default"
    for k in range(len(none)):
        torch.manual_seed(k)
        x, target = none[k]
        y, expected = plain[k]
        assert torch.equal(x, y) and torch.equal(target["boxes"], expected["boxes"])
        assert torch.equal(target["masks"], expected["masks"])
    with pytest.raises(ValueError, match="augmentation='heavy' is not allowed; expected one of 'none', 'light', "
                                         "'default'"):
        DetectionDataset(records, classes, masks=True, train=True, augmentation="heavy")
    with pytest.raises(ValueError, match="augmentation='heavy' is not allowed"):
        augment(*_scene(), level="heavy")


# --- yolov5 ----------------------------------------------------------------------------------------------

def _ultralytics_defaults() -> dict:
    spec = importlib.util.find_spec("ultralytics")  # the installed package's own defaults, without importing it
    return yaml.safe_load((Path(spec.origin).parent / "cfg" / "default.yaml").read_text())


def _overrides(tmp_path, **given) -> dict:
    hp = hps.resolve(OD, {"model_name": "yolov5", **given})
    return ultralytics_overrides(hp, tmp_path / "data.yaml", tmp_path, "cpu", 0)


def test_yolo_default_keeps_ultralytics_augmentation(tmp_path):
    assert yolo_augmentation("default") == {}
    assert _overrides(tmp_path) == _overrides(tmp_path, augmentation="default")
    keys = {"mosaic", "fliplr", "flipud", "hsv_h", "hsv_s", "hsv_v", "translate", "scale", "degrees", "shear",
            "perspective", "mixup", "copy_paste"}
    assert not keys & set(_overrides(tmp_path))
    assert tuple(_ultralytics_defaults()[k] for k in ("hsv_h", "hsv_s", "hsv_v")) == ULTRALYTICS_HSV


def test_yolo_light_settings(tmp_path):
    o = _overrides(tmp_path, augmentation="light")
    defaults = _ultralytics_defaults()
    assert o["mosaic"] == 0 and o["fliplr"] == 0.5 and o["flipud"] == 0
    for k in ("hsv_h", "hsv_s", "hsv_v"):
        assert o[k] == pytest.approx(defaults[k] / 3)
    assert (o["translate"], o["scale"]) == (0.05, 0.2)
    assert o["degrees"] == o["shear"] == o["perspective"] == o["mixup"] == o["copy_paste"] == 0


def test_yolo_none_settings(tmp_path):
    o = _overrides(tmp_path, augmentation="none")
    for k in ("mosaic", "fliplr", "flipud", "hsv_h", "hsv_s", "hsv_v", "translate", "scale", "degrees", "shear",
              "perspective", "mixup", "copy_paste"):
        assert o[k] == 0, k


@pytest.mark.parametrize("level", ["none", "light"])
def test_yolo_arguments_are_ultralytics_own(level):
    defaults = _ultralytics_defaults()
    for k, v in yolo_augmentation(level).items():
        assert k in defaults, f"{k} is not an ultralytics argument"
        assert isinstance(v, float) and 0 <= v <= 1


# --- the preview -------------------------------------------------------------------------------------

def test_classification_preview_draws_at_the_level(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", n_per_class=2, classes=("red", "blue"))
    _, rows, hp, aug = preview_rows(data, MC, count=3, draws=3, model_name="resnet18",
                                    hyperparameters={"train_crop_size": 20, "augmentation": "none"})
    assert hp["augmentation"] == "none"
    assert aug.description.startswith("Augmentation level: none")
    for row in rows:
        assert len({t.image.tobytes() for t in row[1:]}) == 1  # nothing random: every draw the same
        assert {t.image.size for t in row[1:]} == {(20, 20)}
    light = preview_rows(data, MC, count=3, draws=3, model_name="resnet18",
                         hyperparameters={"train_crop_size": 20, "augmentation": "light"})[3]
    assert light.description.startswith("Augmentation level: light")
    assert "scale=(0.5, 1.0)" in light.description and "hue 0.0" in light.description


def test_detector_preview_draws_at_the_level(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2)
    _, rows, _, aug = preview_rows(data, OD, count=4, draws=2, model_name="fasterrcnn_resnet18_fpn",
                                   hyperparameters={"augmentation": "none"})
    assert aug.description.startswith("Augmentation level: none")
    for row in rows:
        original, *draws = row
        for t in draws:
            assert t.image.tobytes() == original.image.tobytes()
            np.testing.assert_allclose(t.annotations.boxes, original.annotations.boxes, atol=1e-4)
    _, rows, _, aug = preview_rows(data, OD, count=4, draws=2, model_name="fasterrcnn_resnet18_fpn",
                                   hyperparameters={"augmentation": "light"})
    assert aug.description.startswith("Augmentation level: light")
    for row in rows:
        assert all(t.image.size == row[0].image.size for t in row[1:])  # flips only: the size stays


def test_a_jobs_preview_says_the_level_its_entry_fixes(tmp_path):
    from automl_vision.report.preview import write_preview

    data = make_box_dataset(tmp_path / "d", n=2)
    result = write_preview(data, OD, tmp_path / "out", count=2, draws=2,
                           search_space=[{"model_name": "fasterrcnn_resnet18_fpn", "augmentation": "light"}])
    assert json.loads(result.json.read_text())["transform"].startswith("Augmentation level: light")


@pytest.mark.slow
def test_yolo_preview_at_none_only_letterboxes(tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2)  # 96 x 72 images, one box (22, 14, 61, 47)
    _, rows, _, aug = preview_rows(data, OD, count=4, draws=2, model_name="yolov5",
                                   hyperparameters={"img_size": 160, "augmentation": "none"})
    assert aug.description.startswith("Augmentation level: none") and "mosaic 0" in aug.description
    scale, top = 160 / 96, (160 - 72 * 160 / 96) / 2  # the long side to img_size, centred vertically
    expected = [22 * scale, 14 * scale + top, 61 * scale, 47 * scale + top]
    for row in rows:
        for t in row[1:]:
            assert t.image.size == (160, 160)
            np.testing.assert_allclose(t.annotations.boxes, [expected], atol=0.5)
