"""Segment reductions used by message passing (plain torch: no torch_scatter / PyG)."""

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of `src` into `dim_size` rows by `index`."""
    out = src.new_zeros((dim_size,) + src.shape[1:])
    return out.index_add(0, index, src)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Softmax of edge logits [E, H] over the edges that share a destination (PyG's `utils.softmax`,
    including its 1e-16 in the denominator and the detached maximum)."""
    idx = index.unsqueeze(-1).expand_as(logits)
    amax = logits.new_full((dim_size,) + logits.shape[1:], float("-inf"))
    amax = amax.scatter_reduce(0, idx, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - amax.index_select(0, index))
    denom = e.new_full((dim_size,) + logits.shape[1:], 1e-16).index_add(0, index, e)
    return e / denom.index_select(0, index)
