"""The one place a trial reports metrics.

Per evaluation it prints one line in Katib's StdOut collector format, led by an RFC 3339
timestamp (``2026-01-01T10:00:00Z epoch=3 accuracy=0.91 loss=0.35``), and appends the same
values to ``metrics.jsonl`` as strings (Katib's JSON file collector skips numeric values).
Nothing else in a trial may print ``name=value``: Katib would read it as a metric.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

#: Katib's StdOut collector regex for one metric (pkg/metricscollector/v1beta1/common).
KATIB_METRIC_RE = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
#: Metric names Katib accepts: word characters, '|' and '-'.
_NAME_RE = re.compile(r"^[\w|-]+$")


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_value(value: float | int) -> str:
    """A number in a form Katib's regex reads in full (no 'nan', no 'inf')."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot report a non-finite metric value {value}")
    return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6e}"


class MetricsReporter:
    """Writes each evaluation's metrics to a stream (Katib StdOut format) and to ``metrics.jsonl``."""

    def __init__(self, metrics_file: str | Path | None, stream: IO[str] | None = None):
        self.metrics_file = Path(metrics_file) if metrics_file is not None else None
        self.stream = stream if stream is not None else sys.stdout
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)

    def report(self, metrics: Mapping[str, float | int], *, timestamp: str | None = None) -> str:
        """Report one evaluation; returns the printed line. Non-finite values are left out of both outputs."""
        ts = timestamp or rfc3339_now()
        values: dict[str, str] = {}
        for name, value in metrics.items():
            if not _NAME_RE.fullmatch(name):
                raise ValueError(f"metric name {name!r} is not one Katib can read")
            if isinstance(value, float) and not math.isfinite(value):
                continue
            values[name] = format_value(value)
        line = " ".join([ts, *(f"{k}={v}" for k, v in values.items())])
        print(line, file=self.stream, flush=True)
        if self.metrics_file is not None:
            with self.metrics_file.open("a") as f:
                f.write(json.dumps({"timestamp": ts, **values}) + "\n")
        return line


def read_metrics(path: str | Path) -> list[dict[str, float | str]]:
    """The evaluations of a ``metrics.jsonl`` file, values back as floats (timestamp kept as text)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        out.append({k: (v if k == "timestamp" else float(v)) for k, v in row.items()})
    return out


def parse_katib_line(line: str) -> dict[str, float]:
    """Metrics Katib's StdOut collector would read from ``line`` (for tests and the local scheduler)."""
    return {m.group(1): float(m.group(2)) for m in KATIB_METRIC_RE.finditer(line) if m.group(2) not in ("", "+", "-")}
