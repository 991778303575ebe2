"""Validating a dataset: schema, locations, files, images and classes, every problem collected.

``validate_dataset`` never raises for a problem in the data: it returns the records it could build
and a report listing what is wrong, which the caller shows (``automl-vision data validate``) or
turns into an error (``load_dataset``). With ``on_invalid="skip"`` invalid images and objects are
left out and the report says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import logging
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl_vision.data import problems as P
from automl_vision.data.images import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    ImageCheckError,
    ImageInfo,
    inspect_image,
)
from automl_vision.data.problems import InvalidDataError, Problem, show
from automl_vision.data.records import TRAIN, VALIDATION, Dataset, ImageRecord
from automl_vision.data.jsonl import local_jsonl
from automl_vision.data.schema import LineParser, ParsedLine
from automl_vision.data.split import plan_split, split_records
from automl_vision.data.storage import (
    FetchError,
    FetchStats,
    JsonlFile,
    Location,
    LocationError,
    StorageConfig,
    default_cache_dir,
    fetch_all,
    redact_url,
    resolve_url,
    storage_from_environment,
)
from automl_vision.errors import ConfigError, DataError
from automl_vision.spec.tasks import ImageTask, parse_task

log = logging.getLogger(__name__)

FAIL, SKIP = "fail", "skip"
RECOMMENDED_MIN_IMAGES = 10


@dataclass(frozen=True)
class ValidationOptions:
    """What to check and what to do with invalid data.

    on_invalid: ``fail`` (default) reports and refuses; ``skip`` leaves out invalid images and
    objects and reports what it left out. check_files: local images exist, remote ones are fetched
    into ``cache_dir``. check_images: read each image's header (format, size, pixel limit,
    agreement with image_details); decode_images: also decode it fully (truncated or corrupt files).
    max_aspect_ratio and input_size: an image whose longer side is over max_aspect_ratio times its shorter
    one, or that would have over ``images.MAX_RESIZED_PIXELS`` pixels once its shorter side is resized to
    input_size, is refused (a thin image a few KB large can otherwise ask gigabytes when a model resizes it).
    """

    on_invalid: str = FAIL
    check_files: bool = True
    check_images: bool = True
    decode_images: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    input_size: int = DEFAULT_INPUT_SIZE
    classes: tuple[str, ...] | None = None  # the allowed class names; None: any
    data_root: str | None = None  # relative image_url must stay inside; default: the JSONL's folder
    cache_dir: str | None = None  # for remote images; default ~/.cache/automl-vision/images
    workers: int = 8  # threads checking images
    storage: StorageConfig | None = None  # default: from the environment, when a remote image is met
    allow_remote: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.on_invalid not in (FAIL, SKIP):
            problems.append(f"on_invalid={self.on_invalid!r} must be {FAIL} or {SKIP}")
        if self.max_pixels < 1:
            problems.append(f"max_pixels={self.max_pixels} must be >= 1")
        if self.workers < 1:
            problems.append(f"workers={self.workers} must be >= 1")
        if not self.max_aspect_ratio >= 1:
            problems.append(f"max_aspect_ratio={self.max_aspect_ratio} must be >= 1")
        if self.input_size < 1:
            problems.append(f"input_size={self.input_size} must be >= 1")
        if problems:
            raise ConfigError(problems)


@dataclass
class ValidationReport:
    task: ImageTask
    files: list[str]
    on_invalid: str
    lines: int = 0  # non-blank lines read
    images: int = 0  # images kept
    objects: int = 0  # objects kept
    objects_read: int = 0  # objects found in the lines that could be read, valid or not
    problems: list[Problem] = field(default_factory=list)
    skipped_images: int = 0
    skipped_objects: int = 0
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    fetch: FetchStats | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the dataset can be used: no problem, or every problem was skipped."""
        if self.images == 0:
            return False
        return not self.problems or self.on_invalid == SKIP

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "task": self.task.value, "files": self.files, "on_invalid": self.on_invalid,
            "lines": self.lines, "images": self.images, "objects": self.objects, "objects_read": self.objects_read,
            "skipped": {"images": self.skipped_images, "objects": self.skipped_objects},
            "problem_counts": dict(Counter(p.code for p in self.problems)),
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings, "stats": self.stats,
            "fetch": dataclasses.asdict(self.fetch) if self.fetch else None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ValidationResult:
    dataset: Dataset
    report: ValidationReport

    def raise_if_invalid(self) -> Dataset:
        """The dataset, or InvalidDataError listing every problem."""
        if not self.report.ok:
            problems = self.report.problems or [Problem(P.NO_IMAGES, "no images", ", ".join(self.report.files))]
            if self.report.images == 0 and self.report.on_invalid == SKIP and self.report.problems:
                problems = problems + [Problem(P.NO_IMAGES, "no valid images left after skipping the invalid ones",
                                               ", ".join(self.report.files))]
            raise InvalidDataError(problems, report=self.report)
        return self.dataset


