"""Seeded, deterministic train/validation split, stratified by class where there is one class per image."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

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
