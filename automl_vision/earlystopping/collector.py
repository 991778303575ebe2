"""What Katib's StdOut/File metrics collector does with a trial's log, in Python.

Ported from Katib's ``file-metricscollector`` (v1beta1): which lines count, how a timestamp is
read, what is stored when the objective never appears, and how early-stopping rules are checked
while the trial runs. Used to test the trial contract on this machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from automl_vision.earlystopping.rules import StopRule
from automl_vision.training.reporter import KATIB_METRIC_RE

#: What the collector stores when the objective metric never appears in the log.
UNAVAILABLE = "unavailable"
#: Go's zero time, the timestamp of a metric whose line does not start with an RFC 3339 time.
ZERO_TIME = "0001-01-01T00:00:00Z"

# Go's \w is ASCII-only; KATIB_METRIC_RE is compiled without re.ASCII, so recompile it here.
_METRIC = re.compile(KATIB_METRIC_RE.pattern, re.ASCII)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class MetricLog:
    timestamp: str
    name: str
    value: str


def _is_rfc3339(text: str) -> bool:
    if not _RFC3339.match(text):
        return False
    head = text[:19]
    try:
        datetime.strptime(head, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def parse_text_log(lines: Iterable[str], metric_names: Sequence[str]) -> list[MetricLog]:
    """The observation log Katib stores for ``lines`` (TEXT format, default filter).

    ``metric_names[0]`` is the objective. A line counts only if it contains one of the names; its
    timestamp is its first space-separated word when that parses as RFC 3339, else Go's zero time.
    When the objective never appears, Katib stores one ``unavailable`` value for it instead.
    """
    logs: list[MetricLog] = []
    for line in lines:
        line = line.rstrip("\n")
        if not any(m in line for m in metric_names):
            continue
        timestamp = ZERO_TIME
        head, sep, _ = line.partition(" ")
        if sep and _is_rfc3339(head):
            timestamp = head
        for match in _METRIC.finditer(line):
            name, value = match.group(1).strip(), match.group(2).strip()
            if name in metric_names:
                logs.append(MetricLog(timestamp, name, value))
    if not any(m.name == metric_names[0] for m in logs):
        return [MetricLog(ZERO_TIME, metric_names[0], UNAVAILABLE)]
    return logs


def metric_value(logs: Sequence[MetricLog], name: str, strategy: str) -> float | None:
    """A metric's value in the trial's observation (``strategy``: max, min or latest)."""
    values = [float(m.value) for m in logs if m.name == name and m.value != UNAVAILABLE]
    if not values:
        return None
    if strategy == "latest":
        return values[-1]
    return max(values) if strategy == "max" else min(values)


class RuleSet:
    """The collector's live check of a trial's early-stopping rules (``watchMetricsFile`` and
    ``updateStopRules`` of Katib's ``cmd/metricscollector/v1beta1/file-metricscollector/main.go``).

    Rules not yet reached are kept in a list; each reported value of a metric goes through the rules
    on that metric. For the objective, the value compared is the best so far. A rule's ``start_step``
    is kept per metric name (the last rule's, when several rules name one metric) and counted down
    once per pending rule of that metric the value goes through; a rule is compared only in the call
    that brings the count to exactly 0 (after that the count is negative and nothing on that metric
    is compared again); a metric whose rules all have ``start_step`` 0 is compared at every value. A
    rule that held is removed (Go's swap with the last one, which the loop over the original list then
    skips for this value); the trial is stopped once no rule is left.
    """

    def __init__(self, rules: Sequence[StopRule], objective: str, maximize: bool):
        self.rules = list(rules)
        self.objective, self.maximize = objective, maximize
        self.pending: list[StopRule] = list(self.rules)
        self.start_steps = {r.metric: r.start_step for r in self.rules if r.start_step != 0}
        self.best = math.nan

    def update(self, name: str, value: float) -> None:
        backing: list[StopRule | None] = list(self.pending)  # Go ranges over the slice it started with
        length = len(backing)
        for idx in range(len(backing)):
            rule = backing[idx]
            if rule is None or rule.metric != name:
                continue
            if self._reached(rule, value):
                backing[idx], backing[length - 1] = backing[length - 1], None
                length -= 1
        self.pending = [r for r in backing[:length] if r is not None]

    def _reached(self, rule: StopRule, value: float) -> bool:
        if rule.metric == self.objective:
            if math.isnan(self.best) or (value > self.best if self.maximize else value < self.best):
                self.best = value
            value = self.best
        if rule.metric in self.start_steps:
            self.start_steps[rule.metric] -= 1
            if self.start_steps[rule.metric] != 0:
                return False
        return rule.holds(value)

    def update_line(self, line: str) -> None:
        """Feed one log line (TEXT format): every ``name=value`` whose name has a rule."""
        names = {r.metric for r in self.rules}
        if not any(n in line for n in names):
            return
        for match in _METRIC.finditer(line):
            name = match.group(1).strip()
            if name in names:
                self.update(name, float(match.group(2)))

    @property
    def stop(self) -> bool:
        """The collector runs this check only when the trial has rules at all."""
        return bool(self.rules) and not self.pending
