"""`equizoo variants` and `equizoo convert reference` run as a user runs them: in a subprocess."""

from __future__ import annotations

import json

import pytest
import torch
from clihelpers import run_cli
from safetensors.torch import load_file

from zoo.artifact import ArtifactError, load_model_dir, save_model_dir
from zoo.graph import radius_graph
from zoo.models import build_model


def equizoo(*args, check=True):
    proc = run_cli(*args)
    if check and proc.returncode != 0:
        raise AssertionError(f"equizoo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_variants_json_lists_every_variant_with_counts():
    rows = json.loads(equizoo("variants", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["qm9-l2"]["params"] == 3_531_715
    assert by_name["oc20-l1-aux18"]["params"] == 26_773_379 and by_name["oc20-l1-aux18"]["num_layers"] == 18
    assert by_name["md17-l3"]["lmax"] == 3 and by_name["md17-l3"]["irreps_sh"] == "1x0e+1x1e+1x2e+1x3e"
    assert "forces" in by_name["md17-l2"]["predicts"]
    for row in rows:
        assert row["paper_params"] in (None, row["params"])
    table = equizoo("variants", "md17*").stdout
    assert "md17-l2" in table and "qm9-l2" not in table


def test_convert_reference_checkpoint_to_model_dir(golden_dir, tmp_path):
    state = load_file(str(golden_dir / "md17_l2.weights.safetensors"))
    ckpt = tmp_path / "reference.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1500}, ckpt)
    out = tmp_path / "md17-aspirin"
    proc = equizoo("convert", "reference", str(ckpt), "--variant", "md17-l2", "--out", str(out), "--dtype", "float64")
    assert "3,496,001" in proc.stdout
    model = load_model_dir(out)
    io = load_file(str(golden_dir / "md17_l2.io.safetensors"))
    res = model(io["pos"], io["z"], radius_graph(io["pos"], io["batch"], 5.0), io["batch"])
    torch.testing.assert_close(res["energy"], io["energy"].flatten(), rtol=1e-9, atol=0)
    torch.testing.assert_close(res["forces"], io["forces"], rtol=1e-9, atol=1e-12)
    again = equizoo("convert", "reference", str(ckpt), "--variant", "md17-l2", "--out", str(out), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_convert_bad_inputs_give_one_clear_error(golden_dir, tmp_path):
    missing = equizoo(
        "convert",
        "reference",
        str(tmp_path / "nope.pt"),
        "--variant",
        "qm9-l2",
        "--out",
        str(tmp_path / "o"),
        check=False,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    bad = equizoo("convert", "reference", str(junk), "--variant", "qm9-l2", "--out", str(tmp_path / "o"), check=False)
    assert bad.returncode == 2 and "junk.pt" in bad.stderr and "Traceback" not in bad.stderr
    wrong = equizoo(
        "convert",
        "reference",
        str(golden_dir / "qm9_linear_l2.weights.safetensors"),
        "--variant",
        "md17-l2",
        "--out",
        str(tmp_path / "o"),
        check=False,
    )
    assert wrong.returncode == 2 and "does not match variant 'md17-l2'" in wrong.stderr
    assert not (tmp_path / "o").exists()


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    proc = equizoo("convert", "reference", str(path), "--variant", "qm9-l2", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "weights-only" in proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_model_dir_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    from zoo.models.zoo_model import TargetInfo, ZooModel

    model = ZooModel({"gap": build_model("qm9-l2-dot").double()}, [TargetInfo("gap", "eV", mean=6.8, std=1.3)]).eval()
    save_model_dir(model, tmp_path / "m", metadata={"dataset": "qm9"})
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.targets == model.targets and next(loaded.parameters()).dtype == torch.float64
    assert loaded.networks["gap"].config == model.networks["gap"].config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ArtifactError, match="already exists"):
        save_model_dir(model, tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="config.json is missing"):
        load_model_dir(tmp_path / "empty")
