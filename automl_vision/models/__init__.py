"""Model registry: ``model_name`` -> builder, one adapter module per backend."""

from automl_vision.models.registry import build_model, get_entry, layer_group_prefixes, registered_models

__all__ = ["build_model", "get_entry", "layer_group_prefixes", "registered_models"]
