"""Schema validation of a generated 100,000-line detection JSONL: lines/s and peak memory, side by side
with a bare ``json.loads`` loop over the same file.

    python benchmarks/data_schema_validation.py [--lines 100000]

Each measurement runs in its own process so peak RSS is not shared; "peak" is the process's maximum
resident memory and "above start" subtracts what the process held after its imports.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
from automl_vision.data.validate import ValidationOptions, validate_dataset
from automl_vision.spec.tasks import ImageTask
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode in ("json", "json-kept"):
    n, kept = 0, []
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if mode == "json-kept":
                    kept.append(row)
                n += 1
    extra = {}
else:
    result = validate_dataset(path, ImageTask.IMAGE_OBJECT_DETECTION,
                              options=ValidationOptions(check_files=False, check_images=False))
    n = result.report.lines
    extra = {"images": result.report.images, "objects": result.report.objects, "problems": len(result.report.problems)}
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"lines": n, "seconds": seconds, "peak_kb": peak, "start_kb": start_rss, **extra}))
"""


def generate(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    classes = ["RBC", "WBC", "Platelets", "can", "carton", "milk_bottle", "water_bottle"]
    with path.open("w") as f:
        for i in range(lines):
            objects = []
            for _ in range(rng.randint(1, 10)):
                x1, y1 = rng.random() * 0.8, rng.random() * 0.8
                objects.append({"label": rng.choice(classes), "topX": round(x1, 6), "topY": round(y1, 6),
                                "bottomX": round(x1 + 0.01 + rng.random() * 0.19, 6),
                                "bottomY": round(y1 + 0.01 + rng.random() * 0.19, 6), "isCrowd": 0})
            f.write(json.dumps({"image_url": f"images/{i // 1000:03d}/img_{i:06d}.jpg",
                                "image_details": {"format": "jpeg", "width": 640, "height": 480},
                                "label": objects}) + "\n")


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best time kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detection.jsonl"
        t0 = time.perf_counter()
        generate(path, args.lines)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.lines:,} detection lines ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        results = {}
        for mode in ("json", "json-kept", "validate"):
            runs = [measure(mode, path) for _ in range(args.repeat)]
            results[mode] = min(runs, key=lambda r: r["seconds"])
        base, kept, val = results["json"], results["json-kept"], results["validate"]
        print(f"objects: {val['objects']:,}; problems found: {val['problems']}")
        for name, r in (("json.loads loop", base), ("json.loads, rows kept", kept), ("schema validation", val)):
            print(f"{name:>22}: {r['lines'] / r['seconds']:>9,.0f} lines/s  ({r['seconds']:.2f} s)   "
                  f"peak RSS {r['peak_kb'] / 1024:>5.0f} MiB ({(r['peak_kb'] - r['start_kb']) / 1024:>4.0f} MiB "
                  "above start)")
        grown = lambda r: max(1, r["peak_kb"] - r["start_kb"])  # noqa: E731
        print(f"ratio: validation takes {val['seconds'] / base['seconds']:.2f}x the time of the bare json.loads "
              f"loop; it holds typed records in {grown(val) / grown(kept):.2f}x the memory of the parsed JSON rows")
        print(f"(peak RSS of this parent process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
