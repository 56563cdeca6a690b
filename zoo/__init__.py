"""equizoo: the model zoo for Equiformer (Liao & Smidt, ICLR 2023)."""

__version__ = "0.1.0"
