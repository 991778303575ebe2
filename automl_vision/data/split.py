"""Seeded, deterministic train/validation split.

One class per image (multi-class classification): stratified by class. Several classes per image
(multi-label, detection, segmentation): iterative stratification (Sechidis, Tsoumakas and Vlahavas,
"On the stratification of multi-label data", 2011), which spreads every class over both sides in
proportion, rarest class first. Either way every class of the validation part is in the training part:
an image holding a class that only one image has stays in training, and the report says how many.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from automl_vision.data.records import TRAIN, VALIDATION
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

T = TypeVar("T")


def split_indices(keys: Sequence[Hashable], ratio: float, seed: int, *, stratify: bool) -> tuple[list[int], list[int]]:
    """Indices of the training and validation parts; ``keys[i]`` is the stratum of item i.

    Each stratum gives ``round(len * ratio)`` items to validation (at least one when the stratum
    has two or more items), so small classes are represented on both sides.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"split_ratio={ratio} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k if stratify else 0].append(i)
    val: list[int] = []
    for k in sorted(groups, key=str):
        members = groups[k]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * ratio))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val += [members[j] for j in order[:n_val]]
    val_set = set(val)
    train = [i for i in range(len(keys)) if i not in val_set]
    if not train or not val:
        raise ValueError(f"cannot split {len(keys)} items with split_ratio={ratio}: one side would be empty")
    return train, sorted(val)


@dataclass(frozen=True)
class SplitPlan:
    """Which items go to validation, and what was done to keep every class in training."""

    train: list[int]
    validation: list[int]
    single_image_classes: tuple[str, ...] = ()  # classes of one image only: that image stays in training
    moved_to_training: int = 0  # validation images moved back so their classes are also in training

    def note(self) -> str | None:
        """One sentence for the log and the report, or None when nothing needed doing."""
        parts = []
        if self.single_image_classes:
            names = ", ".join(self.single_image_classes[:10]) + (" ..." if len(self.single_image_classes) > 10 else "")
            parts.append(f"{len(self.single_image_classes)} classes with a single image kept in training ({names})")
        if self.moved_to_training:
            parts.append(f"{self.moved_to_training} images moved from validation to training so that each of "
                         "their classes is also in training")
        return "split: " + "; ".join(parts) if parts else None


def split_label_sets(label_sets: Sequence[frozenset], ratio: float, seed: int) -> SplitPlan:
    """Iterative stratification of items with any number of labels each (``label_sets[i]``).

    Each item whose labels include one that no other item has goes to training. The rest are dealt out
    rarest label first: each item to the side that still wants most of that label (ties: the side that
    wants most items, then the seeded draw), so every label is split in about ``ratio``. Items without
    labels fill the sides' remaining wants. Finally a validation item with a label missing from training
    is moved to training. Validation gets ``round(n * ratio)`` items (at least 1 and at most n - 1),
    fewer when singletons force more into training. Raises ValueError when a side would be empty.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"split_ratio={ratio} must be in (0, 1)")
    n = len(label_sets)
    rng = np.random.default_rng(seed)
    holders: dict = defaultdict(list)
    for i, labels in enumerate(label_sets):
        for label in labels:
            holders[label].append(i)
    singles = sorted((label for label, items in holders.items() if len(items) == 1), key=str)
    side = [-1] * n  # 0 training, 1 validation
    for label in singles:
        side[holders[label][0]] = 0
    n_val = min(max(int(round(n * ratio)), 1), n - 1) if n >= 2 else 0
    want_items = [float(n - n_val - side.count(0)), float(n_val)]
    want = {label: [len(items) * (1 - ratio), len(items) * ratio] for label, items in holders.items()}
    for i, s in enumerate(side):
        if s == 0:
            for label in label_sets[i]:
                want[label][0] -= 1
    left = {label: sum(side[i] < 0 for i in items) for label, items in holders.items()}  # items still to place
    left = {label: k for label, k in left.items() if k}
    tie = rng.random(n)  # the seeded draw that breaks ties, one number per item
    while left:
        fewest = min(left.values())
        candidates = sorted((label for label, k in left.items() if k == fewest), key=str)
        label = candidates[int(rng.integers(len(candidates)))]
        for i in sorted(holders[label], key=lambda k: tie[k]):
            if side[i] >= 0:
                continue
            w = want[label]
            if w[0] != w[1]:
                chosen = 0 if w[0] > w[1] else 1
            elif want_items[0] != want_items[1]:
                chosen = 0 if want_items[0] > want_items[1] else 1
            else:
                chosen = int(tie[i] < 0.5)
            side[i] = chosen
            want_items[chosen] -= 1
            for other in label_sets[i]:
                want[other][chosen] -= 1
                left[other] -= 1
                if not left[other]:
                    del left[other]
    for i in sorted((i for i in range(n) if side[i] < 0), key=lambda k: tie[k]):  # items without labels
        chosen = 0 if want_items[0] >= want_items[1] else 1
        side[i] = chosen
        want_items[chosen] -= 1
    in_training = set()
    for i in range(n):
        if side[i] == 0:
            in_training.update(label_sets[i])
    moved = 0
    for i in sorted((i for i in range(n) if side[i] == 1), key=lambda k: (len(label_sets[k]), tie[k])):
        if not label_sets[i] <= in_training:
            side[i] = 0
            in_training.update(label_sets[i])
            moved += 1
    train = [i for i in range(n) if side[i] == 0]
    val = [i for i in range(n) if side[i] == 1]
    if not train or not val:
        extra = f" ({len(singles)} of them hold a class no other item has and stay in training)" if singles else ""
        raise ValueError(f"cannot split {n} items with split_ratio={ratio}: one side would be empty{extra}")
    return SplitPlan(train, val, tuple(map(str, singles)), moved)


def record_label_sets(records) -> list[frozenset]:
    """The classes of each record: its labels and the labels of its objects."""
    return [frozenset(r.labels).union(o.label for o in r.objects) for r in records]


def plan_split(records, task, ratio: float, seed: int) -> SplitPlan:
    """The split of ``records``: stratified by class for multi-class classification, iterative
    stratification otherwise; every validation class is also in training."""
    if task is ImageTask.IMAGE_CLASSIFICATION:
        keys, _ = split_keys(records, task)
        train, val = split_indices(keys, ratio, seed, stratify=True)
        counts: dict = defaultdict(int)
        for k in keys:
            counts[k] += 1
        return SplitPlan(train, val, tuple(sorted(str(k) for k, c in counts.items() if c == 1)))
    return split_label_sets(record_label_sets(records), ratio, seed)


def split_keys(records, task) -> tuple[list[Hashable], bool]:
    """The stratum of each record and whether to stratify: the class for multi-class, none otherwise."""
    if task is ImageTask.IMAGE_CLASSIFICATION:
        return [r.labels[0] if r.labels else "" for r in records], True
    return [0] * len(records), False


def split_records(records, task, ratio: float, seed: int, *, plan: SplitPlan | None = None):
    """The records with ``split`` set to ``train`` or ``validation`` by ``plan_split`` (the same split a
    trial makes from the same file and seed); what it did to keep classes in training is logged."""
    plan = plan or plan_split(records, task, ratio, seed)
    note = plan.note()
    if note:
        log.info("%s", note)
    held_out = set(plan.validation)
    return tuple(dataclasses.replace(r, split=VALIDATION if i in held_out else TRAIN) for i, r in enumerate(records))
