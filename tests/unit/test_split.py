"""split_indices: seeded, stratified train/validation split."""

from __future__ import annotations

from collections import Counter

import pytest

from automl_vision.data.split import split_indices

KEYS = ["a"] * 40 + ["b"] * 20 + ["c"] * 10


def test_deterministic_for_a_seed():
    assert split_indices(KEYS, 0.2, seed=7, stratify=True) == split_indices(KEYS, 0.2, seed=7, stratify=True)
    assert split_indices(KEYS, 0.2, seed=7, stratify=False) == split_indices(KEYS, 0.2, seed=7, stratify=False)


@pytest.mark.parametrize("stratify", [True, False])
def test_different_for_another_seed(stratify):
    _, val1 = split_indices(KEYS, 0.2, seed=1, stratify=stratify)
    _, val2 = split_indices(KEYS, 0.2, seed=2, stratify=stratify)
    assert val1 != val2


@pytest.mark.parametrize("stratify", [True, False])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.5, 0.9])
def test_disjoint_and_covering(stratify, ratio):
    train, val = split_indices(KEYS, ratio, seed=0, stratify=stratify)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(len(KEYS)))
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert val == sorted(val) and train == sorted(train)


def test_stratified_proportions():
    train, val = split_indices(KEYS, 0.2, seed=3, stratify=True)
    per_class_val = Counter(KEYS[i] for i in val)
    per_class_train = Counter(KEYS[i] for i in train)
    assert per_class_val == {"a": 8, "b": 4, "c": 2}  # round(n * 0.2) per class exactly
    assert per_class_train == {"a": 32, "b": 16, "c": 8}


def test_stratified_small_classes_on_both_sides():
    keys = ["big"] * 30 + ["two"] * 2 + ["three"] * 3
    train, val = split_indices(keys, 0.1, seed=0, stratify=True)
    for cls in ("big", "two", "three"):
        assert any(keys[i] == cls for i in train), cls
        assert any(keys[i] == cls for i in val), cls


def test_stratified_singleton_class_stays_in_training():
    keys = ["a"] * 10 + ["solo"]
    train, val = split_indices(keys, 0.3, seed=0, stratify=True)
    assert 10 in train and 10 not in val


def test_unstratified_ignores_keys():
    keys = ["a"] * 50 + ["b"] * 50
    train, val = split_indices(keys, 0.2, seed=0, stratify=False)
    assert len(val) == 20 and len(train) == 80
    # same as splitting one big group: only the number of items matters
    assert (train, val) == split_indices(["x"] * 100, 0.2, seed=0, stratify=False)


def test_unstratified_can_miss_a_class_stratified_cannot():
    keys = ["a"] * 99 + ["rare"]
    hits = 0
    for seed in range(20):
        _, val = split_indices(keys, 0.1, seed=seed, stratify=False)
        hits += 99 in val
    assert hits < 20  # the rare item is not forced into validation
    for seed in range(5):
        train, val = split_indices(keys + ["rare"], 0.1, seed=seed, stratify=True)
        assert (99 in val) != (100 in val)  # exactly one of the two rare items goes to validation


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError, match=rf"split_ratio={ratio} must be in \(0, 1\)"):
        split_indices(KEYS, ratio, seed=0, stratify=True)


@pytest.mark.parametrize("keys,ratio,stratify", [
    (["a"], 0.5, True),
    (["a"], 0.5, False),
    ([], 0.2, False),
    (["a", "b", "c"], 0.2, True),  # every class a singleton: nothing for validation
])
def test_too_few_items(keys, ratio, stratify):
    with pytest.raises(ValueError,
                       match=rf"cannot split {len(keys)} items with split_ratio={ratio}: one side would be empty"):
        split_indices(keys, ratio, seed=0, stratify=stratify)


@pytest.mark.parametrize("ratio", [0.01, 0.99])
def test_two_items_always_split_one_and_one(ratio):
    assert split_indices(["a", "b"], ratio, seed=0, stratify=False) in (([0], [1]), ([1], [0]))


# --- several classes per image: iterative stratification, every validation class kept in training -----

import json  # noqa: E402
import logging  # noqa: E402

import numpy as np  # noqa: E402

from automl_vision.cli import main  # noqa: E402
from automl_vision.data.split import split_label_sets  # noqa: E402
from automl_vision.data.load import load_dataset  # noqa: E402
from automl_vision.data.validate import ValidationOptions, validate_dataset  # noqa: E402
from automl_vision.spec.tasks import ImageTask  # noqa: E402

OD = ImageTask.IMAGE_OBJECT_DETECTION
IS = ImageTask.IMAGE_INSTANCE_SEGMENTATION
ML = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
NO_FILES = ValidationOptions(check_files=False, check_images=False)


