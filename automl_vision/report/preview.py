"""The augmentation preview: training images exactly as the model receives them.

Each chosen image is drawn several times through the train-time transform of its task and model
(the very function the trainer uses, imported from ``automl_vision.training``), and shown next to
the original with its labels, boxes and masks drawn. Normalization is undone for display only.

    write_preview("train.jsonl", ImageTask.IMAGE_CLASSIFICATION, "preview/", count=16)
    -> preview/preview.png (the grid), preview/preview.html (a page around it), preview/preview.json

Which transform applies to which task and model is a registry (``register_augmentation``); a task
or model without one is refused with the list of those that have one.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from automl_vision.data.load import load_dataset
from automl_vision.errors import ConfigError, DataError
from automl_vision.models.masks import polygon_to_mask
from automl_vision.report import html as H
from automl_vision.report.draw import Annotations, Tile, compose_grid
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.automode import automode_space
from automl_vision.spec.distributions import Choice, is_distribution
from automl_vision.spec.job import parse_job
from automl_vision.spec.tasks import (
    CLASSIFICATION_TASKS,
    DETECTION_TASKS,
    TORCHVISION_DETECTORS,
    YOLO_MODELS,
    ImageTask,
    parse_task,
)

log = logging.getLogger(__name__)

PNG_FILE, HTML_FILE, JSON_FILE = "preview.png", "preview.html", "preview.json"
DEFAULT_DRAWS = 4
TILE_SIZE = 192


@dataclass(frozen=True)
class PreviewItem:
    """One labelled training image, with its annotations in pixel coordinates; ``key`` is what the
    augmentation needs to find it again (its index in the training dataset)."""

    image_path: str
    line: int
    annotations: Annotations
    key: Any = None


@dataclass(frozen=True)
class Augmentation:
    """A task's train-time augmentation for one model, over the images of one data file.

    ``augment(item, image)`` returns the image the model receives (as a displayable RGB image) and
    the annotations moved with it; each call is a new random draw.
    """

    items: list[PreviewItem]
    augment: Callable[[PreviewItem, Image.Image], tuple[Image.Image, Annotations]]
    description: str
    close: Callable[[], None] | None = None  # frees what the augmentation holds (temporary files)


@dataclass(frozen=True)
class _Entry:
    tasks: frozenset[ImageTask]
    models: frozenset[str] | None
    build: Callable[[ImageTask, dict[str, Any], str], Augmentation]


_REGISTRY: list[_Entry] = []


def register_augmentation(tasks, models=None):
    """Declare ``build(task, hyperparameters, data) -> Augmentation`` for ``tasks`` (and only ``models``)."""

    def wrap(build):
        entry = _Entry(frozenset(tasks), frozenset(models) if models is not None else None, build)
        for e in _REGISTRY:
            overlap_models = e.models is None or entry.models is None or e.models & entry.models
            if e.tasks & entry.tasks and overlap_models:
                raise RuntimeError(f"augmentation preview declared twice for {sorted(t.value for t in e.tasks & entry.tasks)}")
        _REGISTRY.append(entry)
        return build

    return wrap


def _find(task: ImageTask, model: str) -> _Entry | None:
    for e in _REGISTRY:
        if task in e.tasks and (e.models is None or model in e.models):
            return e
    return None


def supported(task: ImageTask) -> list[str]:
    """The models of ``task`` whose augmentation can be previewed."""
    return [m for m in task.models if _find(task, m) is not None]


# --- displaying what the model receives --------------------------------------------------------

def tensor_to_image(x, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Image.Image:
    """A (3, H, W) tensor as the model receives it, shown as an RGB image: uint8 as it is; floats
    un-normalized with ``mean``/``std`` when given (else taken as [0, 1]) and clipped to [0, 1]."""
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy()))
    x = x.float()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def describe_steps(transform: Any) -> str:
    """The steps of a transform as its library prints them (objects without a readable form by class name)."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", lambda m: m.group(1).rsplit(".", 1)[-1], repr(transform))


