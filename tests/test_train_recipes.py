"""Training recipes: every published setting loads, builds its model and carries the spec §2 values; bad
recipes and overrides fail with one clear message."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from zoo.cli import app
from zoo.models import count_parameters
from zoo.train import RecipeError, build_network, list_recipes, load_recipe, model_config, parse_set

QM9_TARGETS = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv"]
MOLECULES = ["aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic_acid", "toluene", "uracil"]
MD17_TABLE = {  # spec §2.2: molecule -> (L2 lr, L2 w_F, L3 lr, L3 w_F)
    "aspirin": (5e-4, 80, 2e-4, 100),
    "benzene": (1e-4, 80, 1e-4, 80),
    "ethanol": (5e-4, 80, 2e-4, 80),
    "malonaldehyde": (5e-4, 100, 2e-4, 100),
    "naphthalene": (5e-4, 20, 2e-4, 100),
    "salicylic_acid": (5e-4, 80, 2e-4, 100),
    "toluene": (5e-4, 80, 2e-4, 100),
    "uracil": (5e-4, 20, 2e-4, 100),
}
EXPECTED = (
    [f"qm9/{t}" for t in QM9_TARGETS]
    + ["qm9/ablation-linear", "qm9/ablation-dot"]
    + [f"md17/l{l}/{m}" for l in (2, 3) for m in MOLECULES]
    + ["oc20/is2re-l1", "oc20/is2re-l1-aux18-noisy-nodes"]
)
CPU = [f"cpu/qm9-{t}-small" for t in ("gap", "homo", "lumo")] + [
    f"cpu/md17-{m}-l2-small" for m in ("aspirin", "ethanol", "naphthalene", "salicylic_acid")
]
BUDGET = {  # budget recipe -> (the recipe it shortens, minutes)
    **{f"budget/md17-l2-{m}-{t}m": (f"md17/l2/{m}", t) for m in MOLECULES for t in (10, 60)},
    **{f"budget/qm9-{q}-{t}m": (f"qm9/{q}", t) for q in ("homo", "lumo", "gap") for t in (10, 60)},
    "budget/cpu-md17-l2-ethanol-29m": ("cpu/md17-ethanol-l2-small", 29), "budget/cpu-md17-l2-aspirin-46m": ("cpu/md17-aspirin-l2-small", 46),
    "budget/cpu-qm9-gap-19m": ("cpu/qm9-gap-small", 19), "budget/cpu-qm9-homo-24m": ("cpu/qm9-homo-small", 24),
    "budget/cpu-qm9-lumo-21m": ("cpu/qm9-lumo-small", 21),
}  # fmt: skip
SHORT_RUN_KEYS = {"description", "optim.lr", "optim.batch_size", "optim.eval_batch_size", "optim.max_epochs", "optim.ema_decay",
                  "data.num_workers", "data.train_limit", "data.val_limit", "data.test_limit", "eval.final_weights", "eval.test_every_epochs"}  # fmt: skip


def test_every_published_setting_has_a_recipe():
    assert sorted(list_recipes()) == sorted(EXPECTED + CPU + list(BUDGET))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "overrides" else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_budget_recipes_say_their_accuracy_and_change_only_what_a_short_run_needs(name):
    from zoo.paths import recipes_dir

    text = (recipes_dir() / f"{name}.yml").read_text()
    assert re.search(r"^# accuracy: (not yet run|.*measured)", text, re.M), (
        "every budget recipe states the accuracy it reached, or that it was not yet run"
    )
    source, minutes = BUDGET[name]
    r, full = _flat(load_recipe(name)), _flat(load_recipe(source))
    assert (
        r["budget.wall_time"] == 60 * minutes
        and r["optim.ema_decay"] == 0.999
        and r["model.overrides"] == full["model.overrides"]
    )
    changed = {k for k in r if r[k] != full[k] and not k.startswith("budget.")}
    assert changed <= SHORT_RUN_KEYS, changed - SHORT_RUN_KEYS
    if name.startswith("budget/md17"):
        assert (
            r["optim.lr"] == pytest.approx(2 * full["optim.lr"])
            and r["optim.batch_size"] == 4 * full["optim.batch_size"]
        )


def test_every_recipe_loads_and_builds_its_model():
    built: dict = {}
    for name in list_recipes():
        recipe = load_recipe(name)
        config = model_config(recipe)
        key = config.to_json()
        if key not in built:
            built[key] = count_parameters(build_network(recipe))
        if name in CPU:
            assert config.paper_params is None and built[key] < 200_000, name  # the reduced network is not the paper's
        elif config.paper_params is not None:
            assert built[key] == config.paper_params, name
    assert len(built) == 12  # 6 QM9 variants, MD17 L2 and L3, OC20 L1 and L1-aux18; the reduced QM9 and MD17 networks


@pytest.mark.parametrize("target", QM9_TARGETS)
def test_qm9_recipes_follow_spec_2_1(target):
    r = load_recipe(f"qm9/{target}")
    assert r["task"] == "qm9" and r["data"]["target"] == target and r["seed"] == 0
    assert r["data"]["dataset"] == "qm9" and r["data"]["drop_last"]
    assert (
        r["schedule"]["kind"],
        r["schedule"]["warmup_epochs"],
        r["schedule"]["warmup_lr"],
        r["schedule"]["min_lr"],
    ) == ("epoch_cosine", 5, 1e-6, 1e-6)
    assert r["optim"]["clip_grad_norm"] is None and not r["optim"]["amp"] and r["optim"]["ema_decay"] is None
    assert r["eval"]["final_weights"] == "best_val" and r["eval"]["test_every_epochs"] == 1
    if target in ("U0", "U", "H", "G"):
        assert r["model"]["variant"] == "qm9-l2-bessel-drop0"
        assert (r["optim"]["lr"], r["optim"]["batch_size"], r["optim"]["max_epochs"], r["optim"]["weight_decay"]) == (
            1.5e-4,
            64,
            600,
            0.0,
        )
        assert r["normalization"]["mode"] == "none"
    else:
        variant = {"r2": "qm9-l2-bessel-drop01", "zpve": "qm9-l2-bessel"}.get(target, "qm9-l2")
        assert r["model"]["variant"] == variant
        assert (r["optim"]["lr"], r["optim"]["batch_size"], r["optim"]["max_epochs"], r["optim"]["weight_decay"]) == (
            5e-4,
            128,
            300,
            5e-3,
        )
        assert r["normalization"]["mode"] == "train_stats"
    config = model_config(r)
    assert (config.radial_basis, config.num_basis, config.alpha_drop) == {
        "r2": ("bessel", 8, 0.1), "zpve": ("bessel", 8, 0.2), "U0": ("bessel", 8, 0.0), "U": ("bessel", 8, 0.0),
        "H": ("bessel", 8, 0.0), "G": ("bessel", 8, 0.0),
    }.get(target, ("gaussian", 128, 0.2))  # fmt: skip


def test_qm9_ablations():
    assert model_config(load_recipe("qm9/ablation-linear")).attention == "mlp_linear"
    assert model_config(load_recipe("qm9/ablation-dot")).attention == "dot_product"
    assert load_recipe("qm9/ablation-dot")["optim"] == load_recipe("qm9/gap")["optim"]


@pytest.mark.parametrize("molecule", MOLECULES)
def test_md17_recipes_follow_spec_2_2(molecule):
    lr2, wf2, lr3, wf3 = MD17_TABLE[molecule]
    for lmax, lr, wf, batch, eval_batch, epochs in ((2, lr2, wf2, 8, 24, 1500), (3, lr3, wf3, 5, 16, 2000)):
        r = load_recipe(f"md17/l{lmax}/{molecule}")
        assert r["model"]["variant"] == f"md17-l{lmax}" and r["data"]["dataset"] == f"md17-{molecule}"
        assert (r["optim"]["lr"], r["loss"]["force_weight"], r["loss"]["energy_weight"]) == (lr, wf, 1.0)
        assert (r["optim"]["batch_size"], r["optim"]["eval_batch_size"], r["optim"]["max_epochs"]) == (
            batch,
            eval_batch,
            epochs,
        )
        assert r["optim"]["weight_decay"] == 1e-6 and r["seed"] == 1
        assert (
            r["schedule"]["kind"],
            r["schedule"]["warmup_epochs"],
            r["schedule"]["warmup_lr"],
            r["schedule"]["min_lr"],
        ) == ("epoch_cosine", 10, 1e-6, 1e-6)
        assert (r["eval"]["test_every_epochs"], r["eval"]["test_max_batches"], r["eval"]["final_weights"]) == (
            10,
            1000,
            "last",
        )


def test_oc20_recipes_follow_spec_2_3():
    base = load_recipe("oc20/is2re-l1")
    aux = load_recipe("oc20/is2re-l1-aux18-noisy-nodes")
    for r in (base, aux):
        assert r["normalization"] == {"mode": "fixed", "mean": -1.525913953781128, "std": 2.279365062713623}
        assert (
            r["schedule"]["kind"],
            r["schedule"]["warmup_epochs"],
            r["schedule"]["warmup_factor"],
            r["schedule"]["lr_min_factor"],
        ) == ("step_cosine", 2, 0.2, 0.01)
        assert (
            r["optim"]["weight_decay"] == 1e-3 and r["optim"]["batch_size"] == 32 and r["eval"]["every_steps"] == 2000
        )
        assert r["data"]["val_split"] == "val_id"
    assert (base["model"]["variant"], base["optim"]["lr"], base["optim"]["max_epochs"]) == ("oc20-l1", 2e-4, 20)
    assert not base["noisy_nodes"]["enabled"] and base["loss"]["aux_weight"] is None
    assert (aux["model"]["variant"], aux["optim"]["lr"], aux["optim"]["max_epochs"]) == ("oc20-l1-aux18", 5e-4, 40)
    assert (aux["loss"]["aux_weight"], aux["loss"]["aux_min_weight"], aux["loss"]["aux_position_std"]) == (
        15.0,
        1.0,
        0.8771552443504333,
    )
    assert aux["noisy_nodes"] == {"enabled": True, "probability": 0.5, "min_factor": 0.0, "noise_std": 0.3}
    assert model_config(aux).num_layers == 18 and model_config(aux).drop_path == 0.05


def test_overrides_and_short_keys():
    r = load_recipe(
        "qm9/gap",
        [
            "max_epochs=1",
            "optim.lr=1e-4",
            "model.overrides.num_layers=2",
            "model.overrides.radial_hidden=[16, 16]",
            "data.test_split=null",
        ],
    )
    assert r["optim"]["max_epochs"] == 1 and r["optim"]["lr"] == 1e-4 and r["data"]["test_split"] is None
    assert model_config(r).num_layers == 2 and model_config(r).radial_hidden == (16, 16)
    assert parse_set(["a.b= 3", "c=text"]) == [("a.b", 3), ("c", "text")]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["optim.lrr=1"], "unknown recipe key 'optim.lrr'"),
        (["learning_rate=1"], "unknown recipe key 'learning_rate'"),
        (["every_steps=5"], "ambiguous"),
        (["optim=1"], "is a section"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["optim.batch_size=2.5"], "optim.batch_size must be an integer"),
        (["optim.lr=-1"], "optim.lr must be positive"),
        (["noisy_nodes.probability=2"], "must lie in [0, 1]"),
        (["schedule.kind=cosine"], "schedule.kind must be one of"),
        (["schedule.warmup_factor=0.2"], "schedule.warmup_factor does not apply to schedule.kind=epoch_cosine"),
        (["model.variant=qm9-l9"], "unknown Equiformer variant 'qm9-l9'"),
        (["model.overrides.num_layer=2"], "unknown model override 'model.overrides.num_layer'"),
        (["model.variant=md17-l2"], "task qm9 needs a property variant"),
        (["loss.force_weight=80"], "loss.force_weight only applies to task md17"),
        (["data.target=null"], "task qm9 needs data.target"),
        (["normalization.mode=fixed"], "normalization.mode=fixed needs"),
        (["optim.lr=null"], "required recipe key 'optim.lr' is missing"),
        (["noequals"], "expected KEY=VALUE"),
        (["device=gpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["optim.betas=[0.9]"], "optim.betas must be two numbers"),
        (["optim.amp=true", "model.dtype=float64"], "optim.amp (bf16 autocast) needs model.dtype float32"),
        (
            ["optim.tf32=true", "model.dtype=float64"],
            "optim.tf32 (TF32 matrix products on CUDA) needs model.dtype float32",
        ),
        (["optim.tf32=2"], "optim.tf32 must be true or false"),
    ],
)
def test_bad_overrides_name_the_key(sets, message):
    with pytest.raises(RecipeError, match=_escape(message)):
        load_recipe("qm9/gap", sets)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_bad_recipe_files(tmp_path):
    (tmp_path / "base.yml").write_text("task: qm9\nmodel: {variant: qm9-l2}\n")
    (tmp_path / "typo.yml").write_text("base: base.yml\noptim:\n  lr: 1.0e-3\n  wieght_decay: 0.1\n")
    with pytest.raises(RecipeError, match=r"typo.yml: unknown recipe key 'optim.wieght_decay'"):
        load_recipe(tmp_path / "typo.yml")
    (tmp_path / "a.yml").write_text("base: b.yml\n")
    (tmp_path / "b.yml").write_text("base: a.yml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yml")
    (tmp_path / "nobase.yml").write_text("base: missing.yml\n")
    with pytest.raises(RecipeError, match="base recipe 'missing.yml' not found"):
        load_recipe(tmp_path / "nobase.yml")
    (tmp_path / "bad.yml").write_text("task: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yml")
    with pytest.raises(RecipeError, match="required recipe key 'data.dataset' is missing"):
        load_recipe(tmp_path / "base.yml")
    with pytest.raises(RecipeError, match="recipe 'qm9/nope' not found"):
        load_recipe("qm9/nope")


def test_cli_dry_run_and_errors():
    runner = CliRunner()
    ok = runner.invoke(app, ["train", "qm9/U0", "--dry-run", "--set", "model.overrides.num_layers=1"])
    assert ok.exit_code == 0, ok.output
    assert "variant: qm9-l2-bessel-drop0" in ok.output and "lr: 0.00015" in ok.output and "parameters" in ok.output
    bad = runner.invoke(app, ["train", "qm9/gap", "--set", "optim.lrr=1"])
    assert bad.exit_code == 2 and "unknown recipe key 'optim.lrr'" in bad.output and "Traceback" not in bad.output
    broken = runner.invoke(app, ["train", "qm9/gap", "--dry-run", "--set", "model.overrides.irreps_head=garbage"])
    assert broken.exit_code == 2 and "cannot be built" in broken.output
    listed = runner.invoke(app, ["recipes"])
    assert listed.exit_code == 0 and "md17/l3/uracil" in listed.output


def test_precision_switches_are_explicit_and_recorded():
    from zoo.train import dump_recipe

    plain = load_recipe("md17/l2/aspirin")
    assert plain["optim"]["amp"] is False and plain["optim"]["tf32"] is False
    fast = load_recipe("md17/l2/aspirin", ["optim.amp=true", "tf32=true"])
    assert fast["optim"]["amp"] is True and fast["optim"]["tf32"] is True
    assert "tf32: true" in dump_recipe(fast) and "amp: true" in dump_recipe(fast)
