"""COCO <-> JSONL. Boxes (``[x, y, w, h]`` in pixels) become fractions of each image's own size (never
guessed to be normalized already); polygons, RLE (compressed or not) and ``iscrowd`` are kept."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.data.convert.common import (
    Conversion,
    box_line,
    details,
    image_size,
    image_url,
    mask_to_polygons,
    normalize_ring,
)
from automl_vision.data.records import Dataset
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file is a JSON object with images, annotations, categories")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def decode_rle(segmentation: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A COCO RLE (``counts`` a list: uncompressed; a string: compressed) as an HxW bool mask."""
    from pycocotools import mask as mask_utils  # only for COCO masks (about 0.4 s to import)

    counts = segmentation.get("counts")
    size = segmentation.get("size") or [height, width]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(segmentation, size[0], size[1])
    elif isinstance(counts, (str, bytes)):
        rle = {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError("RLE counts must be a list (uncompressed) or a string (compressed)")
    return mask_utils.decode(rle).astype(bool)


def image_folders(path: Path, images_dir: Path | None) -> list[Path]:
    """Where ``file_name`` values may be relative to: ``--images-dir`` when given (and its parent, for
    ``file_name``s that start with the folder's own name, as ``train2017/x.jpg`` under ``.../train2017``);
    else the COCO file's folder, its parent, and the parent's ``<split>/``, ``images/<split>/`` and
    ``images/``, ``<split>`` taken from the file name as COCO names it (``instances_train2017.json``)."""
    if images_dir is not None:
        return [images_dir, images_dir.parent]
    parent = path.parent.parent
    split = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
    folders = [path.parent, parent, parent / split, parent / "images" / split, parent / "images"]
    return list(dict.fromkeys(folders))


def _locate(folders: list[Path], file_name: str, images_dir: Path | None) -> Path | None:
    for i, folder in enumerate(folders):
        if images_dir is not None and i == 1 and Path(file_name).parts[:1] != (images_dir.name,):
            continue  # the parent of --images-dir only for a file_name that starts with its name
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def coco_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                  task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION,
                  images_dir: str | os.PathLike | None = None) -> Conversion:
    """JSONL lines for a COCO annotation file; image ``file_name``s (sub-folders kept) are found as
    ``image_folders`` says. Images without annotations become lines with no objects."""
    if task.is_classification:
        raise DataError(f"COCO files hold detection or segmentation labels, not {task.value}")
    path = Path(source)
    data = _load(path)
    src = str(path)
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"--images-dir {images_dir}: not a folder")
    folders = image_folders(path, images_dir)
    out_dir = Path(out_dir)
    conv = Conversion()
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION

    categories: dict[Any, str] = {}
    names_seen: dict[str, Any] = {}
    for i, cat in enumerate(data.get("categories") or []):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            conv.problems.append(f"{src}: categories[{i}] must have an id and a name")
            continue
        if cat["name"] in names_seen and names_seen[cat["name"]] != cat["id"]:
            conv.problems.append(f"{src}: categories[{i}]: name {cat['name']!r} is used by ids "
                                 f"{names_seen[cat['name']]} and {cat['id']}")
        names_seen[cat["name"]] = cat["id"]
        categories[cat["id"]] = cat["name"]
    images: dict[Any, dict[str, Any]] = {}
    order = []
    for i, im in enumerate(data.get("images") or []):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            conv.problems.append(f"{src}: images[{i}] must have an id and a file_name")
            continue
        if im["id"] in images:
            conv.problems.append(f"{src}: images[{i}]: id {im['id']} is used twice")
            continue
        file = _locate(folders, im["file_name"], images_dir)
        if file is None:
            looked = ", ".join(str(f) for f in folders)
            conv.problems.append(f"{src}: images[{i}] ({im['file_name']}): image not found; looked in {looked}"
                                 + ("" if images_dir is not None else "; pass --images-dir with the folder "
                                    "file_name is relative to"))
            continue
        width, height = im.get("width"), im.get("height")
        if not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
            size = image_size(file)
            if size is None:
                conv.problems.append(f"{src}: images[{i}] ({im['file_name']}): width/height missing and the image "
                                     f"cannot be read at {file}")
                continue
            width, height = size
        images[im["id"]] = {"file_name": im["file_name"], "file": file, "width": int(width), "height": int(height)}
        order.append(im["id"])
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{src}: annotations must be a list")

    objects: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for i, ann in enumerate(data.get("annotations") or []):
        where = f"{src}: annotations[{i}]"
        if not isinstance(ann, dict):
            conv.problems.append(f"{where} must be an object")
            continue
        where += f" (id {ann.get('id')})"
        im = images.get(ann.get("image_id"))
        if im is None:
            conv.problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in images")
            continue
        name = categories.get(ann.get("category_id"))
        if name is None:
            conv.problems.append(f"{where}: category_id {ann.get('category_id')!r} is not in categories")
            continue
        w, h = im["width"], im["height"]
        seg = ann.get("segmentation")
        rings: list[list[float]] | None = None
        mask_box = None
        if segmentation or "bbox" not in ann:
            try:
                if isinstance(seg, dict):
                    mask = decode_rle(seg, h, w)
                    rings = mask_to_polygons(mask)
                    if mask.any():
                        ys, xs = np.nonzero(mask)
                        mask_box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                    float(ys.max() - ys.min() + 1)]
                elif isinstance(seg, list) and seg:
                    rings = [list(map(float, r)) for r in seg]
                elif segmentation:
                    conv.problems.append(f"{where}: no segmentation; {task.value} needs one for every object")
                    continue
            except (ValueError, TypeError) as e:
                conv.problems.append(f"{where}: cannot read segmentation ({e})")
                continue
            if rings is not None and not rings:
                conv.problems.append(f"{where}: the segmentation mask is empty or too small for a polygon")
                continue
        bbox = ann.get("bbox", mask_box)
        if bbox is None and rings:
            xs = [v for r in rings for v in r[0::2]]
            ys = [v for r in rings for v in r[1::2]]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            conv.problems.append(f"{where}: bbox={bbox!r} must be [x, y, width, height] in pixels")
            continue
        x, y, bw, bh = map(float, bbox)
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            conv.problems.append(f"{where}: iscrowd={crowd!r} must be 0 or 1")
            continue
        polys = [normalize_ring(r, w, h) for r in rings] if (segmentation and rings) else None
        objects[ann["image_id"]].append(box_line(name, x / w, y / h, (x + bw) / w, (y + bh) / h, bool(crowd), polys))

    for image_id in order:
        im = images[image_id]
        file = im["file"]  # subfolders in file_name are kept
        conv.lines.append({"image_url": image_url(file, out_dir),
                           "image_details": details(file, im["width"], im["height"]),
                           "label": objects.get(image_id, [])})
    return conv


