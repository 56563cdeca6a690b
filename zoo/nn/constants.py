"""Buffers of exact constants that survive dtype round trips.

`module.float()` followed by `module.double()` would leave float32-rounded Clebsch-Gordan coefficients in a
float64 model, breaking float64 parity with the reference. Modules derived from `ExactConstants` keep a
float64 master copy of such buffers and re-derive the buffer from it after every `.to()`/`.double()`.
"""

import torch


class ExactConstants(torch.nn.Module):
    __jit_ignored_attributes__ = ["_constants64"]

    def __init__(self) -> None:
        super().__init__()
        self._constants64 = {}  # name -> float64 CPU master copy

    def register_constant(self, name: str, value: torch.Tensor) -> None:
        self._constants64[name] = value.detach().to(torch.float64).cpu()
        self.register_buffer(name, value.detach().to(torch.get_default_dtype()), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, master in self._constants64.items():
            current = getattr(self, name)
            setattr(self, name, master.to(device=current.device, dtype=current.dtype))
        return self
