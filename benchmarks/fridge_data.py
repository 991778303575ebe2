"""The fridge_small150 photos as a classification JSONL file (class = file name before the last ``_``)."""

from __future__ import annotations

import json
from pathlib import Path

FRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fridge_small150"


def write_fridge_jsonl(out_dir: str | Path, source: Path = FRIDGE) -> Path:
    """Write ``fridge.jsonl`` (absolute image paths) into ``out_dir``; returns its path."""
    images = sorted(source.glob("*.jpg"))
    if not images:
        raise SystemExit(f"no fridge images in {source}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fridge.jsonl"
    path.write_text("".join(json.dumps({"image_url": str(p), "label": p.stem.rsplit("_", 1)[0]}) + "\n"
                            for p in images))
    return path