@dataclass(slots=True)
class _Item:
    parsed: ParsedLine
    file: str
    file_index: int
    location: Location | None = None
    path: str | None = None  # local file to read
    info: ImageInfo | None = None
    root: str | None = None  # the data root a relative local image_url must stay in, links resolved


def _read_lines(path: Path, file: str, task: ImageTask, problems: list[Problem]) -> tuple[list[ParsedLine], int]:
    parser = LineParser(task, file, problems)
    parsed: list[ParsedLine] = []
    lines = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            lines += 1
            item = parser.parse_text(raw, number, pretty_hint=stripped in (b"{", b"["))
            if item is not None:
                parsed.append(item)
    return parsed, lines


def validate_dataset(training: str | os.PathLike, task: ImageTask | str, *,
                     validation: str | os.PathLike | None = None,
                     options: ValidationOptions | None = None,
                     split_ratio: float | None = None, seed: int = 0) -> ValidationResult:
    """Check one JSONL file (and an optional validation file) for ``task``; never raises for bad data
    (only for a file that cannot be read). Each file is a path or an ``s3://bucket/key`` object (see
    ``jsonl.local_jsonl``); problems name it as given. With ``validation`` the records are split by
    file; else with ``split_ratio`` they are split seeded and stratified (see ``split_records``)."""
    with _collector_paused():
        return _validate(training, parse_task(task), validation, options or ValidationOptions(), split_ratio, seed)


