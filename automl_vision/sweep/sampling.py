"""Drawing trial settings from the job's search space (random and grid)."""

from __future__ import annotations

from typing import Any

import numpy as np

from automl_vision.errors import ConfigError
from automl_vision.spec.distributions import is_distribution
from automl_vision.spec.job import JobSpec, grid_points


def sample_trials(job: JobSpec) -> list[dict[str, Any]]:
    """The swept values of each trial, in order (training_parameters not included).

    grid: every point of every search-space entry in turn, at most ``max_trials``;
    random: an entry chosen uniformly, then each distribution drawn, seeded by ``sweep.seed``.
    """
    n = job.limits.max_trials
    algo = job.sweep.sampling_algorithm
    if not job.search_space:
        return [{}]
    if algo == "grid":
        return grid_points(job)[:n]
    if algo == "random":
        rng = np.random.default_rng(job.sweep.seed)
        trials = []
        for _ in range(n):
            entry = job.search_space[int(rng.integers(len(job.search_space)))]
            trials.append({k: (v.sample(rng) if is_distribution(v) else v) for k, v in entry.items()})
        return trials
    raise ConfigError(f"sweep.sampling_algorithm={algo!r} is not available in the local runner yet; "
                      "use random or grid")
