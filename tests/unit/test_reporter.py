"""MetricsReporter: Katib StdOut lines and metrics.jsonl with string values."""

from __future__ import annotations

import io
import json
import math
import re

import pytest

from automl_vision.training.reporter import (KATIB_METRIC_RE, MetricsReporter, format_value, parse_katib_line,
                                             read_metrics, rfc3339_now)

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")

METRICS = {"epoch": 3, "accuracy": 0.9123456, "loss": 0.35, "lr": 1e-7, "big": 12345678.0, "neg": -2.5,
           "zero": 0.0, "flag": True, "top-1|x": 0.5}


def _report(tmp_path, metrics, **kw):
    stream = io.StringIO()
    reporter = MetricsReporter(tmp_path / "out" / "metrics.jsonl", stream=stream)
    line = reporter.report(metrics, **kw)
    return reporter, stream.getvalue(), line


def test_line_starts_with_rfc3339_utc_timestamp(tmp_path):
    _, printed, line = _report(tmp_path, {"epoch": 1, "accuracy": 0.5})
    assert printed == line + "\n"
    assert TS_RE.match(line), line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rfc3339_now())


def test_given_timestamp_used(tmp_path):
    _, _, line = _report(tmp_path, {"epoch": 2}, timestamp="2026-01-01T10:00:00Z")
    assert line == "2026-01-01T10:00:00Z epoch=2"


def test_katib_regex_reads_back_every_value(tmp_path):
    _, _, line = _report(tmp_path, METRICS)
    parsed = parse_katib_line(line)
    assert set(parsed) == set(METRICS)
    for name, value in METRICS.items():
        assert parsed[name] == pytest.approx(float(value), rel=1e-5), name
    # epoch stays an integer in the text
    assert " epoch=3 " in line
    # the tiny value is written in exponent form and the regex takes the whole of it
    m = re.search(r" lr=(\S+)", line)
    assert "e" in m.group(1).lower()
    assert parsed["lr"] == pytest.approx(1e-7)
    # every name=value pair is matched in full by Katib's own regex (nothing cut short)
    for pair in line.split(" ")[1:]:
        match = KATIB_METRIC_RE.fullmatch(pair)
        assert match is not None, pair
    # the timestamp itself does not look like a metric
    assert KATIB_METRIC_RE.search(line.split(" ")[0]) is None


def test_metrics_jsonl_string_values_and_timestamp(tmp_path):
    reporter, _, line = _report(tmp_path, METRICS, timestamp="2026-01-01T10:00:00Z")
    rows = [json.loads(x) for x in reporter.metrics_file.read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["timestamp"] == "2026-01-01T10:00:00Z"
    assert set(row) == {"timestamp", *METRICS}
    assert all(isinstance(v, str) for v in row.values())
    assert row["epoch"] == "3"
    assert row["flag"] == "1"
    # the same text as on stdout
    assert line == "2026-01-01T10:00:00Z " + " ".join(f"{k}={row[k]}" for k in METRICS)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_left_out(tmp_path, bad):
    reporter, printed, line = _report(tmp_path, {"epoch": 1, "loss": bad, "accuracy": 0.5})
    assert "loss" not in line
    assert "nan" not in printed.lower() and "inf" not in printed.lower()
    assert parse_katib_line(line) == {"epoch": 1.0, "accuracy": 0.5}
    row = json.loads(reporter.metrics_file.read_text())
    assert "loss" not in row and row["accuracy"] == "0.5"


@pytest.mark.parametrize("name", ["val loss", "a=b", "", "acc@1", "loss\n"])
def test_bad_metric_name_raises(tmp_path, name):
    stream = io.StringIO()
    reporter = MetricsReporter(tmp_path / "metrics.jsonl", stream=stream)
    with pytest.raises(ValueError, match="is not one Katib can read"):
        reporter.report({"epoch": 1, name: 0.5})
    assert stream.getvalue() == ""
    assert not reporter.metrics_file.exists()


def test_format_value_refuses_non_finite():
    with pytest.raises(ValueError, match="non-finite metric value nan"):
        format_value(math.nan)


@pytest.mark.parametrize("value,text", [(3, "3"), (True, "1"), (0.0, "0"), (0.5, "0.5"), (1e-7, "1.000000e-07"),
                                        (0.0001, "0.0001"), (-2.5, "-2.5")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_read_metrics_round_trip(tmp_path):
    stream = io.StringIO()
    path = tmp_path / "deep" / "dir" / "metrics.jsonl"
    reporter = MetricsReporter(path, stream=stream)
    reporter.report({"epoch": 1, "accuracy": 0.25, "lr": 3e-6}, timestamp="2026-01-01T10:00:00Z")
    reporter.report({"epoch": 2, "accuracy": 0.75, "loss": math.nan}, timestamp="2026-01-01T10:01:00Z")
    rows = read_metrics(path)
    assert rows == [
        {"timestamp": "2026-01-01T10:00:00Z", "epoch": 1.0, "accuracy": 0.25, "lr": pytest.approx(3e-6)},
        {"timestamp": "2026-01-01T10:01:00Z", "epoch": 2.0, "accuracy": 0.75},
    ]
    assert len(stream.getvalue().splitlines()) == 2


def test_read_metrics_missing_file(tmp_path):
    assert read_metrics(tmp_path / "none.jsonl") == []


def test_no_metrics_file(tmp_path):
    stream = io.StringIO()
    line = MetricsReporter(None, stream=stream).report({"epoch": 1})
    assert TS_RE.match(line) and line.endswith(" epoch=1")


@pytest.mark.parametrize("text,expected", [
    ("2026-01-01T10:00:00Z epoch=3 accuracy=0.91 loss=0.35", {"epoch": 3, "accuracy": 0.91, "loss": 0.35}),
    ("x=1.5e-07 y = -2", {"x": 1.5e-7, "y": -2.0}),
    ("note=abc", {}),
])
def test_parse_katib_line(text, expected):
    assert parse_katib_line(text) == pytest.approx(expected)
