"""Image checks on the BCCD images (../shared/data/bccd, 364 JPEG 640x480): images/s for a full decode
(truncated or corrupt files caught), a header read only, and one thread against the default pool.

    python benchmarks/data_image_checks.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "JPEGImages"


def run(jsonl: Path, repeat: int, **options) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = validate_dataset(jsonl, ImageTask.IMAGE_CLASSIFICATION, options=ValidationOptions(**options)).report
        best = min(best, time.perf_counter() - t0)
        assert not report.problems, report.problems[:3]
    return best, report.images


def main() -> None:
    if not BCCD.is_dir():
        sys.exit(f"needs {BCCD}")
    images = sorted(BCCD.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "bccd.jsonl"
        jsonl.write_text("".join(json.dumps({"image_url": str(p), "label": "cell"}) + "\n" for p in images))
        print(f"{len(images)} BCCD images, {sum(p.stat().st_size for p in images) / 1e6:.1f} MB, {os.cpu_count()} CPUs")
        rows = []
        for name, opts in (("exists only", dict(check_images=False)),
                           ("header, 1 thread", dict(decode_images=False, workers=1)),
                           ("header, default pool", dict(decode_images=False)),
                           ("decode, 1 thread", dict(workers=1)),
                           ("decode, default pool (8)", dict())):
            seconds, n = run(jsonl, 3, **opts)
            rows.append((name, seconds, n))
            print(f"{name:>26}: {n / seconds:>8,.0f} images/s  ({seconds:.3f} s for the validation call)")
        by = {name: s for name, s, _ in rows}
        print(f"ratio: decode with the pool is {by['decode, 1 thread'] / by['decode, default pool (8)']:.2f}x "
              f"one thread; a header read is {by['decode, default pool (8)'] / by['header, default pool']:.1f}x "
              "faster than a full decode")


if __name__ == "__main__":
    main()
