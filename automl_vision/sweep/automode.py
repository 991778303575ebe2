"""AutoMode on a real job: its data's fingerprint, the space of :mod:`automl_vision.spec.automode`
filled in, and the warm start from earlier runs.

:func:`prepare_automode` is called where a sweep starts (the local scheduler, the Katib backend,
``validate-job``): it returns the job every later step sees, with AutoMode's space and early
termination written into it, so a resumed sweep, the run folder's ``job.yaml`` and the Katib
Experiments all show exactly what was searched.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl_vision.errors import AutoMLError, ConfigError
from automl_vision.spec.automode import (
    AUTOMODE_MIN_RESOURCE,
    AUTOMODE_POLICY,
    WARM_START_DISTANCE,
    AutoModePlan,
    DatasetFingerprint,
    automode_space,
    fingerprint_distance,
    max_epochs,
    task_kind,
)
from automl_vision.spec.distributions import Choice, is_distribution
from automl_vision.spec.job import JobSpec, parse_job

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
#: Best trials taken from each earlier run, and seeds at most, for a warm start.
SEEDS_PER_RUN = 3
MAX_SEEDS = 5


def fingerprint_of(job: JobSpec) -> DatasetFingerprint | None:
    """The fingerprint of the job's training data (plus its validation data), or None when it cannot be
    read here (data only the cluster can read): AutoMode then sizes its space for unknown data."""
    from automl_vision.data.fingerprint import dataset_fingerprint  # reads the data: only here
    from automl_vision.data.load import load_dataset

    if "://" in job.training_data:
        # fetching every image of a remote dataset to size a space is not worth it: the pipeline's sweep
        # step sizes it from the ingested copy
        log.info("AutoMode: %s is remote; its space is sized for data of unknown size", job.training_data)
        return None
    try:
        dataset = load_dataset(job.training_data, job.task, validation=job.validation_data)
    except (AutoMLError, OSError, ValueError) as e:
        log.warning("cannot read %s for its fingerprint (%s); AutoMode sizes its space for unknown data",
                    job.training_data, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return dataset_fingerprint(dataset)


@dataclass
class AutoModeJob:
    """The job as the sweep runs it, and what AutoMode did to it (``plan`` None: not AutoMode)."""

    job: JobSpec
    plan: AutoModePlan | None = None
    fingerprint: DatasetFingerprint | None = None
    policy_added: bool = False

    def to_json(self) -> dict[str, Any] | None:
        if self.plan is None:
            return None
        return {"summary": self.plan.summary(), "rows": [list(r.models) for r in self.plan.rows],
                "sizes": self.plan.sizes, "fixed_by_job": self.plan.fixed,
                "early_termination_added": self.policy_added}


def prepare_automode(job: JobSpec, fingerprint: DatasetFingerprint | None = None) -> AutoModeJob:
    """The job with AutoMode's space (and ASHA, when the job sets no early termination) written in;
    a job that is not AutoMode comes back as it is."""
    if not job.automode:
        return AutoModeJob(job, None, fingerprint)
    try:
        plan = automode_space(job.task, fingerprint, fixed=job.training_parameters)
    except ValueError as e:
        raise ConfigError(str(e), "AutoMode") from None
    data = job.to_dict()
    data["search_space"] = plan.entries
    sweep = dict(data.get("sweep") or {})
    added = sweep.get("early_termination") is None
    if added:
        policy = dict(AUTOMODE_POLICY, min_resource=AUTOMODE_MIN_RESOURCE[task_kind(job.task)])
        most = max_epochs(plan.entries, job.training_parameters)
        if most is not None and most > policy["min_resource"]:
            policy["max_resource"] = most
        sweep["early_termination"] = policy
    data["sweep"] = sweep
    try:
        expanded = parse_job(data, source="AutoMode's search space")
    except ConfigError as e:
        raise ConfigError(f"AutoMode's space does not fit this job's training_parameters: {e}; set fewer "
                          "training_parameters or write a search_space") from None
    return AutoModeJob(expanded, plan, fingerprint, added)


# --- warm start ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    """An earlier run's trial settings to try first."""

    parameters: dict[str, Any]
    source: str  # run folder (or object) and trial
    value: float
    distance: float


@dataclass
class WarmStart:
    seeds: list[Seed] = field(default_factory=list)
    runs_read: int = 0
    runs_used: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"runs_read": self.runs_read, "runs_used": self.runs_used,
                "seeds": [{"parameters": s.parameters, "from": s.source, "value": s.value, "distance": s.distance}
                          for s in self.seeds],
                "skipped": self.skipped}


def _sweep_files(source: str, scratch: Path) -> list[tuple[Path, str]]:
    """Every ``sweep.json`` under a run folder (itself, a pipeline run's, any below) or an s3:// prefix,
    each with the run it belongs to as shown to the user (its folder, or its object prefix)."""
    if source.startswith("s3://"):
        from automl_vision.data.storage import download_prefix  # the S3 client: only for s3:// sources

        dest = scratch / f"source-{len(list(scratch.iterdir()))}"
        download_prefix(source, dest, skip=lambda rel: not rel.endswith(SWEEP_FILE))
        return [(p, f"{source.rstrip('/')}/{p.parent.relative_to(dest).as_posix()}".rstrip("/."))
                for p in sorted(dest.rglob(SWEEP_FILE))]
    root = Path(source)
    if not root.exists():
        raise ConfigError(f"sweep.warm_start: {source} does not exist; give earlier run folders "
                          "(automl-vision run --output-dir) or s3://bucket/prefix holding them")
    if root.is_file():
        return [(root, str(root.parent))]
    return [(p, str(p.parent)) for p in sorted(root.rglob(SWEEP_FILE))]


