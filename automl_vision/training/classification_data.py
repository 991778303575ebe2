"""Classification data for training: the splits, the datasets and the loaders.

Multi-class targets are class indices, multi-label targets 0/1 float vectors. On CUDA the loaders
give uint8 images and the colour jitter runs on the device (``models.preprocessing.BatchPreparer``);
on the CPU the loaders do it, per image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from automl_vision.data.classification import ClassificationData, ClassificationSample, load_classification_splits
from automl_vision.data.images import read_rgb
from automl_vision.errors import DataError
from automl_vision.models.preprocessing import (OneThread, train_image_transform, train_transform,
                                                valid_image_transform, valid_transform)
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.trial import TrialSettings, default_num_workers

def _sample_path(s) -> str:
    return getattr(s, "image_path", None) or s.path


class ImageClassificationDataset(Dataset):
    """Images and targets: a class index (multi-class) or a 0/1 float vector (multi-label).

    ``draft``: JPEGs are decoded at a reduced scale when they are at least this size on both
    sides (validation: the resize size), which is several times faster for large photos.
    ``input_size``: the shorter side the transform resizes to; an image that resize would blow up
    (too thin, see ``data.images.shape_problem``) is refused before it is decoded. Images are read as
    displayed (EXIF orientation applied), like the sizes the data layer reports.
    """

    def __init__(self, samples: Sequence, classes: Sequence[str], transform, multilabel: bool,
                 draft: int | None = None, input_size: int | None = None):
        self.samples, self.transform, self.multilabel = list(samples), transform, multilabel
        self.index = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)
        self.draft = draft
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        path = _sample_path(s)
        source = getattr(s, "source", "")
        where = f"{source}:{s.line}" if source else f"line {s.line}"
        image = read_rgb(path, where=where, input_size=self.input_size, draft=self.draft)
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            for label in s.labels:
                target[self.index[label]] = 1.0
        else:
            target = self.index[s.labels[0]]
        return self.transform(image), target


def load_splits(settings: TrialSettings) -> tuple[list[ClassificationSample], list[ClassificationSample], list[str]]:
    """Training and validation samples, and the class list (sorted names of every class seen)."""
    hp = settings.hyperparameters
    # JSONL files or an ingested dataset (automl-vision data validate --output-dir); remote images are
    # fetched into the cache; without validation data split_ratio is held out (an ingested one keeps its split).
    train_s, val_s = load_classification_splits(settings.training_data, settings.validation_data, settings.task,
                                                split_ratio=hp["split_ratio"], seed=hp["seed"])
    classes = ClassificationData(tuple(train_s) + tuple(val_s), "").classes
    unseen = sorted({lab for s in val_s for lab in s.labels} - {lab for s in train_s for lab in s.labels})
    if unseen:
        raise DataError(f"validation data has classes never seen in training: {', '.join(unseen)}")
    if settings.task is ImageTask.IMAGE_CLASSIFICATION and len(classes) < 2:
        raise DataError(f"{settings.training_data}: multi-class classification needs at least 2 classes, "
                        f"found {len(classes)}")
    return train_s, val_s, classes


def class_weights(samples: Iterable, classes: list[str], mode: int) -> torch.Tensor | None:
    """weighted_loss 1: inverse class frequency square-rooted; 2: inverse class frequency (mean 1 over classes)."""
    if mode == 0:
        return None
    counts = Counter(label for s in samples for label in s.labels)
    freq = torch.tensor([max(1, counts.get(c, 0)) for c in classes], dtype=torch.float32)
    w = freq.sum() / (len(classes) * freq)
    return w.sqrt() if mode == 1 else w


def build_loaders(hp: dict[str, Any], train_samples: Sequence, val_samples: Sequence, classes: Sequence[str], *,
                  multilabel: bool, device: torch.device, num_workers: int | None = None,
                  generator: torch.Generator | None = None, rank: int = 0,
                  world_size: int = 1) -> tuple[DataLoader, DataLoader]:
    """The training and validation loaders.

    Batch sizes are per process (under torchrun each GPU takes ``training_batch_size`` images).
    Workers: ``num_workers`` or the machine's cores (``default_num_workers``); pinned memory on CUDA.
    On CUDA the loaders give uint8 images and the colour jitter runs on the GPU; on the CPU the
    loaders do it, per image. Both follow ``augmentation`` (``models.preprocessing.train_image_transform``).
    """
    jitter_on_device = device.type == "cuda"
    train_tf = OneThread(train_image_transform(hp)) if jitter_on_device else train_transform(hp)
    val_tf = OneThread(valid_image_transform(hp)) if jitter_on_device else valid_transform(hp)
    size = max(hp["valid_resize_size"], hp["train_crop_size"])
    train_ds = ImageClassificationDataset(train_samples, classes, train_tf, multilabel, input_size=size)
    val_ds = ImageClassificationDataset(val_samples, classes, val_tf, multilabel, draft=hp["valid_resize_size"],
                                        input_size=size)
    workers = default_num_workers(world_size) if num_workers is None else num_workers
    pin = device.type == "cuda"
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}
    if workers:
        common["prefetch_factor"] = 4
    batch = hp["training_batch_size"]
    sampler = None
    per_rank = len(train_ds)
    if world_size > 1:
        sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=hp["seed"],
                                     drop_last=True)
        per_rank = len(sampler)
    # Dropping the last partial batch keeps a 1-image batch away from batch norm.
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler,
                              drop_last=per_rank > batch, generator=generator, **common)
    val_loader = DataLoader(val_ds, batch_size=hp["validation_batch_size"], shuffle=False, **common)
    return train_loader, val_loader
