"""automl-vision: self-hosted AutoML for images (classification, detection, instance segmentation)."""

__version__ = "0.1.0"

from automl_vision.spec import *  # noqa: E402,F401,F403  (the SDK-style API at the top level)
from automl_vision.spec import __all__ as _spec_all  # noqa: E402

__all__ = ["__version__", *_spec_all]
