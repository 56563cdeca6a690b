"""Segment reductions used by message passing (plain torch: no torch_scatter / PyG)."""

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of `x` (index_select along dim 0). Inside torch.compile it is written as indexing:
    torch 2.11 fails on the functional gradient of index_select with dynamic shapes ("Expected IntList but
    got GenericList" while tracing the force gradient)."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_dynamo_compiling():
            return x[index]
    return x.index_select(0, index)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of `src` into `dim_size` rows by `index`."""
    return src.new_zeros((dim_size,) + src.shape[1:]).index_add_(0, index, src)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Softmax of edge logits [E, H] over the edges that share a destination (PyG's `utils.softmax`,
    including its 1e-16 in the denominator and the detached maximum)."""
    idx = index.unsqueeze(-1).expand_as(logits)
    amax = logits.new_full((dim_size,) + logits.shape[1:], float("-inf"))
    amax = amax.scatter_reduce(0, idx, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - gather_rows(amax, index))
    denom = e.new_full((dim_size,) + logits.shape[1:], 1e-16).index_add_(0, index, e)
    return e / gather_rows(denom, index)
