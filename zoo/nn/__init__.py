"""Equivariant building blocks of Equiformer, written as TorchScript-able torch modules.

e3nn is used at construction time (irreps algebra, Wigner 3j symbols); forwards are plain torch.
"""

from zoo.nn.activation import Gate, ScalarActivation, SmoothLeakyReLU
from zoo.nn.attention import DotProductAttention, GraphAttention
from zoo.nn.blocks import EdgeDegreeEmbedding, FeedForward, NodeEmbedding, TransBlock
from zoo.nn.dtp import DepthwiseTensorProduct
from zoo.nn.linear import IrrepsLinear
from zoo.nn.norm import EquivariantLayerNorm
from zoo.nn.radial import BesselBasis, ExpNormalBasis, GaussianBasis, RadialProfile
from zoo.nn.sh import SphericalHarmonics

__all__ = [
    "BesselBasis",
    "DepthwiseTensorProduct",
    "DotProductAttention",
    "EdgeDegreeEmbedding",
    "EquivariantLayerNorm",
    "ExpNormalBasis",
    "FeedForward",
    "GaussianBasis",
    "Gate",
    "GraphAttention",
    "IrrepsLinear",
    "NodeEmbedding",
    "RadialProfile",
    "ScalarActivation",
    "SmoothLeakyReLU",
    "SphericalHarmonics",
    "TransBlock",
]
