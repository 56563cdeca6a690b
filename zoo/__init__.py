"""equizoo: the model zoo for Equiformer (Liao & Smidt, ICLR 2023)."""

from zoo._version import __version__

__all__ = ["__version__", "evaluate", "load", "predict"]


def load(spec, dtype=None, device="cpu"):
    """Load a model from a directory, a registry name or an `hf-hub:ORG/NAME@REV` id (see zoo.use.resolve)."""
    from zoo.use.resolve import load as _load

    return _load(spec, dtype=dtype, device=device)


def predict(inputs, model=None, **options):
    """Predict structure files / ase.Atoms with a model (None: the embedded default); a DataFrame (see zoo.use.predict)."""
    from zoo.use.predict import predict as _predict

    return _predict(inputs, model, **options)


def evaluate(dataset, model=None, **options):
    """Official metrics of a model on a dataset split; a DataFrame (see zoo.use.evaluate)."""
    from zoo.use.evaluate import evaluate as _evaluate

    return _evaluate(dataset, model, **options)
