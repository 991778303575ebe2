"""Pascal VOC -> JSONL, for the layouts VOC-style datasets are published in.

The XML files are in ``Annotations/`` (or ``annotations/``) or, when the dataset has no such folder,
anywhere under the source folder (images beside their XML, as Roboflow and LabelImg write them). Each
XML's image is found the way the XML says: ``<filename>``, then ``<path>``, then the XML's own name,
looked for in ``--images-dir``, ``JPEGImages/`` or ``images/`` and the XML's own folder. Optionally,
instance masks are in ``SegmentationObject/<name>.png`` (pixel value k = the k-th object).

``<difficult>`` is not a crowd flag: difficult objects stay ordinary objects (or are left out with
``skip_difficult``). Boxes are divided by the size in the XML (``topX = xmin / width``); validation
then compares that size with the real image.
"""

from __future__ import annotations

import os
from glob import escape as glob_escape
import xml.etree.ElementTree as ET
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image

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


ANNOTATION_FOLDERS = ("Annotations", "annotations")
IMAGE_FOLDERS = ("JPEGImages", "images")


def _child_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that is a folder in ``root`` (exact spelling first, then any letter case)."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = {n.lower() for n in names}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and child.name.lower() in wanted:
            return child
    return None


def _path_names(path_text: str) -> tuple[str, str]:
    """``<path>`` as written (posix slashes) and its last component, for Windows paths too."""
    posix = path_text.replace("\\", "/")
    return posix, PureWindowsPath(path_text).name


def _find_image(folders: list[Path], xml: Path, root: Path, filename: str | None,
                path_text: str | None) -> tuple[Path | None, list[str]]:
    """The image of one XML, and the names tried (for the message when there is none).

    In order: ``<filename>`` in each folder; ``<path>`` as written (absolute, or relative to the XML's
    folder, then to the dataset root); the last component of ``<path>`` in each folder (annotation tools
    write the annotator's own absolute path); then ``<stem>.*`` in each folder, the stem being that of
    ``<filename>`` (another extension), or the XML's own when the XML names no image at all.
    """
    tried: list[str] = []
    if filename:
        tried.append(f"<filename> {filename!r}")
        for folder in folders:
            if (folder / filename).is_file():
                return folder / filename, tried
    if path_text:
        posix, last = _path_names(path_text)
        tried.append(f"<path> {path_text!r}")
        candidates = [Path(posix)] if os.path.isabs(posix) else [xml.parent / posix, root / posix]
        for candidate in candidates:
            if candidate.is_file():
                return candidate, tried
        if last and last != filename:
            for folder in folders:
                if (folder / last).is_file():
                    return folder / last, tried
    stems = []
    if filename:
        stems.append(Path(filename).stem if Path(filename).suffix.lower() in IMAGE_EXTENSIONS else filename)
    if not filename and not path_text:  # the XML names no image: the image is named as the XML is
        stems.append(xml.stem)
    for stem in dict.fromkeys(stems):
        tried.append(f"{stem}.* (any image extension)")
        for folder in folders:
            for candidate in sorted(folder.glob(glob_escape(stem) + ".*")):
                if is_image(candidate) and candidate.is_file():
                    return candidate, tried
    return None, tried


def voc_to_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                 task: ImageTask = ImageTask.IMAGE_OBJECT_DETECTION, image_set: str | None = None,
                 images_dir: str | os.PathLike | None = None, masks_dir: str | os.PathLike | None = None,
                 skip_difficult: bool = False) -> Conversion:
    """JSONL lines for a VOC-style folder: ``Annotations/`` or ``annotations/`` (else every XML under
    ``source``, images beside them), images found as ``_find_image`` says.

    ``image_set`` converts only the images listed in ``ImageSets/Main/<image_set>.txt``. For
    instance segmentation the masks come from ``masks_dir`` (default ``SegmentationObject/``).
    """
    if task.is_classification:
        raise DataError(f"Pascal VOC annotations hold detection or segmentation labels, not {task.value}")
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give the dataset folder, or the folder of its XML files)")
    ann_dir = _child_folder(root, ANNOTATION_FOLDERS) or root
    if images_dir is not None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise DataError(f"--images-dir {images_dir}: not a folder")
    image_roots = [f for f in (images_dir, _child_folder(root, IMAGE_FOLDERS)) if f is not None]
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
            raise DataError([f"{listing}: {w!r} has no annotation file {ann_dir / (w + '.xml')}" for w in missing])
        xmls = [by_stem[w] for w in wanted]
    if not xmls:
        raise DataError(f"{root}: no .xml annotation files (looked in {ann_dir}"
                        + (")" if ann_dir != root else " and its sub-folders; a VOC dataset has Annotations/ "
                           "or annotations/ with one XML per image, or the XML files beside the images)"))
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
        folders = list(dict.fromkeys([f / sub for f in image_roots] + [xml.parent]))
        image, tried = _find_image(folders, xml, root, _text(tree, "filename"), _text(tree, "path"))
        if image is None:
            conv.problems.append(f"{where}: image not found: tried {', '.join(tried)} in "
                                 f"{', '.join(str(f) for f in folders)}"
                                 + ("" if images_dir is not None
                                    else "; pass --images-dir if the images are elsewhere"))
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
