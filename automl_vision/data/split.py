"""Seeded, deterministic train/validation split, stratified by class where there is one class per image."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
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


def split_keys(records, task) -> tuple[list[Hashable], bool]:
    """The stratum of each record and whether to stratify: the class for multi-class, none otherwise."""
    from automl_vision.spec.tasks import ImageTask

    if task is ImageTask.IMAGE_CLASSIFICATION:
        return [r.labels[0] if r.labels else "" for r in records], True
    return [0] * len(records), False


def split_records(records, task, ratio: float, seed: int):
    """The records with ``split`` set to ``train`` or ``validation``: ``split_indices`` over them, stratified
    by class for multi-class classification (the same split a trial makes from the same file and seed)."""
    import dataclasses

    from automl_vision.data.records import TRAIN, VALIDATION

    keys, stratify = split_keys(records, task)
    _, val = split_indices(keys, ratio, seed, stratify=stratify)
    held_out = set(val)
    return tuple(dataclasses.replace(r, split=VALIDATION if i in held_out else TRAIN) for i, r in enumerate(records))


@dataclass(frozen=True)
class SplitFiles:
    train: object  # Path
    validation: object
    train_images: int
    validation_images: int


def split_jsonl(path, task, out_dir, *, ratio: float = 0.2, seed: int = 0, options=None):
    """Write ``out_dir/train.jsonl`` and ``out_dir/validation.jsonl`` from a JSONL file (a path or
    ``s3://bucket/key``): the same split a trial makes with the same ``split_ratio`` and ``seed``. Lines are
    copied as they are, except that a relative image_url is rewritten to stay correct from ``out_dir`` (for
    a file in object storage: to the ``s3://`` URI of the object it names). Returns the two paths and their
    image counts.
    """
    import json
    import os
    from pathlib import Path

    from automl_vision.data.convert.common import image_url
    from automl_vision.data.storage import local_jsonl
    from automl_vision.data.validate import ValidationOptions, validate_dataset
    from automl_vision.errors import DataError

    options = options or ValidationOptions(check_files=False, check_images=False)
    source = local_jsonl(path, config=options.storage, cache_dir=options.cache_dir)
    result = validate_dataset(source, task, options=options, split_ratio=ratio, seed=seed)
    dataset = result.raise_if_invalid()
    split_of = {r.line: r.split for r in dataset.records}
    uri_of = {r.line: r.uri for r in dataset.records}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = source.base
    same_dir = not source.remote and os.path.abspath(out) == base
    targets = {"train": out / "train.jsonl", "validation": out / "validation.jsonl"}
    if not source.remote and os.path.abspath(source.path) in {os.path.abspath(t) for t in targets.values()}:
        raise DataError(f"{source.name}: splitting would overwrite the input; choose another output folder")
    counts = {"train": 0, "validation": 0}
    tmp = {k: v.with_name(v.name + ".tmp") for k, v in targets.items()}
    files = {k: v.open("w", encoding="utf-8") for k, v in tmp.items()}
    try:
        with open(source.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                split = split_of.get(number)
                if split is None:
                    continue
                row = json.loads(raw)
                url = row["image_url"]
                if source.remote and "://" not in url and not os.path.isabs(url):
                    row["image_url"] = uri_of[number]
                elif not same_dir and "://" not in url and not os.path.isabs(url):
                    row["image_url"] = image_url(Path(os.path.normpath(os.path.join(base, url))), out)
                files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[split] += 1
    finally:
        for f in files.values():
            f.close()
    for k in targets:
        os.replace(tmp[k], targets[k])
    return SplitFiles(targets["train"], targets["validation"], counts["train"], counts["validation"])