@contextlib.contextmanager
def _collector_paused():
    """Reading builds millions of small objects that have no cycles; Python's cycle collector would
    re-scan them over and over (about a third of the time on large files). It is switched back on after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _validate(training, task: ImageTask, validation, options: ValidationOptions, split_ratio: float | None,
              seed: int) -> ValidationResult:
    t0 = time.monotonic()
    sources = [training] + ([validation] if validation is not None else [])
    if options.storage is None and any(_is_uri(s) for s in sources):
        options = dataclasses.replace(options, storage=storage_from_environment())
    jsonls = [local_jsonl(s, config=options.storage, cache_dir=options.cache_dir) for s in sources]
    files = [j.name for j in jsonls]
    problems: list[Problem] = []
    report = ValidationReport(task, files, options.on_invalid)
    items: list[_Item] = []
    for index, (jsonl, file) in enumerate(zip(jsonls, files)):
        parsed, lines = _read_lines(jsonl.path, file, task, problems)
        report.lines += lines
        base_dir = jsonl.base
        data_root = _data_root(options.data_root, jsonl)
        storage = options.storage
        for pl in parsed:
            item = _Item(pl, file, index)
            items.append(item)
            if pl.image_url is None:  # missing, or its own problem already reported
                continue
            if not options.allow_remote and "://" in pl.image_url:
                problems.append(Problem(P.UNSUPPORTED_URI, f"remote image_url {pl.image_url!r} is not supported by "
                                        "this reader yet; use a local path, or load_dataset() which fetches "
                                        "remote images", file, pl.line, "image_url", pl.image_url))
                pl.bad = True
                continue
            if storage is None and "://" in pl.image_url:
                storage = options.storage or storage_from_environment()
            try:
                item.location = resolve_url(pl.image_url, base_dir, data_root, storage)
                if item.location.is_local and "://" not in pl.image_url and not os.path.isabs(pl.image_url):
                    item.root = data_root
            except LocationError as e:
                shown = redact_url(pl.image_url) if "://" in pl.image_url else pl.image_url  # no password in reports
                problems.append(Problem(e.code, str(e), file, pl.line, "image_url", shown))
                pl.bad = True
        options = dataclasses.replace(options, storage=storage) if storage is not options.storage else options

    _check_duplicates(items, problems)
    if options.check_files:
        report.fetch = _check_files(items, options, problems)
        if options.check_images:
            _check_images(items, options, problems)
    _check_classes(items, options, problems, has_validation=validation is not None)

    problems.sort(key=lambda p: (files.index(p.file) if p.file in files else 0, p.line or 0))
    report.problems = problems
    records = _build_records(items, report, options)
    if validation is not None:
        records = [dataclasses.replace(r, split=TRAIN if r.source == files[0] else VALIDATION) for r in records]
    plan = None
    if validation is None and split_ratio is not None and records and (not problems or options.on_invalid == SKIP):
        try:
            plan = plan_split(records, task, split_ratio, seed)
        except ValueError as e:
            raise DataError(f"{files[0]}: {e}") from None
        records = list(split_records(records, task, split_ratio, seed, plan=plan))
    dataset = Dataset(task, tuple(records), files[0])
    report.images = len(records)
    report.objects_read = sum(len(i.parsed.objects) for i in items)
    report.objects = dataset.num_objects
    if report.lines == 0 and not problems:
        problems.append(Problem(P.NO_IMAGES, "no images", files[0]))
    report.stats = dataset_stats(dataset)
    report.warnings = _warnings(dataset, items)
    if plan is not None:
        report.stats["split"] = {"single_image_classes": list(plan.single_image_classes),
                                 "moved_to_training": plan.moved_to_training}
        if plan.note() and task is not ImageTask.IMAGE_CLASSIFICATION:  # multi-class already warns about these
            report.warnings.append(plan.note())
    report.seconds = time.monotonic() - t0
    return ValidationResult(dataset, report)


def _is_uri(source) -> bool:
    return isinstance(source, str) and "://" in source


def _data_root(data_root: str | None, jsonl: JsonlFile) -> str:
    """Where relative image_url values of ``jsonl`` must stay: ``data_root``, else the file's own folder."""
    if not data_root:
        return jsonl.base
    if data_root.startswith("s3://") != jsonl.remote:
        where = "in object storage" if jsonl.remote else "on this machine"
        allowed = "an s3://bucket/prefix" if jsonl.remote else "a local folder"
        raise ConfigError(f"data_root={data_root!r} cannot hold the images of {jsonl.name}, which is {where}; "
                          f"give {allowed} that contains them, or no data root (the JSONL file's own folder)")
    return data_root.rstrip("/") if jsonl.remote else os.path.abspath(data_root)


def _check_duplicates(items: list[_Item], problems: list[Problem]) -> None:
    seen: dict[str, _Item] = {}
    for item in items:
        if item.location is None:
            continue
        first = seen.get(item.location.uri)
        if first is None:
            seen[item.location.uri] = item
            continue
        where = f"line {first.parsed.line}" if first.file == item.file else f"{first.file}:{first.parsed.line}"
        problems.append(Problem(P.DUPLICATE_IMAGE, f"image_url={item.parsed.image_url!r} duplicates {where}",
                                item.file, item.parsed.line, "image_url", item.parsed.image_url))
        item.parsed.bad = True
        item.location = None


