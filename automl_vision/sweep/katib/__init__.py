"""Katib: Experiments from a job, the checks Katib's admission webhook makes, the trial contract,
and the pipeline's Katib backend.

- :mod:`.experiment`: one Experiment per search-space entry (model family), as plain camelCase
  mappings that ``kubectl apply -f`` takes (:func:`experiments_from_job`, :func:`to_yaml`);
- :mod:`.checks`: the webhook's checks, the suggestion and early-stopping services' setting checks,
  and ours (:func:`check_experiment`); the embedded trial Job is validated with ``kubernetes-validate``;
- :mod:`.trial`: the trial pod from the cluster settings and the job's ``compute``, the command it
  runs, where it uploads its folder; a trial's values and Job as Katib's suggestion and controller
  make them (:func:`sample_assignment`, :func:`substitute_trial`);
- :mod:`.backend`: the sweep on a cluster with the Katib SDK (:func:`run_katib_sweep`) and the
  pipeline's sweep step (:func:`run_katib_backend`).

Only this package knows Katib's names; everything below takes and returns validated jobs and
plain values. See docs/katib.md for the mapping and its limits.
"""

from automl_vision.sweep.katib.backend import (
    KatibSweepResult,
    collect_trials,
    katib_client,
    run_katib_backend,
    run_katib_sweep,
)
from automl_vision.sweep.katib.checks import check_experiment, check_experiments
from automl_vision.sweep.katib.experiment import (
    ALGORITHMS,
    ANNOTATION_PREFIX,
    API_VERSION,
    Family,
    experiment_base_name,
    experiment_names,
    experiments_from_job,
    katib_parameter,
    plan_families,
    spec_hash,
    to_yaml,
)
from automl_vision.sweep.katib.trial import (
    OUTPUT_DIR,
    PRIMARY_CONTAINER,
    TRIAL_PROCESS_MEMORY,
    WORK_DIR,
    TrialPlacement,
    check_trial_outputs,
    primary_container,
    sample_assignment,
    substitute_trial,
    trial_command,
    trial_job,
    trial_outputs_uri,
    trial_placement,
)

__all__ = [
    "ALGORITHMS", "ANNOTATION_PREFIX", "API_VERSION", "OUTPUT_DIR", "PRIMARY_CONTAINER", "TRIAL_PROCESS_MEMORY",
    "WORK_DIR", "Family", "KatibSweepResult", "TrialPlacement", "check_experiment", "check_experiments",
    "check_trial_outputs", "collect_trials", "experiment_base_name", "experiment_names", "experiments_from_job",
    "katib_client", "katib_parameter", "plan_families", "primary_container", "run_katib_backend", "run_katib_sweep",
    "sample_assignment", "spec_hash", "substitute_trial", "to_yaml", "trial_command", "trial_job",
    "trial_outputs_uri", "trial_placement",
]
