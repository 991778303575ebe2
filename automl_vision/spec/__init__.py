"""The job spec: tasks, the hyperparameter table, distributions, policies, the SDK-style API."""

from automl_vision.spec.distributions import (
    choice,
    lognormal,
    loguniform,
    normal,
    qlognormal,
    qloguniform,
    qnormal,
    quniform,
    randint,
    uniform,
)
from automl_vision.spec.job import JobSpec, Limits, Sweep, load_job, parse_job
from automl_vision.spec.policies import (
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from automl_vision.spec.sdk import (
    AutoMLImageConfig,
    BayesianParameterSampling,
    GridParameterSampling,
    RandomParameterSampling,
)
from automl_vision.spec.tasks import ImageTask

__all__ = [
    "AshaPolicy", "AutoMLImageConfig", "BanditPolicy", "BayesianParameterSampling", "GridParameterSampling",
    "HyperbandPolicy", "ImageTask", "JobSpec", "Limits", "MedianStoppingPolicy", "RandomParameterSampling", "Sweep", "TruncationSelectionPolicy",
    "choice", "load_job", "lognormal", "loguniform", "normal", "parse_job", "qlognormal", "qloguniform",
    "qnormal", "quniform", "randint", "uniform",
]