def _check_files(items: list[_Item], options: ValidationOptions, problems: list[Problem]) -> FetchStats | None:
    remote = [item for item in items if item.location is not None and not item.location.is_local]
    for item in items:
        loc = item.location
        if loc is None or not loc.is_local:
            continue
        if os.path.isfile(loc.uri):
            item.path = loc.uri
            if item.root is not None:
                escape = _link_outside(loc.uri, item.root)
                if escape is not None:
                    url = item.parsed.image_url
                    link, target = escape
                    problems.append(Problem(
                        P.PATH_ESCAPES_ROOT, f"image_url={url!r}: {link} is a symbolic link to {target}, outside "
                        f"the data root {item.root}; copy the image into the data root, or pass a data root "
                        "that contains it", item.file, item.parsed.line, "image_url", url))
                    item.parsed.bad = True
                    item.path = None
                else:
                    item.path = os.path.realpath(loc.uri)  # read the checked file, not whatever a link names later
        else:
            url = item.parsed.image_url
            problems.append(Problem(P.IMAGE_MISSING, f"image_url={url!r}: image not found at {loc.uri}",
                                    item.file, item.parsed.line, "image_url", url))
            item.parsed.bad = True
    if not remote:
        return None
    cache_dir = options.cache_dir or str(default_cache_dir())
    storage = options.storage or storage_from_environment()
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 5 or done == total:
            last[0] = time.monotonic()
            log.info("fetched %d/%d remote images", done, total)

    results, stats = fetch_all([(i.location.uri, i.location.uri) for i in remote], cache_dir, storage,
                               on_progress=progress)
    for item in remote:
        outcome = results[item.location.uri]
        if isinstance(outcome, FetchError):
            code = P.IMAGE_MISSING if "not found" in str(outcome) else P.FETCH_FAILED
            verb = "image not found" if code == P.IMAGE_MISSING else "cannot fetch"
            problems.append(Problem(code, f"image_url={item.parsed.image_url!r}: {verb}: {outcome}", item.file,
                                    item.parsed.line, "image_url", item.parsed.image_url))
            item.parsed.bad = True
        else:
            item.path = str(outcome)
    log.info("remote images: %d fetched, %d already cached, %d failed, %.1f MB in %.1f s (%d retries)",
             stats.fetched, stats.cached, stats.failed, stats.bytes / 1e6, stats.seconds, stats.retries)
    return stats


