"""Seeding and checking a weights mirror: a folder or ``s3://`` prefix for clusters without internet access.

A mirror holds each file at its :attr:`WeightsFile.relpath` and a manifest, ``weights-manifest.json``:
``{"models": [{"model_name", "library", "file", "source", "sha256", "size", "code_licence",
"weights_licence", "preprocessing"}, ...]}``. Reading from a mirror checks the files against it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from automl_vision.errors import ConfigError
from automl_vision.models.weights import (MANIFEST, _cli_name, WeightsFile, WeightsSource, WeightsUnavailable, _s3_client,
                                          _split_s3, cache_path, locate, manifest_entry, offline)

log = logging.getLogger(__name__)


def fetch(files: Sequence[WeightsFile], to: str | None, *, s3_endpoint: str | None = None) -> list[dict]:
    """Fetch every file from its canonical source (into the libraries' caches, verified) and, with ``to``,
    copy it into that folder or ``s3://`` prefix and merge the manifest there. Returns the manifest entries."""
    entries = []
    seen = set()
    for file in files:
        if file.relpath in seen:
            continue
        seen.add(file.relpath)
        path = locate(file, None)
        entries.append(manifest_entry(file, path))
        if to:
            _put(path, to, file.relpath, s3_endpoint)
            log.info("mirrored %s to %s", file.relpath, to)
    if to:
        _merge_manifest(to, entries, s3_endpoint)
    return entries


def _put(path: Path, to: str, relpath: str, s3_endpoint: str | None) -> None:
    if to.startswith("s3://"):
        bucket, prefix = _split_s3(to)
        client = _s3_client(WeightsSource(to, s3_endpoint))
        client.fput_object(bucket, f"{prefix}/{relpath}" if prefix else relpath, str(path))
        return
    if "://" in to:
        raise ConfigError(f"--to {to!r}: expected a folder or s3://bucket/prefix")
    dest = Path(to) / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_manifest(location: str, s3_endpoint: str | None = None) -> dict:
    """The manifest of a mirror ({"models": []} when it has none)."""
    if location.startswith("s3://"):
        bucket, prefix = _split_s3(location)
        client = _s3_client(WeightsSource(location, s3_endpoint))
        try:
            response = client.get_object(bucket, f"{prefix}/{MANIFEST}" if prefix else MANIFEST)
        except Exception as e:
            if getattr(e, "code", None) in ("NoSuchKey", "NoSuchObject"):
                return {"models": []}
            raise
        try:
            return json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
    path = Path(location) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"models": []}


def _merge_manifest(to: str, entries: list[dict], s3_endpoint: str | None) -> None:
    old = read_manifest(to, s3_endpoint)
    by_file = {e["file"]: e for e in old.get("models", [])}
    for e in entries:
        by_file[e["file"]] = e
    text = json.dumps({"format_version": 1, "models": sorted(by_file.values(), key=lambda e: e["file"])},
                      indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        if to.startswith("s3://"):
            _put(Path(tmp), to, MANIFEST, s3_endpoint)
        else:
            Path(to).mkdir(parents=True, exist_ok=True)
            os.replace(tmp, Path(to) / MANIFEST)
    finally:
        Path(tmp).unlink(missing_ok=True)


def status(files: Sequence[WeightsFile], source: WeightsSource) -> list[dict]:
    """Each file: where it is expected and whether it is there (nothing is downloaded)."""
    rows = []
    manifest = {}
    if source.location and not source.is_http:
        try:
            manifest = {e["file"]: e for e in read_manifest(source.location, source.s3_endpoint).get("models", [])}
        except Exception as e:  # an unreadable mirror: every file shows as not checked
            log.warning("cannot read the manifest of %s: %s", source.location, e)
    client = _s3_client(source) if source.is_s3 else None
    for file in files:
        row = {"model_name": file.model_name, "file": file.relpath, "library": file.library,
               "source": file.source_url(), "code_licence": file.code_licence,
               "weights_licence": file.weights_licence}
        if source.location is None:
            where = cache_path(file)
            present = where.is_file()
        elif source.is_s3:
            bucket, prefix = _split_s3(source.location)
            key = f"{prefix}/{file.relpath}" if prefix else file.relpath
            where = f"s3://{bucket}/{key}"
            try:
                client.stat_object(bucket, key)
                present = True
            except Exception:
                present = False
        elif source.is_http:
            where, present = f"{source.location.rstrip('/')}/{file.relpath}", None
        else:
            where = Path(source.location) / file.relpath
            present = where.is_file()
        row.update(where=str(where), present=present, in_manifest=file.relpath in manifest)
        rows.append(row)
    return rows


def format_status(rows: list[dict], location: str | None) -> str:
    where = location or "the libraries' caches" + (" (offline)" if offline() else "")
    lines = [f"pretrained weights, looked for in {where}:"]
    missing = []
    for r in rows:
        state = {True: "present", False: "MISSING", None: "not checked"}[r["present"]]
        if r["present"] is False:
            missing.append(r)
        lines.append(f"  {r['model_name']:28s} {state:11s} {r['where']}")
        lines.append(f"  {'':28s} source {r['source']}")
        lines.append(f"  {'':28s} licences: code {r['code_licence']}; weights {r['weights_licence']}")
    if missing:
        names = ",".join(_cli_names(missing))
        if location:
            lines.append(f"{len(missing)} missing: seed them with `automl-vision weights fetch --models {names} "
                         f"--to {location}` on a machine with internet access")
        else:
            lines.append(f"{len(missing)} not cached yet: they are fetched on first use, or now with "
                         f"`automl-vision weights fetch --models {names}`")
    return "\n".join(lines)


def _cli_names(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        name = _cli_name(WeightsFile(r["model_name"], r["file"], r["source"], r["library"]))
        if name not in out:
            out.append(name)
    return out


__all__ = ["fetch", "format_status", "read_manifest", "status", "WeightsUnavailable", "MANIFEST"]
