"""The pieces of the reference recipe, checked against independent implementations of spec §2: learning-rate
schedules, weight-decay groups, DDP loss scaling, noisy nodes and the global batch plan."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from zoo import keys
from zoo.models import build_model
from zoo.train import LRSchedule, load_recipe, param_groups
from zoo.train.data import BatchPlan, apply_noisy_nodes
from zoo.train.dist import DistEnv
from zoo.train.objective import Objective

# --- learning rates: spec §2.1-2.3 written out again ---------------------------------------------------


def timm_epoch_lr(epoch: int, lr: float, epochs: int, warmup: int, warmup_lr: float, min_lr: float) -> float:
    """timm 0.4.12 CosineLRScheduler(t_initial=epochs, warmup_t=warmup, cycle_limit=1) at integer epoch."""
    if epoch < warmup:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def oc20_lambda(
    k: int, warmup_steps: int, total_steps: int, warmup_factor: float = 0.2, min_factor: float = 0.01
) -> float:
    """oc20/trainer/lr_scheduler.py CosineLRLambda, with epochs already converted to steps."""
    if k <= warmup_steps:
        alpha = k / float(warmup_steps)
        return warmup_factor * (1.0 - alpha) + alpha
    if k >= total_steps:
        return min_factor
    return min_factor + 0.5 * (1 - min_factor) * (1 + math.cos(math.pi * (k / total_steps)))


@pytest.mark.parametrize(
    "name, n_train, lr, epochs, warmup",
    [
        ("qm9/gap", 110_000, 5e-4, 300, 5),
        ("qm9/U0", 110_000, 1.5e-4, 600, 5),
        ("md17/l2/aspirin", 950, 5e-4, 1500, 10),
        ("md17/l3/benzene", 950, 1e-4, 2000, 10),
    ],
)
def test_epoch_cosine_first_epochs(name, n_train, lr, epochs, warmup):
    r = load_recipe(name)
    spe = BatchPlan(n_train, r["optim"]["batch_size"], 1, 0, 0, drop_last=r["data"]["drop_last"]).steps_per_epoch
    assert spe == n_train // r["optim"]["batch_size"]
    schedule = LRSchedule.from_recipe(r, spe)
    for epoch in range(warmup + 4):
        expected = timm_epoch_lr(epoch, lr, epochs, warmup, 1e-6, 1e-6)
        lrs = {schedule(step) for step in range(epoch * spe, (epoch + 1) * spe)}
        assert len(lrs) == 1 and lrs.pop() == pytest.approx(expected, rel=1e-12), epoch  # constant within an epoch
    assert schedule(0) == pytest.approx(1e-6) and schedule(warmup * spe) == pytest.approx(
        timm_epoch_lr(warmup, lr, epochs, warmup, 1e-6, 1e-6)
    )
    assert schedule(epochs * spe - 1) == pytest.approx(timm_epoch_lr(epochs - 1, lr, epochs, warmup, 1e-6, 1e-6))


@pytest.mark.parametrize(
    "name, lr, epochs", [("oc20/is2re-l1", 2e-4, 20), ("oc20/is2re-l1-aux18-noisy-nodes", 5e-4, 40)]
)
def test_oc20_step_cosine_first_epochs(name, lr, epochs):
    r = load_recipe(name)
    n_train = 460_328
    spe = BatchPlan(n_train, 32, 1, 0, 0, drop_last=False).steps_per_epoch
    assert spe == math.ceil(n_train / 32)
    schedule = LRSchedule.from_recipe(r, spe)
    for step in range(3 * spe):
        assert schedule(step) == pytest.approx(lr * oc20_lambda(step, 2 * spe, epochs * spe), rel=1e-12, abs=0)
    assert schedule(0) == pytest.approx(0.2 * lr)
    assert schedule(2 * spe) == pytest.approx(lr)
    assert schedule(2 * spe + 1) < lr * 0.995  # the cosine runs over all steps: a small drop right after warmup
    assert schedule(epochs * spe) == pytest.approx(0.01 * lr)


# --- weight-decay groups: spec §2.4 by parameter name ------------------------------------------------------

_EXCLUDED = re.compile(r"(\.bias$|\.affine_weight$|\.affine_bias$|^rbf\.)")


def _layer_norm_names(model: torch.nn.Module) -> set[str]:
    return {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.LayerNorm)
        for p, _ in mod.named_parameters()
    }


@pytest.mark.parametrize("variant", ["qm9-l2", "qm9-l2-bessel", "qm9-l2-dot", "md17-l3", "oc20-l1-aux18"])
def test_weight_decay_groups(variant):
    model = build_model(variant, num_layers=2)
    no_decay, decay = param_groups(model, 5e-3)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 5e-3)
    expected_no_decay = {n for n, _ in model.named_parameters() if _EXCLUDED.search(n)} | _layer_norm_names(model)
    assert set(no_decay["names"]) == expected_no_decay
    assert set(no_decay["names"]).isdisjoint(decay["names"])
    assert len(no_decay["names"]) + len(decay["names"]) == len(list(model.parameters()))
    for name in decay["names"]:
        assert name.endswith((".weight", ".offset", "alpha_dot")), name
    assert any(n.endswith("alpha_dot") for n in decay["names"]) or variant == "qm9-l2-dot"
    assert any(n.endswith("rad.offset") for n in decay["names"])
    if variant == "qm9-l2-bessel":
        assert "rbf.frequencies" in no_decay["names"]


# --- DDP loss scaling ------------------------------------------------------------------------------------


class _FakeWorld(DistEnv):
    """A rank of a simulated world: sum() adds the other ranks' contributions given in advance."""

    def __init__(self, world: int, rank: int, totals: torch.Tensor) -> None:
        super().__init__(rank=rank, world=world)
        self.totals = totals

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.totals.to(values)