def _check_images(items: list[_Item], options: ValidationOptions, problems: list[Problem]) -> None:
    todo = [item for item in items if item.path is not None]
    if not todo:
        return
    t0 = last = time.monotonic()

    def check(item: _Item) -> tuple[_Item, ImageInfo | ImageCheckError]:
        try:
            return item, inspect_image(item.path, max_pixels=options.max_pixels, decode=options.decode_images,
                                       max_aspect_ratio=options.max_aspect_ratio, input_size=options.input_size)
        except ImageCheckError as e:
            return item, e

    workers = min(options.workers, max(1, len(todo) // 16))
    with ThreadPoolExecutor(workers, thread_name_prefix="imgcheck") if workers > 1 else _Serial() as pool:
        for n, (item, outcome) in enumerate(pool.map(check, todo), start=1):
            pl = item.parsed
            if isinstance(outcome, ImageCheckError):
                problems.append(Problem(outcome.code, f"image_url={pl.image_url!r}: {outcome}", item.file, pl.line,
                                        "image_url", pl.image_url))
                pl.bad = True
            else:
                item.info = outcome
                for key, real in (("width", outcome.width), ("height", outcome.height)):
                    given = getattr(pl, key)
                    if given is not None and given != real:
                        problems.append(Problem(
                            P.SIZE_MISMATCH, f"image_details.{key}={given} but the image is {outcome.width}x"
                            f"{outcome.height} ({pl.image_url}); coordinates are fractions of the real size, so "
                            "fix or remove image_details", item.file, pl.line, f"image_details.{key}", given))
                        pl.bad = True
            now = time.monotonic()
            if now - last > 5:
                last = now
                log.info("checked %d/%d images (%.0f images/s)", n, len(todo), n / (now - t0))


def _link_outside(path: str, root: str) -> tuple[str, str] | None:
    """(the link, where it points) when following symbolic links takes ``path`` out of ``root``, else None."""
    real_root = os.path.realpath(root)
    if _is_inside(os.path.realpath(path), real_root):
        return None
    rel = os.path.relpath(path, root)
    current = root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            target = os.path.realpath(current)
            if not _is_inside(target, real_root):
                return current, target
    return path, os.path.realpath(path)  # the root itself moved (should not happen): name the file


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _check_classes(items: list[_Item], options: ValidationOptions, problems: list[Problem], *,
                   has_validation: bool) -> None:
    known: set[str] | None = set(options.classes) if options.classes is not None else None
    what = "a known class" if known is not None else ""
    if known is None and has_validation:
        known = set()
        for item in items:
            if item.file_index == 0 and not item.parsed.bad:
                known.update(item.parsed.labels)
                known.update(o.label for o in item.parsed.objects if o is not None)
        what = "a class of the training data"
    if known is None:
        return
    listed = ", ".join(sorted(known)[:30]) + (" ..." if len(known) > 30 else "")
    for item in items:
        pl = item.parsed
        if has_validation and options.classes is None and item.file_index == 0:
            continue
        for name in pl.labels:
            if name not in known:
                problems.append(Problem(P.UNKNOWN_CLASS, f"label={show(name)} is not {what}{_close(name, known)}; "
                                        f"known: {listed}", item.file, pl.line, "label", name))
                pl.bad = True
        for i, obj in enumerate(pl.objects):
            if obj is not None and obj.label not in known:
                problems.append(Problem(P.UNKNOWN_CLASS, f"label[{i}].label={show(obj.label)} is not {what}"
                                        f"{_close(obj.label, known)}; known: {listed}", item.file, pl.line,
                                        f"label[{i}].label", obj.label, P.OBJECT, i))
                pl.objects[i] = None


def _close(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_records(items: list[_Item], report: ValidationReport, options: ValidationOptions) -> list[ImageRecord]:
    records = []
    for item in items:
        pl = item.parsed
        if pl.bad or item.location is None:
            report.skipped_images += 1
            continue
        objects = tuple(pl.objects) if None not in pl.objects else tuple(o for o in pl.objects if o is not None)
        report.skipped_objects += len(pl.objects) - len(objects)
        info = item.info
        path = item.path if item.path is not None else item.location.uri
        records.append(ImageRecord(
            image_url=pl.image_url, path=path,
            width=info.width if info else pl.width, height=info.height if info else pl.height,
            format=info.format if info else pl.format, labels=pl.labels, objects=objects,
            uri=item.location.uri, source=item.file, line=pl.line,
            file_size=info.file_size if info else None))
    if report.on_invalid == FAIL:
        report.skipped_images = report.skipped_objects = 0
    else:
        report.skipped_images = report.lines - len(records)  # lines that were not even JSON objects too
    return records


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts per class, objects per class, image sizes and formats, split sizes."""
    records = dataset.records
    objects = list(chain.from_iterable(r.objects for r in records))
    objects_per_class = Counter(o.label for o in objects)
    images_per_class = Counter(chain.from_iterable(
        r.labels if not r.objects else {o.label for o in r.objects}.union(r.labels) for r in records))
    crowd = sum(o.is_crowd for o in objects)
    widths = [r.width for r in records if r.width]
    heights = [r.height for r in records if r.height]
    sizes = Counter(f"{r.width}x{r.height}" for r in records if r.width and r.height)
    stats: dict[str, Any] = {
        "images": len(records),
        "classes": list(dataset.classes),
        "images_per_class": dict(sorted(images_per_class.items())),
        "formats": dict(sorted(Counter(r.format or "unknown" for r in records).items())),
        "splits": dict(sorted(Counter(r.split or "unsplit" for r in records).items())),
    }
    if not dataset.task.is_classification:
        per_image = [len(r.objects) for r in records]
        stats.update({
            "objects": sum(per_image),
            "objects_per_class": dict(sorted(objects_per_class.items())),
            "crowd_objects": crowd,
            "images_without_objects": sum(1 for n in per_image if n == 0),
            "objects_per_image": {"mean": round(statistics.fmean(per_image), 3) if per_image else 0,
                                  "max": max(per_image, default=0)},
        })
    elif dataset.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL:
        stats["images_without_labels"] = sum(1 for r in records if not r.labels)
    if widths and heights:
        stats["image_size"] = {
            "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
            "most_common": dict(sizes.most_common(5)),
        }
    return stats


def _warnings(dataset: Dataset, items: list[_Item]) -> list[str]:
    out = []
    n = len(dataset.records)
    if 0 < n < RECOMMENDED_MIN_IMAGES:
        out.append(f"only {n} images; at least {RECOMMENDED_MIN_IMAGES} (better 10-15 per class) are recommended")
    if dataset.task is ImageTask.IMAGE_CLASSIFICATION:
        counts = Counter(r.labels[0] for r in dataset.records if r.labels)
        lonely = sorted(c for c, k in counts.items() if k < 2)
        if lonely:
            out.append(f"classes with a single image (cannot appear in both training and validation): "
                       f"{', '.join(lonely)}")
    mismatched = [(i.file, i.parsed.line, i.parsed.format, i.info.format) for i in items
                  if i.info is not None and i.parsed.format and i.parsed.format != i.info.format]
    if mismatched:
        file, line, said, real = mismatched[0]
        out.append(f"{len(mismatched)} image(s) whose image_details.format differs from the file "
                   f"(first: {file}:{line} says {said}, the file is {real}); the file's real format is used")
    return out