def describe(builder: Callable, transform: Any = None) -> str:
    """What a transform does: its builder's docstring, then its steps."""
    text = inspect.getdoc(builder) or builder.__name__
    return text + ("\n\n" + describe_steps(transform) if transform is not None else "")


def _level_line(hp: Mapping[str, Any]) -> str:
    """The first line of a description: the augmentation level the samples are drawn at."""
    level = hps.augmentation_level(hp)
    return f"Augmentation level: {level} (the augmentation hyperparameter: none, light or default).\n\n"


def _records(data: str | os.PathLike, task: ImageTask):
    dataset = load_dataset(data, task)
    if not dataset.records:
        raise DataError(f"{data}: no images")
    return dataset


# --- classification ----------------------------------------------------------------------------

@register_augmentation(CLASSIFICATION_TASKS)
def _classification(task: ImageTask, hp: dict[str, Any], data: str) -> Augmentation:
    # The trainers' transforms (torchvision, seconds to import) only when previewing them; so below.
    from automl_vision.models.preprocessing import normalization, train_transform

    transform = train_transform(hp)  # at the trial's augmentation level, like the trainer's
    norm = normalization(hp)  # the weights' own mean/std, which the transform normalized with
    items = [PreviewItem(r.path, r.line, Annotations(list(r.labels))) for r in _records(data, task).records]

    def augment(item: PreviewItem, image: Image.Image) -> tuple[Image.Image, Annotations]:
        return (tensor_to_image(transform(image), tuple(norm["mean"]), tuple(norm["std"])),
                Annotations(list(item.annotations.labels)))

    return Augmentation(items, augment, _level_line(hp) + describe(train_transform, transform))


# --- detection and instance segmentation with torchvision's detectors ------------------------------

def _object_annotations(record, masks: bool) -> Annotations:
    w, h = record.width, record.height
    objs = record.objects
    boxes = np.asarray([o.box_pixels(w, h) for o in objs], dtype=np.float64).reshape(-1, 4)
    labels = [o.label + (" (crowd)" if o.is_crowd else "") for o in objs]
    m = np.stack([polygon_to_mask(o.polygons, w, h) for o in objs]) if masks and objs else None
    return Annotations(labels, boxes, m)


@register_augmentation(DETECTION_TASKS, TORCHVISION_DETECTORS)
def _torchvision_detector(task: ImageTask, hp: dict[str, Any], data: str) -> Augmentation:
    from automl_vision.models.detection import DetectorSettings  # torchvision: see _classification
    from automl_vision.training.detection_common import DetectionDataset, augment as detection_augment

    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    dataset = _records(data, task)
    classes = list(dataset.classes)
    tiling = DetectorSettings.from_hyperparameters(hp)
    # The trial's own training dataset: crowd objects left out, augmented at the trial's level (default: crop
    # around boxes, zoom out, flip); with a tile grid, the whole image and each of its tiles are samples of their own.
    level = hps.augmentation_level(hp)
    train = DetectionDataset(dataset.records, classes, masks=segmentation, train=True,
                             tile_grid=tiling.tile_grid_size, tile_overlap=tiling.tile_overlap_ratio,
                             augmentation=level)
    samples: dict[int, list[int]] = defaultdict(list)  # image -> its samples in the dataset (whole image first)
    for k, (i, _) in enumerate(train.items):
        samples[i].append(k)
    items = []
    for i, r in enumerate(dataset.records):
        items.append(PreviewItem(r.path, r.line, _object_annotations(r, segmentation), key=tuple(samples[i])))
    shown: dict[int, int] = defaultdict(int)  # draws so far per image: each draw takes the image's next sample

    def augment(item: PreviewItem, image: Image.Image) -> tuple[Image.Image, Annotations]:
        k = item.key[shown[item.key[0]] % len(item.key)]
        shown[item.key[0]] += 1
        x, target = train[k]
        labels = [classes[int(i) - 1] for i in target["labels"]]
        masks = target["masks"].numpy().astype(bool) if "masks" in target else None
        return tensor_to_image(x), Annotations(labels, target["boxes"].numpy(), masks)

    text = _level_line(hp) + describe(detection_augment) + (
        f"\n\nThen, inside the model, each image is normalized and resized so that its short side is "
        f"min_size={hp['min_size']} (long side at most max_size={hp['max_size']}); crowd objects are not "
        "training targets.")
    if tiling.tile_grid_size is not None:
        gx, gy = tiling.tile_grid_size
        text += (f"\n\nTiling (tile_grid_size={gx}x{gy}, tile_overlap_ratio={tiling.tile_overlap_ratio}): each "
                 f"image gives {1 + gx * gy} training samples, the whole image and its {gx * gy} tiles (boxes "
                 "clipped to the tile); the draws of a row go through them in turn.")
    return Augmentation(items, augment, text)