def long_tailed_lines(n_images: int = 40, n_classes: int = 50, seed: int = 0, polygons: bool = False) -> list[dict]:
    """A COCO-like long-tailed detection set: class k drawn with weight 1/(k+1), 1-6 objects per image,
    and every class used at least once (so many classes live in a single image)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, n_classes + 1)
    weights /= weights.sum()
    per_image = [list(rng.choice(n_classes, size=int(rng.integers(1, 7)), p=weights)) for _ in range(n_images)]
    for k in range(n_classes):  # the tail: each unused class goes into some image
        if not any(k in objs for objs in per_image):
            per_image[int(rng.integers(n_images))].append(k)
    lines = []
    for i, objs in enumerate(per_image):
        label = []
        for j, k in enumerate(objs):
            x = 0.1 + 0.01 * j
            obj = {"label": f"class_{k:02d}", "topX": x, "topY": 0.1, "bottomX": x + 0.3, "bottomY": 0.5}
            if polygons:
                obj["polygon"] = [[x, 0.1, x + 0.3, 0.1, x + 0.3, 0.5]]
            label.append(obj)
        lines.append({"image_url": f"images/{i:03d}.jpg", "label": label})
    return lines


def _write(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _classes(records) -> set[str]:
    return {o.label for r in records for o in r.objects} | {lab for r in records for lab in r.labels}


@pytest.mark.parametrize("task", [OD, IS])
@pytest.mark.parametrize("seed", range(8))
def test_long_tailed_split_keeps_every_validation_class_in_training(tmp_path, task, seed):
    lines = long_tailed_lines(seed=seed, polygons=task is IS)
    result = validate_dataset(_write(tmp_path, lines), task, options=NO_FILES, split_ratio=0.2, seed=seed)
    ds = result.raise_if_invalid()
    assert ds.train and ds.validation
    assert _classes(ds.validation) <= _classes(ds.train), sorted(_classes(ds.validation) - _classes(ds.train))
    counts = {c: sum(c in _classes([r]) for r in ds.records) for c in ds.classes}
    singles = sorted(c for c, k in counts.items() if k == 1)
    assert singles, "the generated set must have classes seen in one image only"
    assert all(c in _classes(ds.train) for c in singles)
    split = result.report.stats["split"]
    assert split["single_image_classes"] == singles
    assert any(f"{len(singles)} classes with a single image kept in training" in w for w in result.report.warnings)


def test_long_tailed_trial_split_and_cli_exit_codes(tmp_path, caplog, capsys):
    """What a trial does (load_dataset with split_ratio) and `data split` both keep the classes; the log says so."""
    path = _write(tmp_path, long_tailed_lines())
    with caplog.at_level(logging.INFO, logger="automl_vision.data.split"):
        ds = load_dataset(path, OD, split_ratio=0.2, seed=0, options=NO_FILES)
    assert _classes(ds.validation) <= _classes(ds.train)
    assert any("classes with a single image kept in training" in m for m in caplog.messages)
    # too few images for any validation part once the singletons stay in training: a data problem, exit 2
    two = [{"image_url": "a.jpg", "label": [{"label": "x", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}]},
           {"image_url": "b.jpg", "label": [{"label": "y", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}]}]
    bad = _write(tmp_path, two, "two.jsonl")
    assert main(["data", "split", str(bad), "--task", "image_object_detection", "--output-dir",
                 str(tmp_path / "parts")]) == 2
    err = capsys.readouterr().err
    assert "two.jsonl" in err and "one side would be empty" in err and "stay in training" in err


def test_iterative_stratification_spreads_each_label_in_proportion():
    rng = np.random.default_rng(3)
    label_sets = [frozenset(x for x in "abcde" if rng.random() < p)
                  for p in rng.uniform(0.1, 0.6, 500)]
    plan = split_label_sets(label_sets, 0.2, seed=0)
    val = set(plan.validation)
    assert len(plan.validation) == pytest.approx(100, abs=3)
    for label in "abcde":
        holders = [i for i, s in enumerate(label_sets) if label in s]
        share = sum(i in val for i in holders) / len(holders)
        assert share == pytest.approx(0.2, abs=0.02), (label, share)
    assert sorted(plan.train + plan.validation) == list(range(500))
    assert split_label_sets(label_sets, 0.2, seed=0) == plan
    assert split_label_sets(label_sets, 0.2, seed=1).validation != plan.validation


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_split_keeps_classes_and_images_without_labels(tmp_path, seed):
    """Multi-label: 10 classes held by two images each, 5 by one image; 10 images without labels."""
    def labels(i: int) -> list[str]:
        return ["common"] + [f"pair{i // 2}"] * (i < 20) + [f"single{i - 20}"] * (20 <= i < 25)

    lines = [{"image_url": f"{i}.jpg", "label": labels(i)} for i in range(30)]
    lines += [{"image_url": f"empty{i}.jpg", "label": []} for i in range(10)]
    result = validate_dataset(_write(tmp_path, lines), ML, options=NO_FILES, split_ratio=0.2, seed=seed)
    ds = result.raise_if_invalid()
    assert _classes(ds.validation) <= _classes(ds.train), sorted(_classes(ds.validation) - _classes(ds.train))
    assert {f"{i}.jpg" for i in range(20, 25)} <= {r.image_url for r in ds.train}
    assert len(ds.validation) == 8
    assert any(not r.labels for r in ds.validation)
    assert result.report.stats["split"]["single_image_classes"] == [f"single{k}" for k in range(5)]
