"""What a pull hands to the backends: only files whose sha256 was verified, from every source (registry
name pinned to a Hub revision, `hf-hub:` id, local release, installed model distribution); only the files
the manifest lists are downloaded (the Hub's own `.gitattributes` is ignored); a manifest or registry entry
naming a path outside the model directory is refused. The project's Hub server on loopback, the real client."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hubtools import TOKEN

from zoo.artifact import save_model_dir
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

SMALL = dict(num_layers=1, irreps_sh="1x0e+1x1e", irreps_node_embedding="8x0e+4x1e", irreps_head="4x0e+2x1e", num_heads=2,
             irreps_mlp_mid="16x0e+8x1e", irreps_feature="16x0e", num_basis=8, radial_hidden=(8, 8))  # fmt: skip
UNCOVERED = b"not covered by any hash: a backend must never load this"


@pytest.fixture()
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture()
def small_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EQUIZOO_CACHE", str(tmp_path / "equizoo-cache"))
    torch.manual_seed(1)
    model = ZooModel({"energy": build_model("md17-l2", **SMALL)}, [TargetInfo("energy", "eV", forces_unit="eV/Å")])
    return save_model_dir(model, tmp_path / "small", name="small")


def _plant(folder: Path) -> None:
    for name in ("model.torchscript.pt", "model.pt2", "model.onnx"):
        (folder / name).write_bytes(UNCOVERED)


def _uses_no_uncovered_export(folder: Path, torchscript: bool = False) -> None:
    """No export reaches a backend: AOTInductor and ONNX need their file, TorchScript scripts the verified weights."""
    from zoo.errors import UseError
    from zoo.use.runner import load_runner

    assert not any((folder / name).exists() for name in ("model.torchscript.pt", "model.pt2", "model.onnx"))
    for backend, name in (("aoti", "model.pt2"), ("onnx", "model.onnx")):
        with pytest.raises(UseError, match=f"has no {name}"):
            load_runner(str(folder), backend=backend)
    if torchscript:
        assert load_runner(str(folder), backend="torchscript").backend == "torchscript"


def test_a_pinned_registry_pull_holds_only_the_pinned_files(small_dir, api, hub):
    from zoo.hub import hash_files, pull
    from zoo.publish import publish
    from zoo.registry import register

    pinned = hash_files(small_dir)  # config.json, model.safetensors (no card yet)
    _plant(small_dir)
    pub = publish(small_dir, "org/small")  # the snapshot holds the export; the registry below does not pin it
    register("equiformer-md17-ethanol-l2", pinned, repo_id=pub.repo_id, revision=pub.revision)
    folder = pull("equiformer-md17-ethanol-l2")
    assert sorted(p.name for p in folder.iterdir()) == sorted(pinned)
    _uses_no_uncovered_export(folder, torchscript=True)


def test_a_local_release_with_an_extra_file_hands_out_only_the_verified_ones(small_dir, hub, tmp_path, monkeypatch):
    import zoo
    from zoo.hub import hash_files, pull
    from zoo.registry import register

    release = tmp_path / "releases" / "equiformer-md17-ethanol-l2"
    shutil.copytree(small_dir, release)
    register("equiformer-md17-ethanol-l2", hash_files(release), release="equiformer-md17-ethanol-l2")
    _plant(release)
    monkeypatch.setenv("EQUIZOO_RELEASES", str(tmp_path / "releases"))
    folder = pull("equiformer-md17-ethanol-l2")
    assert folder != release and sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    _uses_no_uncovered_export(folder)
    assert zoo.load("equiformer-md17-ethanol-l2").target("energy").unit == "eV"


def test_hub_ids_download_only_the_manifest_files_and_ignore_what_the_hub_adds(small_dir, api, hub, tmp_path):
    from zoo.hub import pull
    from zoo.publish import publish

    pub = publish(small_dir, "org/small")
    # what huggingface.co writes into every new repository, and an export added outside `equizoo publish`
    api.upload_file(
        path_or_fileobj=b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        path_in_repo=".gitattributes",
        repo_id="org/small",
    )
    extra = api.upload_file(path_or_fileobj=UNCOVERED, path_in_repo="model.pt2", repo_id="org/small").oid
    for spec in (f"hf-hub:org/small@{extra}", "hf-hub:org/small", f"hf-hub:org/small@{pub.revision}"):
        folder = pull(spec)
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "config.json",
            "manifest.json",
            "model.safetensors",
        ], spec
        _uses_no_uncovered_export(folder)
    cached = {p.name for p in (tmp_path / "hf-home" / "hub" / "models--org--small" / "snapshots" / extra).iterdir()}
    assert ".gitattributes" not in cached and "model.pt2" not in cached  # never downloaded


@pytest.mark.parametrize("bad", ["ABSOLUTE", "../outside.txt", "sub/../../outside.txt", ".hidden"])
def test_a_manifest_naming_a_path_outside_the_snapshot_is_refused(small_dir, api, hub, tmp_path, bad):
    from zoo.hub import IntegrityError, pull, sha256_file
    from zoo.publish import publish

    outside = tmp_path / "outside.txt"
    outside.write_text("a local file the manifest points at")
    name = str(outside) if bad == "ABSOLUTE" else bad
    publish(small_dir, "org/small")
    manifest = json.loads((small_dir / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256_file(outside), "size": outside.stat().st_size}
    api.upload_file(path_or_fileobj=json.dumps(manifest).encode(), path_in_repo="manifest.json", repo_id="org/small")
    with pytest.raises(IntegrityError, match="not a plain file name") as exc:
        pull("hf-hub:org/small")
    assert repr(name) in str(exc.value)


def test_a_registry_entry_naming_a_path_outside_its_folder_is_refused(tmp_path, monkeypatch):
    from zoo.registry import RegistryError, get_model

    path = tmp_path / "registry.json"
    monkeypatch.setenv("EQUIZOO_REGISTRY", str(path))
    entry = {"release": "x", "files": {"/etc/hostname": "0" * 64}}
    path.write_text(json.dumps({"format": "equizoo-registry/1", "models": {"equiformer-md17-ethanol-l2": entry}}))
    with pytest.raises(RegistryError, match="plain file name"):
        get_model("equiformer-md17-ethanol-l2")


def test_sources_are_tried_in_order_with_one_error_naming_each(small_dir, hub, tmp_path, monkeypatch):
    from zoo.hub import HubError, IntegrityError, hash_files, pull
    from zoo.registry import register

    name = "equiformer-md17-ethanol-l2"
    register(name, hash_files(small_dir), repo_id="org/absent", revision="0" * 40, release=name)
    monkeypatch.delenv("EQUIZOO_RELEASES", raising=False)
    monkeypatch.setattr("zoo.paths._CHECKOUT", tmp_path / "not-a-checkout")
    with pytest.raises(HubError) as exc:
        pull(name)
    text = str(exc.value)
    for source in ("Hub org/absent@" + "0" * 40, "equizoo-models", "$EQUIZOO_RELEASES (not set)"):
        assert source in text
    assert text.index("Hub org/absent") < text.index("equizoo-models") < text.index("EQUIZOO_RELEASES")

    # an installed model distribution (package equizoo_models) comes before $EQUIZOO_RELEASES
    package = tmp_path / "site" / "equizoo_models"
    shutil.copytree(small_dir, package / name)
    (package / "__init__.py").write_text('"""Released equizoo models."""\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("equizoo_models", None)
    assert pull(name) == package / name
    monkeypatch.setenv("EQUIZOO_RELEASES", str(tmp_path / "releases"))
    shutil.copytree(small_dir, tmp_path / "releases" / name)
    # a changed file stops the search: it is reported, not papered over by the good copy further down
    (package / name / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="sha256 mismatch for model.safetensors") as exc:
        pull(name)
    assert "equizoo-models" in str(exc.value) and "Hub org/absent" in str(exc.value)
    shutil.rmtree(package / name)
    assert pull(name) == tmp_path / "releases" / name