# --- yolov5: ultralytics' own training dataset ---------------------------------------------------

@register_augmentation({ImageTask.IMAGE_OBJECT_DETECTION}, YOLO_MODELS)
def _yolo(task: ImageTask, hp: dict[str, Any], data: str) -> Augmentation:
    from automl_vision.models.yolo import prepare_ultralytics  # torchvision: see _classification
    from automl_vision.training.yolo import ultralytics_overrides, write_yolo_dataset, yolo_augmentation

    dataset = _records(data, task)
    classes = list(dataset.classes)
    root = Path(tempfile.mkdtemp(prefix="automl-vision-preview-"))
    try:
        prepare_ultralytics()
        # ultralytics only after prepare_ultralytics, which sets it up to run offline (read at its import).
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_yolo_dataset
        from ultralytics.data.utils import check_det_dataset

        # The trial's YOLO dataset and ultralytics' arguments, so the augmentation is the trainer's own
        # (mosaic, random affine, HSV, flips at the trial's img_size and augmentation level).
        data_yaml, _ = write_yolo_dataset(root / "data", SimpleNamespace(train=dataset.records, validation=()), classes)
        cfg = get_cfg(overrides=ultralytics_overrides(hp, data_yaml, root / "project", "cpu", 0))
        train = build_yolo_dataset(cfg, str(root / "data" / "images" / "train"), hp["training_batch_size"],
                                   check_det_dataset(str(data_yaml)), mode="train", stride=32)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    where = {Path(f).name: i for i, f in enumerate(train.im_files)}
    items = []
    for k, r in enumerate(dataset.records):
        name = f"{k:06d}_{Path(r.path).name}"
        if name in where:
            items.append(PreviewItem(r.path, r.line, _object_annotations(r, False), key=where[name]))

    def augment(item: PreviewItem, image: Image.Image) -> tuple[Image.Image, Annotations]:
        sample = train[item.key]
        img = sample["img"]
        h, w = img.shape[-2:]
        xywh = sample["bboxes"].numpy().reshape(-1, 4) * (w, h, w, h)
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        labels = [classes[int(c)] for c in sample["cls"].view(-1)]
        return tensor_to_image(img), Annotations(labels, boxes)

    level = hps.augmentation_level(hp)
    mosaic = ("the trainer switches mosaic off for its last epochs" if level == "default"
              else "mosaic is off at this level")
    changed = ", ".join(f"{k} {v:.4g}" for k, v in yolo_augmentation(level).items())
    text = (_level_line(hp) + f"ultralytics' training augmentation at img_size={hp['img_size']} "
            + (f"with {changed} " if changed else "with ultralytics' own settings ")
            + f"({mosaic}; multi_scale, when set, varies the size per batch):\n\n" + describe_steps(train.transforms))
    return Augmentation(items, augment, text, close=lambda: shutil.rmtree(root, ignore_errors=True))


# --- the preview -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreviewResult:
    png: Path
    html: Path
    json: Path
    task: ImageTask
    model_name: str  # the first model shown
    images: int
    samples: int
    models: tuple[str, ...] = ()  # every model shown, in order


