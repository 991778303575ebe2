"""Serving: the model package, the engine that answers per task, the KServe predictor and server, batch scoring.

Only ``predictor.py`` and ``server.py`` import kserve (whose ``model_server`` module reads
``sys.argv`` when imported); packaging, engines and batch scoring do not.
"""

from automl_vision.serving.package import ModelPackage, load_package, package_model

__all__ = ["ModelPackage", "load_package", "package_model"]
