"""The model package format: the folder a trial writes (``outputs/``) and a run copies (``best_model/``).

    model.safetensors   the weights (tensors only: loading them runs no code); ``.pt``/``.pth`` files
                        saved as plain state dicts are read with ``torch.load(weights_only=True)``
    config.json         task, model_name, hyperparameters, num_classes, epoch, and per task
                        ``preprocessing`` (classification) or ``model_settings`` (detection)
    labels.json         the class names, in the order of the model's outputs
    metrics.json        validation metrics of the saved epoch
    package.json        written when the package is made for serving: what it holds, with the
                        SHA-256 of each file the model is loaded from

:func:`write_package` writes the first four (training, at its best epoch); :func:`read_package`
reads and checks any package, and where ``package.json`` exists it checks the files a load uses
against the recorded hashes and refuses a changed one by name. Files are written under a temporary
name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_vision.errors import ConfigError
from automl_vision.spec.tasks import ImageTask, parse_task

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "package.json"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")
#: Class names longer than this are refused: each answer repeats every label.
MAX_LABEL_LENGTH = 256


@dataclass(frozen=True)
class PackageContents:
    """A model package as read from its folder (nothing loaded onto a device yet)."""

    path: Path
    task: ImageTask
    model_name: str
    hyperparameters: dict[str, Any]
    labels: list[str]
    weights: Path
    onnx: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    #: ``config.json`` as written (``model_settings``, ``preprocessing`` ...).
    config: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_state_dict(self.weights)


# --- writing ---------------------------------------------------------------------------------------

def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(src, tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_package(folder: str | Path, state: Mapping[str, torch.Tensor], *, task: ImageTask, model_name: str,
                  hyperparameters: Mapping[str, Any], labels: list[str], epoch: int, metrics: Mapping[str, Any],
                  config: Mapping[str, Any] | None = None, files: Mapping[str, Any] | None = None) -> Path:
    """Write a model package: the weights (safetensors), ``config.json`` (task, model_name,
    hyperparameters, num_classes, epoch, then ``config``), ``labels.json``, ``metrics.json`` (the
    epoch's metrics) and any further JSON ``files`` (name -> value)."""
    from safetensors.torch import save_file  # imports torch: not at the top (reading JSON needs none)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    try:
        save_file(tensors, str(tmp))
        tmp.replace(folder / WEIGHTS_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(folder / LABELS_FILE, json.dumps(labels, indent=2))
    atomic_write(folder / CONFIG_FILE, json.dumps({"task": task.value, "model_name": model_name,
                                                   "hyperparameters": dict(hyperparameters),
                                                   "num_classes": len(labels), "epoch": epoch, **(config or {})},
                                                  indent=2))
    atomic_write(folder / METRICS_FILE, json.dumps({"epoch": epoch, **metrics}, indent=2))
    for name, value in (files or {}).items():
        atomic_write(folder / name, json.dumps(value, indent=2))
    return folder


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(paths: Iterable[Path]) -> dict[str, str]:
    """``{file name: sha256}`` of the files of ``paths`` that exist: the manifest's ``sha256`` entry."""
    return {p.name: sha256_of(p) for p in paths if p.is_file()}


# --- reading ---------------------------------------------------------------------------------------

def require_files(folder: str | Path) -> Path:
    """Refuse a folder that lacks the weights, config or labels of a package, naming what is missing."""
    folder = Path(folder)
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a model package: missing {', '.join(missing)} "
                          f"(a trial's outputs/ folder or a run's best_model/ holds all three)")
    return folder


def find_weights(folder: str | Path) -> Path:
    """The one weights file of a package; a clear error for none or several."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"model folder not found: {folder}")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHTS_SUFFIXES)
    if not found:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ConfigError(f"{folder}: no weights file (expected one model.safetensors, or a .pt/.pth state dict); "
                          f"the folder holds: {present}")
    if len(found) > 1:
        raise ConfigError(f"{folder}: {len(found)} weights files ({', '.join(p.name for p in found)}); a package "
                          "holds exactly one, so which model to serve is never a guess")
    return found[0]


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path.parent}: {path.name} missing ({what}); is this a model package "
                          "(a trial's outputs/ or a run's best_model/)?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _recorded_hashes(folder: Path, weights: Path) -> tuple[dict[str, str], bool] | None:
    """``({file name: sha256}, complete)`` from ``package.json``; None for a folder without one (a
    trial's outputs). ``complete`` is False for a package made before every file was hashed."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = read_json(path, "the package manifest")
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    hashes = manifest.get("sha256")
    if hashes is None:  # packaged before per-file hashes: only the weights were recorded
        recorded = (manifest.get("files") or {}).get("weights") or weights.name
        return ({recorded: manifest["weights_sha256"]} if manifest.get("weights_sha256") else {}), False
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise ConfigError(f"{path}: sha256 must be an object of file name -> hex digest")
    return hashes, True


def verify_files(folder: Path, hashes: Mapping[str, str], used: list[Path]) -> None:
    """Refuse a package whose files differ from what ``package.json`` records for them."""
    problems = [f"{name} is listed in {MANIFEST_FILE} but missing" for name in hashes
                if not (folder / name).is_file()]
    for path in used:
        expected = hashes.get(path.name)
        if expected is None:
            problems.append(f"{path.name} is not in {MANIFEST_FILE}'s list of files, so it cannot be checked; "
                            "package the model again (package_model) to include it")
            continue
        actual = sha256_of(path)
        if actual != expected:
            problems.append(f"{path.name} has changed since the package was made: its SHA-256 is {actual[:16]}..., "
                            f"{MANIFEST_FILE} records {expected[:16]}...; restore the file or package the model "
                            "again")
    if problems:
        raise ConfigError(problems, str(folder))


def read_package(folder: str | Path, *, verify: bool = True) -> PackageContents:
    """Read and check a package folder; raises ConfigError naming every problem. ``verify``: check the
    files the model is loaded from against ``package.json`` (off only for re-packaging)."""
    folder = Path(folder)
    weights = find_weights(folder)
    if verify:
        recorded = _recorded_hashes(folder, weights)
        if recorded is not None:
            hashes, complete = recorded
            used = [weights]
            if complete:
                used += [folder / n for n in (CONFIG_FILE, LABELS_FILE, ONNX_FILE) if (folder / n).is_file()]
            verify_files(folder, hashes, used)
    config = read_json(folder / CONFIG_FILE, "task, model_name and hyperparameters")
    labels = read_json(folder / LABELS_FILE, "the class names")
    problems = []
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / CONFIG_FILE}: expected a JSON object")
    for key in ("task", "model_name", "hyperparameters"):
        if key not in config:
            problems.append(f"{CONFIG_FILE}: key {key!r} missing")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        problems.append(f"{LABELS_FILE}: expected a non-empty list of class names")
    else:
        long = [i for i, x in enumerate(labels) if len(x) > MAX_LABEL_LENGTH]
        if long:
            problems.append(f"{LABELS_FILE}: class name {long[0]} has {len(labels[long[0]]):,} characters, over the "
                            f"limit of {MAX_LABEL_LENGTH}" + (f" ({len(long)} such names)" if len(long) > 1 else ""))
    if problems:
        raise ConfigError(problems, str(folder))
    try:
        task = parse_task(config["task"])
    except ValueError as e:
        raise ConfigError(str(e), str(folder / CONFIG_FILE)) from None
    if config.get("num_classes") not in (None, len(labels)):
        raise ConfigError(f"config.json says num_classes={config['num_classes']} but labels.json has "
                          f"{len(labels)} names", str(folder))
    metrics = read_json(folder / METRICS_FILE, "metrics") if (folder / METRICS_FILE).is_file() else {}
    onnx = folder / ONNX_FILE
    return PackageContents(path=folder, task=task, model_name=config["model_name"],
                           hyperparameters=dict(config["hyperparameters"]), labels=list(labels), weights=weights,
                           onnx=onnx if onnx.is_file() else None, metrics=metrics, epoch=config.get("epoch"),
                           config=config)


def load_state_dict(path: Path) -> dict:
    """Tensors of a weights file, without unpickling code."""
    import torch  # here, not at the top: reading a package's JSON files (the CLI) needs no torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # imports torch, as above

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, or OSError for a header that lies about sizes
            raise ConfigError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); the file is corrupt or "
                              "truncated") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal names the offending global
        raise ConfigError(f"{path}: not loadable as plain tensors (torch.load weights_only=True): "
                          f"{str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    return state