def search_space_models(task: ImageTask | str, search_space: Sequence[Mapping[str, Any]],
                        training_parameters: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The models a preview of a job shows: one per model family (models sharing one train-time
    augmentation) of its search space, in search-space order, each ``(model_name, hyperparameters)``:
    the job's training parameters and the values its search-space entry fixes (constants and
    single-value choices). The search space is checked as a job's is (ConfigError)."""
    task = parse_task(task)
    data = {"task": task.value, "training_data": "preview", "search_space": list(search_space or []),
            "training_parameters": dict(training_parameters or {})}
    try:
        job = parse_job(data, source="preview")
    except ConfigError:
        if search_space:
            raise
        # no search space, and settings the task's default model does not take (min_size, tiling for a
        # detector): only an AutoMode job can be so; its models are AutoMode's
        plan = automode_space(task, None, fixed=data["training_parameters"])
        job = parse_job({**data, "search_space": plan.entries, "limits": {"max_trials": 2}}, source="preview")
    given = {k: v for k, v in job.training_parameters.items() if k != "model_name"}
    chosen: list[tuple[str, dict[str, Any]]] = []
    families: list[_Entry] = []
    without: list[str] = []
    for entry in job.search_space or [{}]:
        m = entry.get("model_name")
        models = ([str(v) for v in m.values] if isinstance(m, Choice) else [str(m)] if m is not None
                  else [str(job.training_parameters.get("model_name", task.default_model))])
        fixed = {k: (v.values[0] if isinstance(v, Choice) else v) for k, v in entry.items()
                 if k != "model_name" and (not is_distribution(v) or (isinstance(v, Choice) and len(v.values) == 1))}
        for model in models:
            family = _find(task, model)
            if family is None:
                without.append(model)
            elif all(family is not f for f in families):
                families.append(family)
                chosen.append((model, {**given, **fixed}))
    if not chosen:
        ok = supported(task)
        raise ConfigError(f"no augmentation preview for the models of the search space ({', '.join(without)}); "
                          + (f"models with a preview: {', '.join(ok)}" if ok else "no model of this task has one yet"),
                          "preview")
    return chosen


