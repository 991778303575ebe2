"""Serving: the model package, the engine that answers per task, the KServe predictor and server, batch scoring.

Only ``predictor.py`` and ``server.py`` import kserve (whose ``model_server`` module reads
``sys.argv`` when imported); packaging, engines and batch scoring do not.
"""

from automl_vision.serving.package import ModelPackage, load_package

__all__ = ["ModelPackage", "load_package", "package_model"]


def __getattr__(name: str):
    if name == "package_model":
        # packaging imports torch and the engines: only when asked for
        from automl_vision.serving.export import package_model

        return package_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
