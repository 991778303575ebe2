"""Pascal VOC -> JSONL: ``Annotations/**/*.xml`` with images in ``JPEGImages/`` (same sub-folders) and,
optionally, instance masks in ``SegmentationObject/<name>.png`` (pixel value k = the k-th object).

``<difficult>`` is not a crowd flag: difficult objects stay ordinary objects (or are left out with
``skip_difficult``). Boxes are divided by the size in the XML (``topX = xmin / width``); validation
then compares that size with the real image.
"""

from __future__ import annotations

import os
from glob import escape as glob_escape
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from automl_vision.data.convert.common import (
    Conversion,
    box_line,
    details,
    image_size,
    image_url,
    is_image,
    mask_to_polygons,
    normalize_ring,
)
from automl_vision.data.images import IMAGE_EXTENSIONS
from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _number(node: ET.Element, tag: str) -> float | None:
    text = _text(node, tag)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _find_image(images_dir: Path, sub: Path, filename: str | None, stem: str) -> Path | None:
    folder = images_dir / sub
    if filename:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
        stem = Path(filename).stem if Path(filename).suffix.lower() in IMAGE_EXTENSIONS else filename
    for candidate in sorted(folder.glob(glob_escape(stem) + ".*")):
        if is_image(candidate):
            return candidate
    return None


def voc_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                 task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION, image_set: str | None = None,
                 images_dir: str | os.PathLike | None = None, masks_dir: str | os.PathLike | None = None,
                 skip_difficult: bool = False) -> Conversion:
    """JSONL lines for a VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<set>.txt``).

    ``image_set`` converts only the images listed in ``ImageSets/Main/<image_set>.txt``. For
    instance segmentation the masks come from ``masks_dir`` (default ``SegmentationObject/``).
    """
    if task.is_classification:
        raise DataError(f"Pascal VOC annotations hold detection or segmentation labels, not {task.value}")
    root = Path(source)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"{root}: no Annotations/ folder (a Pascal VOC dataset has Annotations/ and JPEGImages/)")
    images_dir = Path(images_dir) if images_dir is not None else root / "JPEGImages"
    masks = Path(masks_dir) if masks_dir is not None else root / "SegmentationObject"
    segmentation = task is ImageTask.IMAGE_INSTANCE_SEGMENTATION
    if segmentation and not masks.is_dir():
        raise DataError(f"{root}: instance segmentation needs instance masks in {masks}/")
    xmls = sorted(ann_dir.rglob("*.xml"))
    if image_set is not None:
        listing = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not listing.is_file():
            raise DataError(f"{root}: image set {image_set!r} not found at {listing}")
        wanted = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        by_stem = {x.relative_to(ann_dir).with_suffix("").as_posix(): x for x in xmls}
        missing = [w for w in wanted if w not in by_stem]
        if missing:
            raise DataError([f"{listing}: {w!r} has no Annotations/{w}.xml" for w in missing])
        xmls = [by_stem[w] for w in wanted]
    if not xmls:
        raise DataError(f"{ann_dir}: no .xml annotation files")
    out_dir = Path(out_dir)
    conv = Conversion()
    difficult_kept = 0
    empty: list[str] = []
    for xml in xmls:
        where = str(xml)
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            conv.problems.append(f"{where}: not valid XML ({e})")
            continue
        sub = xml.parent.relative_to(ann_dir)  # sub-folders are kept, so equal file names never collide
        image = _find_image(images_dir, sub, _text(tree, "filename"), xml.stem)
        if image is None:
            conv.problems.append(f"{where}: no image named {_text(tree, 'filename') or xml.stem} in {images_dir / sub}")
            continue
        size = tree.find("size")
        width = _number(size, "width") if size is not None else None
        height = _number(size, "height") if size is not None else None
        if not width or not height:
            real = image_size(image)
            if real is None:
                conv.problems.append(f"{where}: <size> missing and the image {image} cannot be read")
                continue
            width, height = real
        instance_mask = None
        mask_file = masks / sub / (xml.stem + ".png")
        if mask_file.is_file():
            from PIL import Image

            with Image.open(mask_file) as m:
                instance_mask = np.asarray(m)
            if instance_mask.shape[:2] != (int(height), int(width)):
                conv.problems.append(f"{mask_file}: mask is {instance_mask.shape[1]}x{instance_mask.shape[0]}, "
                                     f"the annotation says {int(width)}x{int(height)}")
                continue
        elif segmentation:
            conv.problems.append(f"{where}: no instance mask {mask_file}")
            continue
        objects = []
        for k, obj in enumerate(tree.findall("object"), start=1):
            name = _text(obj, "name")
            if not name:
                conv.problems.append(f"{where}: object {k} has no <name>")
                continue
            if _text(obj, "difficult") == "1":
                if skip_difficult:
                    continue
                difficult_kept += 1
            bb = obj.find("bndbox")
            coords = [_number(bb, t) if bb is not None else None for t in ("xmin", "ymin", "xmax", "ymax")]
            if any(c is None for c in coords):
                conv.problems.append(f"{where}: object {k} ({name}): <bndbox> needs numeric xmin, ymin, xmax, ymax")
                continue
            x1, y1, x2, y2 = coords
            if x2 < x1 or y2 < y1:
                conv.problems.append(f"{where}: object {k} ({name}): <bndbox> xmin {x1:g}, ymin {y1:g}, xmax {x2:g}, "
                                     f"ymax {y2:g}: xmax must be >= xmin and ymax >= ymin")
                continue
            if x2 == x1 or y2 == y1:  # a box of no area: nothing to learn from, and the JSONL schema refuses it
                empty.append(f"{where} object {k} ({name})")
                continue
            polygons = None
            if segmentation and instance_mask is not None:
                rings = mask_to_polygons(instance_mask == k)
                if not rings:
                    conv.problems.append(f"{mask_file}: object {k} ({name}) has no pixels of value {k}")
                    continue
                polygons = [normalize_ring(r, int(width), int(height)) for r in rings]
            objects.append(box_line(name, x1 / width, y1 / height, x2 / width, y2 / height, False, polygons))
        conv.lines.append({"image_url": image_url(image, out_dir), "image_details": details(image, width, height),
                           "label": objects})
    if empty:
        shown = "; ".join(empty[:5]) + (f"; and {len(empty) - 5} more" if len(empty) > 5 else "")
        conv.notes.append(f"{len(empty)} object(s) with an empty box (xmax == xmin or ymax == ymin) left out: {shown}")
    if difficult_kept:
        conv.notes.append(f"{difficult_kept} objects marked <difficult> kept as ordinary objects (not crowd); "
                          "--skip-difficult leaves them out")
    return conv
