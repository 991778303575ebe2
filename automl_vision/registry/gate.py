"""The champion/challenger gate: a new version replaces the champion only when it scores better.

Both models are scored on the same validation images in the same run (the pipeline's evaluate step); the
new one is promoted when its primary metric beats the champion's by more than ``margin_points``
(percentage points; every primary metric of the four tasks is higher-is-better). Without a champion
the first version is promoted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: The default margin, in percentage points: promote any strictly better model.
DEFAULT_MARGIN_POINTS = 0.0


@dataclass(frozen=True)
class ChampionScore:
    """The champion as the evaluate step scored it: its version and its primary metric there."""

    version: str
    metric: str
    value: float | None
    uri: str = ""

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> ChampionScore | None:
        if not doc or not doc.get("version"):
            return None
        value = doc.get("value")
        return cls(str(doc["version"]), str(doc.get("metric", "")),
                   None if value is None else float(value), str(doc.get("uri", "")))


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    value: float | None
    champion_version: str = ""
    champion_value: float | None = None
    margin_points: float = DEFAULT_MARGIN_POINTS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def properties(self) -> dict[str, str | float | bool]:
        """The decision as the version's custom properties."""
        out: dict[str, str | float | bool] = {"gate_decision": "promoted" if self.promote else "not promoted",
                                              "gate_reason": self.reason, "gate_margin_points": self.margin_points}
        if self.champion_version:
            out["gate_champion_version"] = self.champion_version
        if self.champion_value is not None:
            out["gate_champion_value"] = self.champion_value
        return out

    @classmethod
    def from_properties(cls, props: dict[str, Any], metric: str, value: float | None) -> GateDecision | None:
        """The decision a version already carries (a retried registration keeps it); None without one."""
        decided = props.get("gate_decision")
        if decided not in ("promoted", "not promoted"):
            return None
        champion_value = props.get("gate_champion_value")
        return cls(decided == "promoted", str(props.get("gate_reason", "")), metric, value,
                   str(props.get("gate_champion_version", "")),
                   None if champion_value in (None, "") else float(champion_value),
                   float(props.get("gate_margin_points", DEFAULT_MARGIN_POINTS)))


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def decide(metric: str, value: float | None, champion: ChampionScore | None,
           margin_points: float = DEFAULT_MARGIN_POINTS) -> GateDecision:
    """Promote the new model (its primary ``metric`` ``value``) over ``champion`` or not, and why."""
    if champion is None:
        return GateDecision(True, "no champion yet: the first version is promoted", metric, value,
                            margin_points=margin_points)
    base = dict(metric=metric, value=value, champion_version=champion.version, champion_value=champion.value,
                margin_points=margin_points)
    if champion.metric and champion.metric != metric:
        return GateDecision(False, f"the champion (version {champion.version}) was scored on {champion.metric}, "
                                   f"this model on {metric}: not comparable", **base)
    if value is None or not math.isfinite(value):
        return GateDecision(False, f"this model has no {metric} on the validation data", **base)
    if champion.value is None or not math.isfinite(champion.value):
        return GateDecision(True, f"the champion (version {champion.version}) has no {metric} on the validation "
                                  "data", **base)
    delta = round((value - champion.value) * 100.0, 6)  # points; 0.80 - 0.79 is 1.0000000000000009 in floats
    numbers = (f"{metric} {_fmt(value)} against the champion's (version {champion.version}) {_fmt(champion.value)} "
               f"on the same validation data: {delta:+.2f} points")
    if delta > margin_points:
        return GateDecision(True, f"{numbers}, more than the margin of {margin_points:g}", **base)
    return GateDecision(False, f"{numbers}, not more than the margin of {margin_points:g}", **base)