def resolve_hyperparameters(task: ImageTask, model_name: str | None, given: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(given or {})
    if model_name is not None:
        values["model_name"] = model_name
    try:
        return hps.resolve(task, values)
    except ValueError as e:
        raise ConfigError(str(e).splitlines(), "preview") from None


def choose_items(items: list[PreviewItem], n: int, seed: int) -> list[PreviewItem]:
    """``n`` images taking turns over classes (by first label), in a seeded order: a preview shows
    every class before it shows a class twice."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[PreviewItem]] = defaultdict(list)
    for it in items:
        groups[it.annotations.labels[0] if it.annotations.labels else ""].append(it)
    queues = {k: [g[i] for i in rng.permutation(len(g))] for k, g in sorted(groups.items())}
    chosen: list[PreviewItem] = []
    while len(chosen) < min(n, len(items)):
        for k in list(queues):
            if queues[k] and len(chosen) < n:
                chosen.append(queues[k].pop(0))
    return chosen


def preview_rows(data: str | os.PathLike, task: ImageTask | str, *, count: int = 16, draws: int = DEFAULT_DRAWS,
                 model_name: str | None = None, hyperparameters: Mapping[str, Any] | None = None
                 ) -> tuple[list[PreviewItem], list[list[Tile]], dict[str, Any], Augmentation]:
    """The chosen images and, for each, its original and ``draws`` augmented versions as grid tiles."""
    try:
        task = parse_task(task)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None
    problems = [f"{name}={value} must be >= 1" for name, value in (("count", count), ("draws", draws)) if value < 1]
    try:
        hp = resolve_hyperparameters(task, model_name, hyperparameters)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems, "preview")
    entry = _find(task, hp["model_name"])
    if entry is None:
        ok = supported(task)
        raise ConfigError(f"no augmentation preview for model_name={hp['model_name']!r} of {task.value}: its "
                          "training transforms are not available; "
                          + (f"models with a preview: {', '.join(ok)}" if ok else "no model of this task has one yet"),
                          "preview")
    aug = entry.build(task, hp, str(data))
    items = aug.items
    draws = min(draws, count)
    chosen = choose_items(items, math.ceil(count / draws), hp["seed"])
    rows: list[list[Tile]] = []
    remaining = count
    # A private RNG stream: the same seed gives the same pictures, and the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp["seed"])
        state, np_state = random.getstate(), np.random.get_state()
        random.seed(hp["seed"])
        np.random.seed(hp["seed"] % 2**32)
        try:
            for it in chosen:
                try:
                    with Image.open(it.image_path) as im:
                        image = im.convert("RGB")
                except OSError as e:
                    raise DataError(f"line {it.line}: cannot read image {it.image_path}: {e}") from None
                row = [Tile(image, it.annotations, [_labels_text(it.annotations), f"original, {image.width}x{image.height}"])]
                for k in range(1, min(draws, remaining) + 1):
                    shown, ann = aug.augment(it, image)
                    row.append(Tile(shown, ann, [_labels_text(ann), f"draw {k}, {shown.width}x{shown.height}"]))
                remaining -= len(row) - 1
                rows.append(row)
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
            if aug.close is not None:
                aug.close()
    return chosen, rows, hp, aug


def _labels_text(ann: Annotations) -> str:
    if ann.boxes is None:
        return ", ".join(ann.labels) if ann.labels else "(no label)"
    n = len(ann.boxes)
    return f"{n} object{'s' if n != 1 else ''}"


def write_preview(data: str | os.PathLike, task: ImageTask | str, out_dir: str | os.PathLike, *, count: int = 16,
                  draws: int = DEFAULT_DRAWS, model_name: str | None = None,
                  hyperparameters: Mapping[str, Any] | None = None,
                  search_space: Sequence[Mapping[str, Any]] | None = None) -> PreviewResult:
    """Write the preview grid (PNG), its page (HTML, the PNG inline) and its layout (JSON) into ``out_dir``.

    One model: ``model_name`` (default: the task's) with ``hyperparameters``. A job's own models: its
    ``search_space``, ``hyperparameters`` being its training parameters: one model per model family
    (:func:`search_space_models`), ``count`` samples each; the page has a section per model, the PNG
    a block of rows per model."""
    try:
        task = parse_task(task)
    except ValueError as e:
        raise ConfigError(str(e), "--task") from None
    if search_space is not None:
        if model_name is not None:
            raise ConfigError("give model_name or search_space, not both", "preview")
        targets = search_space_models(task, search_space, hyperparameters)
    else:
        targets = [(model_name, dict(hyperparameters or {}))]
    shown = [preview_rows(data, task, count=count, draws=draws, model_name=name, hyperparameters=given)
             for name, given in targets]
    several = len(shown) > 1
    classes = sorted({lab for _, rows, _, _ in shown for row in rows for t in row for lab in t.annotations.labels})
    class_index = {c: i for i, c in enumerate(classes)}

    def titles(chosen: list[PreviewItem], hp: dict[str, Any], model: bool) -> list[str]:
        return [(f"{hp['model_name']}: " if model else "") + f"{Path(it.image_path).name} (line {it.line})"
                for it in chosen]

    all_rows = [row for _, rows, _, _ in shown for row in rows]
    grid, layout = compose_grid(all_rows, class_index, size=TILE_SIZE,
                                row_titles=[t for chosen, _, hp, _ in shown for t in titles(chosen, hp, several)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = H.image_png(grid)
    (out / PNG_FILE).write_bytes(png)
    samples, images = sum(len(r) - 1 for r in all_rows), len(all_rows)
    models = [hp["model_name"] for _, _, hp, _ in shown]
    first_hp, first_aug = shown[0][2], shown[0][3]
    placed = iter(layout.rows)
    meta = {
        "task": task.value, "model_name": models[0], "models": models, "seed": first_hp["seed"], "data": str(data),
        "images": images, "samples": samples, "tile_size": TILE_SIZE, "transform": first_aug.description,
        "transforms": {hp["model_name"]: aug.description for _, _, hp, aug in shown},
        "rows": [{"model_name": hp["model_name"], "image": it.image_path, "line": it.line,
                  "tiles": [{"kind": "original" if i == 0 else "augmented", "draw": i, **pos,
                             "labels": list(t.annotations.labels)}
                            for i, (t, pos) in enumerate(zip(row, next(placed)))]}
                 for chosen, rows, hp, _ in shown for it, row in zip(chosen, rows)],
    }
    (out / JSON_FILE).write_text(json.dumps(meta, indent=2))
    if several:  # on the page, a grid per model, each with its own transform under it
        parts = []
        for chosen, rows, hp, aug in shown:
            g, _ = compose_grid(rows, class_index, size=TILE_SIZE, row_titles=titles(chosen, hp, False))
            parts.append((hp, aug, H.image_png(g), len(rows), sum(len(r) - 1 for r in rows), g.size))
        page = _page_for_models(task, parts)
    else:
        page = _page(task, first_hp, first_aug, png, images, samples, grid.size)
    (out / HTML_FILE).write_text(page)
    log.info("preview of %d augmented samples from %d images (%s) written to %s", samples, images,
             ", ".join(models), out)
    return PreviewResult(out / PNG_FILE, out / HTML_FILE, out / JSON_FILE, task, models[0], images, samples,
                         tuple(models))


def _page_for_models(task: ImageTask, parts: list[tuple]) -> str:
    """The page of a job's preview: what is shown, then a section per model (its samples, its transform)."""
    models = [hp["model_name"] for hp, *_ in parts]
    intro = (H.cards([("task", task.value), ("models", ", ".join(models)),
                      ("images", sum(p[3] for p in parts)), ("augmented samples", sum(p[4] for p in parts))])
             + "<p>One section per model family of the job's search space, with the hyperparameters every trial "
               "of that model gets (the job's training_parameters and the values its search-space entry fixes). "
               "Each row is one training image: the original with its labels on the left, then independent draws "
               "of the train-time augmentation, exactly as the model receives them (same function, same "
               "hyperparameters, same output size). Colour normalization is undone for display only.</p>")
    sections = [H.Section("about", "What is shown", intro)]
    for k, (hp, aug, png, images, samples, size) in enumerate(parts):
        body = (f'<figure><img id="preview-grid{"" if k == 0 else f"-{k}"}" src="{H.png_data_uri(png)}" '
                f'alt="augmented training samples, {H.esc(hp["model_name"])}" width="{size[0]}" height="{size[1]}">'
                f'<figcaption>{H.esc(hp["model_name"])}: {samples} samples from {images} images; seed {hp["seed"]}: '
                "the same seed gives the same draws.</figcaption></figure>"
                "<h3>The train-time transform</h3>" + f"<pre>{H.esc(aug.description)}</pre>")
        sections.append(H.Section(f"model-{k}", hp["model_name"], body))
    return H.page(f"Augmentation preview: {task.value}, {', '.join(models)}",
                  "Training samples as each model of the job receives them", sections)


def _page(task: ImageTask, hp: dict[str, Any], aug: Augmentation, png: bytes, images: int, samples: int,
          size: tuple[int, int]) -> str:
    about = (
        H.cards([("task", task.value), ("model", hp["model_name"]), ("images", images),
                 ("augmented samples", samples)])
        + "<p>Each row is one training image: the original with its labels on the left, then independent "
          "draws of the train-time augmentation, exactly as the model receives them (same function, same "
          "hyperparameters, same output size). Colour normalization is undone for display only.</p>"
        + "<h3>The train-time transform</h3>"
        + f"<pre>{H.esc(aug.description)}</pre>"
    )
    samples_html = (f'<figure><img id="preview-grid" src="{H.png_data_uri(png)}" alt="augmented training samples" '
                    f'width="{size[0]}" height="{size[1]}"><figcaption>Seed {hp["seed"]}: the same seed gives '
                    "the same draws.</figcaption></figure>")
    return H.page(f"Augmentation preview: {task.value}, {hp['model_name']}",
                  "Training samples as the model receives them",
                  [H.Section("samples", "Samples", samples_html), H.Section("about", "What is shown", about)])
