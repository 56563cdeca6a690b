"""`zoo.calculators.EquiformerCalculator`, the public import path of the ASE calculator (zoo.use.calculators)."""

from zoo.use.calculators import EquiformerCalculator

__all__ = ["EquiformerCalculator"]
