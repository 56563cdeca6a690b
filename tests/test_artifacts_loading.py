"""Damaged model directories: weights that are not real floating point, config.json with missing or
mistyped keys, and dimensions far beyond the weights each give one ArtifactError naming the file (and
key) before the model is allocated."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_use_support import model_dir

from zoo.artifact import CONFIG, WEIGHTS, ArtifactError, load_model_dir


def _copy(tmp_path, name="model"):
    target = tmp_path / name
    shutil.copytree(model_dir("md17"), target)
    return target


def _edit_config(path, change):
    config = json.loads((path / CONFIG).read_text())
    change(config)
    (path / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_weights_that_are_not_real_floats_are_refused(tmp_path, dtype):
    path = _copy(tmp_path)
    state = load_file(str(path / WEIGHTS))
    first = sorted(state)[0]
    state[first] = state[first].to(dtype)
    save_file(state, str(path / WEIGHTS))
    with pytest.raises(ArtifactError) as info:
        load_model_dir(path)
    message = str(info.value)
    assert str(path / WEIGHTS) in message and repr(first) in message and "real floating point" in message


def _delete(key):
    return lambda c: c.pop(key)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(config):
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, key",
    [
        (_delete("targets"), "key 'targets'"),
        (_delete("networks"), "key 'networks'"),
        (_set("dtype", "float128"), "key 'dtype'"),
        (_set("targets", [{"name": "energy"}]), "key 'targets[0]'"),
        (_set("targets", 0, "std", "large"), "key 'targets[0].std'"),
        (_set("networks", "energy", "num_layers", "two"), "key 'networks.energy.num_layers'"),
        (_set("networks", "energy", "irreps_head", "8x9q"), "key 'networks.energy.irreps_head'"),
        (_set("networks", "energy", "attention", "magic"), "key 'networks.energy'"),
        (
            lambda c: c["networks"]["energy"].pop("r_max") and c["networks"]["energy"].pop("num_layers"),
            "key 'networks.energy'",
        ),
        (lambda c: c["networks"].update(gap=c["networks"].pop("energy")), "key 'networks'"),
    ],
    ids=[
        "no-targets",
        "no-networks",
        "dtype",
        "target-fields",
        "target-type",
        "int-type",
        "irreps",
        "value",
        "missing-key",
        "names",
    ],
)
def test_bad_config_is_one_error_naming_file_and_key(tmp_path, change, key):
    path = _copy(tmp_path)
    _edit_config(path, change)
    with pytest.raises(ArtifactError) as info:
        load_model_dir(path)
    message = str(info.value)
    assert message.startswith(f"{path / CONFIG}: {key} ") and info.value.__cause__ is None, message


def test_huge_dimensions_are_refused_before_allocating(tmp_path):
    """A config asking for a ~130 GB network next to a 200 kB weights file is refused while the model is
    built, before that allocation is attempted."""
    path = _copy(tmp_path)
    _edit_config(path, _set("networks", "energy", "irreps_mlp_mid", "2000000000x0e+16x1e+8x2e"))
    with pytest.raises(ArtifactError) as info:
        load_model_dir(path)
    assert str(info.value).startswith(f"{path / CONFIG} describes a model far larger than {path / WEIGHTS} holds")
