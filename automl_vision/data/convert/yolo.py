"""YOLO txt labels -> JSONL, reading a dataset folder or an ultralytics data YAML as ultralytics does.

A data YAML's ``train``/``val``/``test`` are each a folder (all images under it), a txt file listing image
paths (``./x.jpg`` relative to the txt file's folder), a single image, or a list of those, relative to the
dataset root ``path:`` (default: the YAML's folder). The label file of an image is its path with the last
``/images/`` replaced by ``/labels/`` and the extension by ``.txt`` (beside the image when the path has no
``images`` folder). One object per line: ``class cx cy w h`` (detection) or ``class x1 y1 x2 y2 ...``
(segmentation), all normalized. Class names come from the YAML's ``names:`` (a list or {id: name}), a
names file (``classes.txt``, ``obj.names``: one per line) or ``--names``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from automl_vision.data.convert.common import Conversion, box_line, image_url, is_image
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

NAMES_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml", "data.yml")
DATA_YAMLS = ("data.yaml", "dataset.yaml", "data.yml")
SPLITS = ("train", "val", "test")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: a data YAML is a mapping (path, train, val, test, names)")
    return data


def names_from_yaml(path: Path, data: dict[str, Any]) -> list[str]:
    """``names:`` as a list or {id: name} (ids 0.. without gaps); with only ``nc:``, class_0.. as
    ultralytics names them; ``nc`` and ``names`` must agree."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: names must map class ids 0, 1, ... to names") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: names must number classes 0..{len(keys) - 1} without gaps")
        result = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, list):
        result = [str(n) for n in names]
    elif names is None and isinstance(data.get("nc"), int):
        result = [f"class_{i}" for i in range(data["nc"])]
    else:
        raise DataError(f"{path}: no names list (names: [a, b] or names: {{0: a, 1: b}})")
    nc = data.get("nc")
    if nc is not None and nc != len(result):
        raise DataError(f"{path}: nc: {nc!r} but names has {len(result)} classes; they must match")
    return result


