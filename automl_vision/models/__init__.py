"""Model registry: ``model_name`` -> builder, one adapter module per backend.

The registry's names are loaded on first use, so that importing ``automl_vision.models.weights`` (a
download in a process of its own) does not import torch.
"""

__all__ = ["build_model", "get_entry", "layer_group_prefixes", "registered_models"]


def __getattr__(name: str):
    if name in __all__:
        from automl_vision.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