def jsonl_to_coco(dataset: Dataset, *, images_dir: str | os.PathLike | None = None,
                  categories: list[str] | None = None) -> dict[str, Any]:
    """A COCO dict (as pycocotools' COCO and COCOeval read it) of a detection/segmentation dataset.

    Category ids are 1.. in ``categories`` order (default: sorted class names); image ids 1.. in
    record order. Boxes and polygons are in pixels of each image's size.
    """
    if dataset.task.is_classification:
        raise DataError(f"COCO export needs detection or segmentation data, not {dataset.task.value}")
    names = list(categories) if categories is not None else list(dataset.classes)
    ids = {name: i + 1 for i, name in enumerate(names)}
    missing_cls = sorted({o.label for r in dataset.records for o in r.objects} - set(ids))
    problems = [f"class {c!r} is not in the given categories" for c in missing_cls]
    out_images, annotations = [], []
    for image_id, r in enumerate(dataset.records, start=1):
        if not r.width or not r.height:
            problems.append(f"{r.source}:{r.line}: image size unknown; add image_details or make the image readable")
            continue
        if images_dir is not None and not r.uri.startswith("s3://"):
            file_name = Path(os.path.relpath(r.path, images_dir)).as_posix()
        else:
            file_name = r.image_url
        out_images.append({"id": image_id, "file_name": file_name, "width": r.width, "height": r.height})
        for o in r.objects:
            if o.label not in ids:
                continue
            x1, y1, x2, y2 = o.box_pixels(r.width, r.height)
            ann: dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[o.label],
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(o.is_crowd)}
            if o.polygons:
                rings = o.polygons_pixels(r.width, r.height)
                ann["segmentation"] = rings
                ann["area"] = polygon_area(rings, r.width, r.height)
            else:
                ann["segmentation"] = []
                ann["area"] = (x2 - x1) * (y2 - y1)
            annotations.append(ann)
    if problems:
        raise DataError(problems, dataset.source)
    return {"info": {"description": f"exported from {dataset.source}"}, "images": out_images,
            "annotations": annotations,
            "categories": [{"id": ids[n], "name": n, "supercategory": "none"} for n in names]}


def polygon_area(rings: list[list[float]], width: int, height: int) -> float:
    """Pixel area of rings combined with XOR (a ring inside another is a hole), rasterized as COCO does."""
    from pycocotools import mask as mask_utils  # only for COCO masks (about 0.4 s to import)

    rles = mask_utils.frPyObjects([list(map(float, r)) for r in rings], height, width)
    if len(rles) == 1:
        return float(mask_utils.area(rles[0]))
    combined = np.zeros((height, width), dtype=bool)
    for rle in rles:
        combined ^= mask_utils.decode(rle).astype(bool)
    return float(combined.sum())