def read_names(path: Path) -> list[str]:
    """Class names from a txt (one per line) or YAML (``names:`` as a list or {id: name}) file."""
    if path.suffix in (".yaml", ".yml"):
        return names_from_yaml(path, _load_yaml(path))
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def label_file(image: Path) -> Path:
    """As ultralytics' ``img2label_paths``: the last ``/images/`` of the path becomes ``/labels/`` and the
    extension ``.txt``; without an ``images`` folder in the path, the txt file beside the image."""
    text = os.path.abspath(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if a in text:
        head, tail = text.rsplit(a, 1)
        text = head + b + tail
    return Path(text.rsplit(".", 1)[0] + ".txt")


def dataset_root(yaml_file: Path, data: dict[str, Any]) -> Path:
    """The root ``path:`` of a data YAML (default: the YAML's folder). A relative one is looked for beside
    the YAML, then in the working folder (ultralytics' own first try), then it is the YAML's folder when
    that has the same name (the YAML kept inside its dataset folder)."""
    given = data.get("path")
    if not given:
        return yaml_file.parent
    path = Path(str(given))
    if path.is_absolute():
        if not path.is_dir():
            raise DataError(f"{yaml_file}: path: {given!r} is not a folder")
        return path
    tried = [yaml_file.parent / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    if yaml_file.parent.name == path.name:
        return yaml_file.parent
    raise DataError(f"{yaml_file}: path: {given!r} not found (looked for {tried[0]} and {tried[1]}); ultralytics "
                    "looks for a relative path in its own datasets folder, which is not known here: give an "
                    "absolute path, or keep the YAML beside (or inside) the dataset folder")


def _split_images(yaml_file: Path, root: Path, key: str, value: Any, conv: Conversion) -> list[Path]:
    """The images of one split entry (``train: ...``), as ultralytics lists them."""
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            conv.problems.append(f"{yaml_file}: {key}: {entry!r} must be a folder, a txt file of image paths or "
                                 "an image (or a list of those)")
            continue
        target = Path(os.path.normpath(root / entry))
        if not target.exists() and isinstance(value, str) and entry.startswith("../"):
            target = Path(os.path.normpath(root / entry[3:]))  # as ultralytics: Roboflow's "../train/images"
        if target.is_dir():
            images += sorted(p for p in target.rglob("*") if p.is_file() and is_image(p))
        elif target.is_file() and is_image(target):
            images.append(target)
        elif target.is_file():
            for number, line in enumerate(target.read_text(encoding="utf-8").splitlines(), start=1):
                line = line.strip()
                if not line or not is_image(Path(line)):
                    continue  # ultralytics keeps only image names
                path = target.parent / line[2:] if line.startswith("./") else Path(line)
                if not path.is_absolute():
                    path = root / path  # ultralytics reads these against the working folder
                path = Path(os.path.normpath(path))
                if path.is_file():
                    images.append(path)
                else:
                    conv.problems.append(f"{target}:{number}: image {line!r} not found at {path}")
        else:
            conv.problems.append(f"{yaml_file}: {key}: {entry!r} resolves to {target}, which does not exist")
    return sorted(images)


def yolo_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                  task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION,
                  names: str | os.PathLike | None = None, image_set: str | None = None) -> Conversion:
    """JSONL lines for a YOLO dataset: a data YAML (its train, val and test images, or only the split
    ``image_set``), or a folder (the data YAML in it when it names splits, else every image under it).
    Images without a label file have no objects."""
    if task.is_classification:
        raise DataError(f"YOLO txt labels hold detection or segmentation labels, not {task.value}")
    src = Path(source)
    if src.is_dir():
        found = next((src / n for n in DATA_YAMLS if (src / n).is_file()), None)
        if found is not None and any(_load_yaml(found).get(k) for k in SPLITS):
            src = found
    conv = Conversion()
    if src.is_file() and src.suffix in (".yaml", ".yml"):
        data = _load_yaml(src)
        root = dataset_root(src, data)
        class_names = read_names(Path(names)) if names else names_from_yaml(src, data)
        names_file = Path(names) if names else src
        present = [k for k in SPLITS if data.get(k)]
        if image_set is not None and image_set not in present:
            raise DataError(f"{src}: no {image_set}: entry; this YAML lists: {', '.join(present) or 'none'}")
        if not present:  # a YAML naming classes only: every image under its root
            images = sorted(p for p in root.rglob("*") if p.is_file() and is_image(p))
        else:
            images, seen, counts = [], set(), []
            for key in [image_set] if image_set else present:
                split = [p for p in _split_images(src, root, key, data[key], conv) if p not in seen]
                seen.update(split)
                images += split
                counts.append(f"{key} {len(split)}")
            conv.notes.append(f"images from {src}: {', '.join(counts)}"
                              + ("; --image-set train (or val, test) converts one split" if len(counts) > 1 else ""))
            conv.raise_if_problems(str(src))
    else:
        if image_set is not None:
            raise DataError(f"{src}: --image-set needs a data YAML with train/val/test entries")
        root = src
        if not root.is_dir():
            raise DataError(f"{root}: not a folder or a data YAML")
        names_file = Path(names) if names else next((root / n for n in NAMES_FILES if (root / n).is_file()), None)
        if names_file is None:
            raise DataError(f"{root}: no class-name file ({', '.join(NAMES_FILES)}); pass one with --names")
        class_names = read_names(names_file)
        images = sorted(p for p in root.rglob("*") if p.is_file() and is_image(p))
    if not class_names:
        raise DataError(f"{names_file}: no class names")
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    out_dir = Path(out_dir)
    if not images:
        raise DataError(f"{root}: no images")
    without = 0
    for image in images:
        label_path = label_file(image)
        objects = []
        if not label_path.is_file():
            without += 1
        else:
            for number, text in enumerate(label_path.read_text().splitlines(), start=1):
                where = f"{label_path}:{number}"
                tokens = text.split()
                if not tokens:
                    continue
                try:
                    cls = int(tokens[0])
                    values = [float(t) for t in tokens[1:]]
                except ValueError:
                    conv.problems.append(f"{where}: {text.strip()!r} must be 'class x y ...' with numbers")
                    continue
                if not 0 <= cls < len(class_names):
                    conv.problems.append(f"{where}: class id {cls} is not a known class (the names file "
                                         f"{names_file} has ids 0..{len(class_names) - 1})")
                    continue
                name = class_names[cls]
                if len(values) == 4:
                    if segmentation:
                        conv.problems.append(f"{where}: a box (class cx cy w h) where instance segmentation "
                                             "needs a polygon (class x1 y1 x2 y2 x3 y3 ...)")
                        continue
                    cx, cy, w, h = values
                    objects.append(box_line(name, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                elif len(values) >= 6 and len(values) % 2 == 0:
                    xs, ys = values[0::2], values[1::2]
                    objects.append(box_line(name, min(xs), min(ys), max(xs), max(ys), False,
                                            [values] if segmentation else None))
                else:
                    conv.problems.append(f"{where}: {len(values)} numbers after the class id; expected 4 (a box) "
                                         "or an even count of at least 6 (a polygon)")
        conv.lines.append({"image_url": image_url(image, out_dir), "label": objects})
    if without:
        conv.notes.append(f"{without} images have no label file: converted as images without objects")
    return conv