def _fits(value: Any, dist: Any) -> bool:
    if not is_distribution(dist):
        return value == dist
    if isinstance(dist, Choice):
        return value in dist.values
    bounds = dist.bounds()
    if bounds is None:
        return True
    lo, hi = bounds
    return isinstance(value, (int, float)) and lo - 1e-9 <= float(value) <= hi + 1e-9


def fits_space(parameters: Mapping[str, Any], job: JobSpec) -> bool:
    """Whether a trial's parameters are a point of one entry of the job's space (same keys, each value
    among the entry's choices, within its range or equal to its fixed value)."""
    for entry in job.search_space:
        if set(entry) == set(parameters) and all(_fits(parameters[k], entry[k]) for k in entry):
            return True
    return False


def warm_start_seeds(job: JobSpec, fingerprint: DatasetFingerprint | None, max_trials: int,
                     echo: Callable[[str], None] = print) -> WarmStart:
    """The best settings of earlier similar runs (``job.sweep.warm_start``) that fit the job's space, best
    first: from each run within :data:`WARM_START_DISTANCE` of ``fingerprint``, its best
    :data:`SEEDS_PER_RUN` trials; at most :data:`MAX_SEEDS` and a quarter of ``max_trials`` (at least 1)."""
    out = WarmStart()
    sources = job.sweep.warm_start
    if not sources:
        return out
    if fingerprint is None:
        out.skipped.append("this run's data could not be read for its fingerprint; no warm start")
        echo("warm start: " + out.skipped[-1])
        return out
    candidates: list[Seed] = []
    with tempfile.TemporaryDirectory(prefix="warm-start-") as scratch:
        for source in sources:
            for path, shown in _sweep_files(source, Path(scratch)):
                try:
                    doc = json.loads(path.read_text())
                except (OSError, ValueError) as e:
                    out.skipped.append(f"{shown}: unreadable {SWEEP_FILE} ({e})")
                    continue
                out.runs_read += 1
                theirs = doc.get("dataset_fingerprint")
                if not theirs:
                    out.skipped.append(f"{shown}: no dataset fingerprint (a run of an older version)")
                    continue
                distance = fingerprint_distance(fingerprint, DatasetFingerprint.from_json(theirs))
                if not distance <= WARM_START_DISTANCE:
                    why = "another task" if math.isinf(distance) else f"distance {distance:.2f} > {WARM_START_DISTANCE}"
                    out.skipped.append(f"{shown}: dataset not similar ({why})")
                    continue
                maximize = doc.get("goal", "maximize") == "maximize"
                ranked = [t for t in doc.get("trials", [])
                          if t.get("status") in ("completed", "early_stopped", "terminated", "timeout")
                          and isinstance(t.get("best_value"), (int, float)) and math.isfinite(t["best_value"])]
                ranked.sort(key=lambda t: (-t["best_value"] if maximize else t["best_value"], t.get("index", 0)))
                used = False
                for t in ranked[:SEEDS_PER_RUN]:
                    params = dict(t.get("parameters") or {})
                    if fits_space(params, job):
                        candidates.append(Seed(params, f"{shown} {t.get('trial_id')}", float(t["best_value"]),
                                               distance))
                        used = True
                out.runs_used += used
                if not used:
                    out.skipped.append(f"{shown}: none of its best trials fits this run's space")
    limit = min(MAX_SEEDS, max(1, max_trials // 4))
    candidates.sort(key=lambda s: (s.distance, -s.value if job.task.maximize else s.value))
    for seed in candidates:
        if len(out.seeds) >= limit:
            break
        if all(seed.parameters != s.parameters for s in out.seeds):
            out.seeds.append(seed)
    if out.seeds:
        echo(f"warm start: the first {len(out.seeds)} trial(s) try the best settings of {out.runs_used} similar "
             f"earlier run(s) ({out.runs_read} read)")
    else:
        echo(f"warm start: no usable settings in {out.runs_read} earlier run(s)"
             + (f" ({'; '.join(out.skipped[:3])})" if out.skipped else ""))
    return out


def describe_space(automode: AutoModeJob) -> str:
    """The AutoMode space as ``validate-job`` prints it (one line per entry)."""
    if automode.plan is None:
        return ""
    lines = [automode.plan.summary()]
    for i, entry in enumerate(automode.job.search_space):
        parts = []
        for k, v in entry.items():
            if isinstance(v, Choice):
                parts.append(f"{k} one of {', '.join(map(str, v.values))}")
            elif is_distribution(v):
                lo, hi = v.bounds()
                parts.append(f"{k} {v.type} {lo:.3g}..{hi:.3g}")
            else:
                parts.append(f"{k} {v}")
        lines.append(f"  [{i}] " + "; ".join(parts))
    policy = automode.job.sweep.early_termination
    if policy is not None:
        settings = ", ".join(f"{k} {v}" for k, v in policy.model_dump().items() if k != "type" and v is not None)
        lines.append(f"  early termination: {policy.type} ({settings})"
                     + (" (AutoMode's default)" if automode.policy_added else ""))
    return "\n".join(lines)

