"""docs/hyperparameters.md is generated from the hyperparameter table and must be up to date."""

from __future__ import annotations

from pathlib import Path

from automl_vision.spec import docs
from automl_vision.spec.distributions import DISTRIBUTION_TYPES
from automl_vision.spec.hyperparameters import HYPERPARAMETERS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "hyperparameters.md"


def test_committed_page_is_up_to_date():
    rendered = docs.render_hyperparameters_markdown()
    assert PAGE.exists(), "docs/hyperparameters.md is missing; run `make docs`"
    assert PAGE.read_text() == rendered, (
        "docs/hyperparameters.md is out of date with automl_vision/spec/hyperparameters.py; run `make docs` "
        "(python -m automl_vision.spec.docs > docs/hyperparameters.md)"
    )


def test_page_names_every_hyperparameter_and_distribution():
    text = docs.render_hyperparameters_markdown()
    assert "`make docs`" in text.splitlines()[2]
    for hp in HYPERPARAMETERS:
        assert sum(line.startswith(f"| `{hp.name}` |") for line in text.splitlines()) == 1, hp.name
    for kind in DISTRIBUTION_TYPES:
        assert f"| `{kind}` |" in text


def test_groups_come_from_the_rows():
    by_group = {g: [hp.name for hp in HYPERPARAMETERS if docs.group_of(hp) == g] for g in docs.GROUPS}
    assert {"number_of_epochs", "learning_rate", "layers_to_freeze", "model_name"} <= set(by_group["All models"])
    assert by_group["Classification"] == ["weighted_loss", "valid_resize_size", "valid_crop_size", "train_crop_size"]
    assert {"min_size", "tile_grid_size", "box_score_thresh"} <= set(by_group["Detection and segmentation"])
    assert by_group["yolov5"] == ["img_size", "model_size", "multi_scale", "box_iou_thresh"]
    assert by_group["Instance segmentation"] == ["mask_pixel_score_threshold", "max_number_of_polygon_points"]
    assert by_group["automl-vision extensions"] == ["pretrained", "seed", "augmentation"]


def test_main_prints_the_page(capsys):
    docs.main()
    assert capsys.readouterr().out == docs.render_hyperparameters_markdown()
