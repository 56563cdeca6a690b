"""The two exceptions of training: a bad recipe, and a run that cannot start or continue."""

from zoo.errors import ZooError


class RecipeError(ZooError, ValueError):
    """A recipe file or an override is invalid; the message names the key and what to do."""


class TrainError(ZooError, RuntimeError):
    """A run cannot start or continue (missing data, busy output folder, broken checkpoint, ...)."""
