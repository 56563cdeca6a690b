"""equizoo: the model zoo for Equiformer (Liao & Smidt, ICLR 2023)."""

__version__ = "0.1.0"


def load(spec, dtype=None, device="cpu"):
    """Load a model from a directory, a registry name or an `hf-hub:ORG/NAME@REV` id (see zoo.api)."""
    from zoo.api import load as _load

    return _load(spec, dtype=dtype, device=device)
