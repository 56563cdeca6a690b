"""AdamW with the reference's weight-decay parameter groups (spec §2.4).

Excluded from decay: parameters whose name ends in ``.bias``, ``.affine_weight``, ``.affine_bias`` or
``.mean_shift`` or contains ``bias.``, and every name of ``no_weight_decay_names(model)`` (nn.Linear biases,
LayerNorm and equivariant layer-norm parameters, Gaussian radial-basis parameters, Bessel frequencies).
Everything else (tensor-product and linear weights, radial-MLP weights, ``offset``, ``alpha_dot``) decays.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from zoo.models.equiformer import no_weight_decay_names

_NO_DECAY_SUFFIXES = (".bias", ".affine_weight", ".affine_bias", ".mean_shift")


def decays(name: str, skip: set[str]) -> bool:
    """Whether the reference applies weight decay to parameter ``name``."""
    return not (name.endswith(_NO_DECAY_SUFFIXES) or "bias." in name or name in skip)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[{no-decay params, weight_decay 0}, {decayed params, weight_decay}], names kept for inspection."""
    skip = set(no_weight_decay_names(model))
    groups = {False: ([], []), True: ([], [])}
    for name, param in model.named_parameters():
        if param.requires_grad:
            params, names = groups[decays(name, skip)]
            params.append(param)
            names.append(name)
    return [
        {"params": groups[False][0], "names": groups[False][1], "weight_decay": 0.0},
        {"params": groups[True][0], "names": groups[True][1], "weight_decay": float(weight_decay)},
    ]


def build_optimizer(model: torch.nn.Module, optim: Mapping) -> torch.optim.Optimizer:
    """AdamW over the two groups; the learning rate is set by the schedule before every step."""
    groups = param_groups(model, optim["weight_decay"])
    for group in groups:
        group.pop("names")
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"])
