"""The two exceptions of training: a bad recipe, and a run that cannot start or continue."""


class RecipeError(ValueError):
    """A recipe file or an override is invalid; the message names the key and what to do."""


class TrainError(RuntimeError):
    """A run cannot start or continue (missing data, busy output folder, broken checkpoint, ...)."""
