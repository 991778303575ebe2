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
