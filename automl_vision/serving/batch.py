"""Batch scoring (``automl-vision predict``): a folder of images, one image, or a JSONL file in, one JSON
object per image out, in input order: ``{"image_url": ..., <the task's fields>}``, the same fields the
server answers (spec section 9), so the file is ready for ``automl-vision evaluate --predictions``.

``image_url`` is the JSONL line's own value (so it matches the ground truth written the same way),
or for a folder (or one image) the file's path relative to the output file, the way ``image_url``
is relative to its JSONL file in labelled data. An image that cannot
be scored gets ``{"image_url": ..., "error": "..."}``; the run reports every such image at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from automl_vision.data.images import IMAGE_EXTENSIONS
from automl_vision.data.jsonl import local_jsonl
from automl_vision.data.storage import (
    LocationError,
    default_cache_dir,
    fetch_all,
    resolve_url,
    storage_from_environment,
)
from automl_vision.errors import DataError
from automl_vision.models.device import available_cpus
from automl_vision.serving.engine import Engine, load_engine
from automl_vision.serving.images import InvalidImage, decode_image
from automl_vision.serving.package import load_package

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchInput:
    image_url: str | None  # as written out; None: the path relative to the output file
    path: str  # the local file


@dataclass
class BatchResult:
    output: Path
    images: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def list_inputs(source: str | Path) -> list[BatchInput]:
    """The images of a folder (recursively, sorted), of a JSONL file (``image_url`` of each line; the
    file on this machine or ``s3://bucket/key``), or one image file.

    A JSONL line's image in object storage (an ``s3://`` or datastore URI, or a path relative to a
    JSONL file in object storage) is fetched into the image cache with the data layer's credentials
    and retries; ``image_url`` stays as written, so predictions match the labelled lines."""
    text = os.fspath(source)
    if "://" in text:
        return _jsonl_inputs(text)
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"{source}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
        return [BatchInput(None, str(p)) for p in found]
    if not source.is_file():
        raise DataError(f"input not found: {source} (expected a folder of images, an image or a JSONL file)")
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        return [BatchInput(None, str(source))]
    if source.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"{source}: expected a folder of images, an image ({', '.join(IMAGE_EXTENSIONS)}) "
                        "or a JSONL file")
    return _jsonl_inputs(text)


def _jsonl_inputs(source: str) -> list[BatchInput]:
    config = storage_from_environment()
    jsonl = local_jsonl(source, config=config)
    items: list[BatchInput] = []
    problems: list[str] = []
    remote: dict[int, str] = {}  # index in items -> s3:// URI to fetch
    with jsonl.path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jsonl.name}:{number}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            url = row.get("image_url") if isinstance(row, dict) else None
            if not isinstance(url, str) or not url:
                problems.append(f"{where}: field image_url is missing or not a string")
                continue
            if "://" not in url and not jsonl.remote:
                # a local file: relative to the JSONL file's folder, as it always was here
                items.append(BatchInput(url, url if os.path.isabs(url) else os.path.join(jsonl.base, url)))
                continue
            try:
                location = resolve_url(url, jsonl.base, jsonl.base, config)
            except LocationError as e:
                problems.append(f"{where}: {e}")
                continue
            if location.is_local:
                items.append(BatchInput(url, location.uri))
            else:
                remote[len(items)] = location.uri
                items.append(BatchInput(url, location.uri))
    if problems:
        raise DataError(problems, jsonl.name)
    if not items:
        raise DataError(f"{jsonl.name}: no lines with an image_url")
    if remote:
        fetched, _ = fetch_all([(uri, uri) for uri in remote.values()], default_cache_dir(), config)
        failed = [f"{items[i].image_url}: {fetched[uri]}" for i, uri in remote.items()
                  if not isinstance(fetched[uri], Path)]
        if failed:
            raise DataError([f"cannot fetch image_url={u}" for u in failed], jsonl.name)
        for i, uri in remote.items():
            items[i] = BatchInput(items[i].image_url, str(fetched[uri]))
    return items


class _ImageFiles(Dataset):
    """Decoded and prepared images; an unreadable one yields its error message instead."""

    def __init__(self, items: Sequence[BatchInput], prepare: Callable, limits: dict):
        self.items, self.prepare, self.limits = items, prepare, limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        item = self.items[i]
        try:
            with open(item.path, "rb") as f:
                data = f.read()
            return i, self.prepare(decode_image(data, where=item.image_url, **self.limits)), None
        except InvalidImage as e:
            return i, None, str(e)
        except OSError as e:
            return i, None, f"{item.image_url}: cannot read {item.path}: {e.strerror or e}"


def _collate(rows):
    return rows


def _default_workers() -> int:
    cpus = available_cpus()
    return 0 if cpus <= 2 else min(8, cpus - 1)


def score_images(engine: Engine, items: Sequence[BatchInput], *, batch_size: int | None = None,
                 num_workers: int | None = None, progress_every_s: float = 10.0):
    """Yield ``(item, answer or None, error or None)`` in input order."""
    for item, answer, err, _ in _scored(engine, items, batch_size=batch_size, num_workers=num_workers,
                                        progress_every_s=progress_every_s):
        yield item, answer, err


def _scored(engine: Engine, items: Sequence[BatchInput], *, batch_size: int | None = None,
            num_workers: int | None = None, progress_every_s: float = 10.0):
    """:func:`score_images`, each answer with the model input it was scored from."""
    dataset = _ImageFiles(items, engine.preparer, engine.settings.image_limits())
    workers = _default_workers() if num_workers is None else num_workers
    # Offline, a batch of images per call also spreads the per-call overhead on the CPU.
    default = engine.settings.max_batch_size or (16 if engine.device.startswith("cuda") else 8)
    loader = DataLoader(dataset, batch_size=batch_size or default, shuffle=False,
                        num_workers=workers, collate_fn=_collate)
    t0 = last = time.monotonic()
    done = 0
    for rows in loader:
        good = [(i, x) for i, x, err in rows if err is None]
        answers = dict(zip([i for i, _ in good], engine.infer([x for _, x in good]))) if good else {}
        for i, x, err in rows:
            yield items[i], answers.get(i), err, x
        done += len(rows)
        now = time.monotonic()
        if now - last >= progress_every_s or done == len(items):
            last = now
            rate = done / max(now - t0, 1e-9)
            eta = (len(items) - done) / rate if rate > 0 else 0.0
            log.info("scored %d/%d images (%d%%), %.1f images/s, ETA %d:%02d", done, len(items),
                     100 * done // len(items), rate, int(eta) // 60, int(eta) % 60)


def explanations_dir(output: str | Path) -> Path:
    """Where ``predict --explain`` writes its pictures and arrays by default: beside ``output``."""
    output = Path(output)
    return output.with_name(output.stem + "_explanations")


class _ExplanationWriter:
    """Writes each explained image's pictures (PNG) and attributions (``.npy``) into a folder that replaces
    ``folder`` only once every image is done; the JSONL line lists them, relative to the JSONL file."""

    def __init__(self, engine: Engine, explain: Mapping[str, Any], folder: Path, base: Path):
        from automl_vision.serving.explain import Explainer  # Captum and saliency: only when explaining

        self.explainer = Explainer(engine)
        self.params = self.explainer.parse(dict(explain), "--xai-parameters")
        self.folder, self.base = folder, base
        self.tmp = folder.with_name(folder.name + ".tmp")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.count = 0

    def write(self, number: int, item: BatchInput, prepared: Any, answer: dict[str, Any]) -> list[dict[str, Any]]:
        stem = _safe(Path(item.path).stem)
        entries = []
        for k, e in enumerate(self.explainer.explain_items(prepared, answer, self.params)):
            name = f"{number:05d}_{stem}_{self.params.algorithm}_{k}_{_safe(e.label)}"
            entry: dict[str, Any] = {"label": e.label, "score": round(e.score, 6)}
            if e.box_index is not None:
                entry["box_index"] = e.box_index
            if self.params.visualizations and e.picture is not None:
                (self.tmp / f"{name}.png").write_bytes(e.picture)
                entry["visualization"] = os.path.relpath(self.folder / f"{name}.png", self.base)
            if self.params.attributions:
                np.save(self.tmp / f"{name}.npy", np.asarray(e.values, dtype=np.float32))
                entry["attributions"] = os.path.relpath(self.folder / f"{name}.npy", self.base)
            entries.append(entry)
        self.count += 1
        return entries

    def finish(self) -> None:
        (self.tmp / "parameters.json").write_text(json.dumps(self.params.to_json(), indent=2) + "\n")
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.tmp.replace(self.folder)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60] or "image"


def predict_batch(model_dir: str | Path, source: str | Path, output: str | Path, *,
                  settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = (), batch_size: int | None = None,
                  num_workers: int | None = None, progress_every_s: float = 10.0,
                  engine: Engine | None = None, explain: Mapping[str, Any] | None = None,
                  explain_dir: str | Path | None = None) -> BatchResult:
    """Score every image of ``source`` with the package in ``model_dir``; write ``output`` (JSONL).

    ``explain``: explanation parameters (``{"xai_algorithm": "xrai", ...}``, see ``explain/params.py``):
    each image is also explained, its pictures and attributions written into ``explain_dir`` (default
    :func:`explanations_dir`) and listed in its line as ``"explanations"``.

    Raises DataError listing the images that could not be scored, after writing every line."""
    t0 = time.monotonic()
    output = Path(output)
    base = output.resolve().parent
    items = [i if i.image_url is not None else
             BatchInput(os.path.relpath(Path(i.path).resolve(), base), i.path) for i in list_inputs(source)]
    if engine is None:
        package = load_package(model_dir)
        engine = load_engine(package, package.settings(*settings_layers))
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    if explain is not None:
        writer = _ExplanationWriter(engine, explain, Path(explain_dir or explanations_dir(output)), base)
    tmp = output.with_name(output.name + ".tmp")
    errors: list[str] = []
    with tmp.open("w", encoding="utf-8") as f:
        for number, (item, answer, err, prepared) in enumerate(
                _scored(engine, items, batch_size=batch_size, num_workers=num_workers,
                        progress_every_s=progress_every_s)):
            if err is not None:
                errors.append(err)
                row = {"image_url": item.image_url, "error": err}
            else:
                row = {"image_url": item.image_url, **answer}
                if writer is not None:
                    row["explanations"] = writer.write(number, item, prepared, answer)
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    if writer is not None:
        writer.finish()
        log.info("explained %d images with %s: %s", writer.count, writer.params.algorithm, writer.folder)
    tmp.replace(output)
    result = BatchResult(output, len(items), errors, time.monotonic() - t0)
    if errors:
        raise DataError([f"{len(errors)} of {len(items)} images could not be scored (their lines in {output} "
                         "hold the error):"] + errors[:50] + ([f"... and {len(errors) - 50} more"] if len(errors) > 50
                                                           else []))
    return result
