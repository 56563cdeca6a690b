"""Training: recipes (YAML, strict schema), the reference's optimizer groups, schedules and losses, and a
DDP-capable trainer that ends in a model directory.

    from zoo.train import load_recipe, train
    result = train(load_recipe("recipes/qm9/gap.yml", ["optim.max_epochs=1"]), out="runs/gap")
"""

from zoo.train.errors import RecipeError, TrainError
from zoo.train.optim import build_optimizer, decays, param_groups
from zoo.train.recipe import (
    SCHEMA,
    apply_overrides,
    build_network,
    dump_recipe,
    find_recipe,
    list_recipes,
    load_recipe,
    model_config,
    parse_set,
    resolve_recipe,
)
from zoo.train.schedule import LRSchedule
from zoo.train.trainer import TrainResult, prepare_run, resume_recipe, train

__all__ = [
    "SCHEMA",
    "LRSchedule",
    "RecipeError",
    "TrainError",
    "TrainResult",
    "apply_overrides",
    "build_network",
    "build_optimizer",
    "decays",
    "dump_recipe",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "model_config",
    "param_groups",
    "parse_set",
    "prepare_run",
    "resolve_recipe",
    "resume_recipe",
    "train",
]
