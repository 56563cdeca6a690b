"""The Equiformer network and its published configurations."""

from zoo.models.config import EquiformerConfig
from zoo.models.equiformer import Equiformer, build_model, count_parameters, no_weight_decay_names
from zoo.models.variants import get_variant, list_variants

__all__ = [
    "Equiformer",
    "EquiformerConfig",
    "build_model",
    "count_parameters",
    "get_variant",
    "list_variants",
    "no_weight_decay_names",
]