def _fake_batch(n_graphs: int, atoms: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    n = n_graphs * atoms
    batch = {
        keys.ENERGY: torch.randn(n_graphs, generator=g), keys.Y_RELAXED: torch.randn(n_graphs, generator=g),
        keys.FORCES: torch.randn(n, 3, generator=g), keys.POSITIONS: torch.randn(n, 3, generator=g),
        keys.POS_RELAXED: torch.randn(n, 3, generator=g), keys.TAGS: torch.randint(0, 3, (n,), generator=g),
    }  # fmt: skip
    out = {
        keys.ENERGY: torch.randn(n_graphs, generator=g),
        keys.FORCES: torch.randn(n, 3, generator=g),
        keys.AUX_DISPLACEMENT: torch.randn(n, 3, generator=g),
    }
    return batch, out


def _concat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


@pytest.mark.parametrize(
    "recipe, sizes", [("md17/l2/aspirin", [(3, 21), (2, 21)]), ("oc20/is2re-l1-aux18-noisy-nodes", [(2, 13), (3, 13)])]
)
def test_losses_average_to_the_single_process_loss(recipe, sizes):
    """Two ranks with unequal shares: the mean of their losses (what DDP's gradient averaging sees) is the
    loss of one process on the whole global batch, as OCP's DDPLoss makes it."""
    r = load_recipe(recipe)
    target = keys.ENERGY if r["task"] == "md17" else keys.Y_RELAXED
    parts = [_fake_batch(g, a, seed) for seed, (g, a) in enumerate(sizes)]
    whole_batch, whole_out = _concat(parts[0][0], parts[1][0]), _concat(parts[0][1], parts[1][1])
    single = Objective(r, target, 0.3, 1.7, keys.ENERGY, 100, DistEnv())
    expected, _ = single.loss(whole_out, whole_batch, step=10)
    if r["task"] == "md17":
        totals = torch.tensor([sum(g for g, _ in sizes), sum(g * a for g, a in sizes)], dtype=torch.float64)
    else:
        totals = torch.tensor(
            [sum(g for g, _ in sizes), float((whole_batch[keys.TAGS] > 0).sum())], dtype=torch.float64
        )
    ranks = [
        Objective(r, target, 0.3, 1.7, keys.ENERGY, 100, _FakeWorld(2, i, totals)).loss(out, batch, step=10)[0]
        for i, (batch, out) in enumerate(parts)
    ]
    assert float(sum(ranks) / 2) == pytest.approx(float(expected), rel=1e-6)


def test_md17_and_oc20_loss_terms():
    r = load_recipe("oc20/is2re-l1-aux18-noisy-nodes")
    batch, out = _fake_batch(2, 13, 0)
    obj = Objective(r, keys.Y_RELAXED, 0.0, 1.0, keys.ENERGY, 100, DistEnv())
    loss, parts = obj.loss(out, batch, step=49)
    free = batch[keys.TAGS] > 0
    delta = (batch[keys.POS_RELAXED] - batch[keys.POSITIONS]) / 0.8771552443504333
    aux = (out[keys.AUX_DISPLACEMENT][free] - delta[free]).abs().sum(dim=1).mean()  # per-atom sum over xyz
    assert float(parts["loss_aux"]) == pytest.approx(float(aux), rel=1e-6)
    assert obj.aux_weight(49) == pytest.approx(15 - 14 * 50 / 100) and obj.aux_weight(0) == pytest.approx(15 - 14 / 100)
    assert obj.aux_weight(10_000) == 1.0
    assert float(loss) == pytest.approx(
        float((out[keys.ENERGY] - batch[keys.Y_RELAXED]).abs().mean() + obj.aux_weight(49) * aux), rel=1e-6
    )
    r = load_recipe("md17/l2/naphthalene")
    obj = Objective(r, keys.ENERGY, 0.5, 2.0, keys.ENERGY, 100, DistEnv())
    loss, parts = obj.loss(out, batch, step=0)
    e = (out[keys.ENERGY] - (batch[keys.ENERGY] - 0.5) / 2.0).abs().mean()
    f = torch.linalg.vector_norm(out[keys.FORCES] - batch[keys.FORCES] / 2.0, dim=1).mean()
    assert float(loss) == pytest.approx(float(e + 20.0 * f), rel=1e-6)
    assert obj.score({"energy_mae": 0.1, "force_mae": 0.01}) == pytest.approx(0.1 + 20 * 0.01)


# --- noisy nodes and the batch plan ---------------------------------------------------------------------


def test_noisy_nodes():
    cfg = {"probability": 0.5, "min_factor": 0.0, "noise_std": 0.3}
    n_graphs, atoms = 400, 5
    pos = torch.randn(n_graphs * atoms, 3, dtype=torch.float64)
    batch = {keys.POSITIONS: pos, keys.POS_RELAXED: pos.clone(), keys.TAGS: torch.tensor([0, 1, 1, 2, 2] * n_graphs),
             keys.NUM_ATOMS: torch.full((n_graphs,), atoms)}  # fmt: skip
    ids = np.arange(n_graphs)
    moved = apply_noisy_nodes(batch, ids, epoch=3, seed=0, cfg=cfg)[keys.POSITIONS]
    again = apply_noisy_nodes(batch, ids, epoch=3, seed=0, cfg=cfg)[keys.POSITIONS]
    other = apply_noisy_nodes(batch, ids, epoch=4, seed=0, cfg=cfg)[keys.POSITIONS]
    assert torch.equal(moved, again) and not torch.equal(moved, other)
    shift = (moved - pos).view(n_graphs, atoms, 3)
    assert torch.all(shift[:, 0] == 0)  # tags 0 (fixed subsurface) never move
    noised = shift[:, 1:].abs().sum(dim=(1, 2)) > 0
    assert 0.4 < float(noised.double().mean()) < 0.6  # half the structures
    assert float(shift[noised][:, 1:].std()) == pytest.approx(0.3, rel=0.1)  # pos == pos_relaxed: pure noise
    single = apply_noisy_nodes(
        {k: v[:atoms] if k != keys.NUM_ATOMS else v[:1] for k, v in batch.items()}, ids[:1], 3, 0, cfg
    )
    assert torch.equal(single[keys.POSITIONS], moved[:atoms])  # drawn per structure: independent of the batch
    far = dict(batch, **{keys.POS_RELAXED: pos + 10.0})
    interp = (apply_noisy_nodes(far, ids, 3, 0, dict(cfg, noise_std=0.0))[keys.POSITIONS] - pos).view(
        n_graphs, atoms, 3
    )[noised][:, 1:]
    assert float(interp.min()) >= 0.0 and float(interp.max()) <= 10.0  # f pos + (1 - f) pos_relaxed, f in [0, 1]


def test_batch_plan_shares_global_batches():
    one = BatchPlan(103, 8, 1, 0, seed=5)
    ranks = [BatchPlan(103, 8, 3, r, seed=5) for r in range(3)]
    assert one.steps_per_epoch == 12 and all(p.steps_per_epoch == 12 for p in ranks)
    for epoch in (0, 1):
        order = one.order(epoch)
        for step in range(12):
            whole = one.global_batch(order, step)
            shares = [p.local(p.global_batch(p.order(epoch), step)) for p in ranks]
            assert np.array_equal(np.concatenate(shares), whole)
    assert not np.array_equal(one.order(0), one.order(1))
    assert BatchPlan(103, 8, 1, 0, 0, drop_last=False).steps_per_epoch == 13
    assert BatchPlan(97, 8, 2, 0, 0, drop_last=False).steps_per_epoch == 12  # a last batch of 1 cannot feed 2 processes
