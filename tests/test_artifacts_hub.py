"""The project's Hub-compatible server (zoo.hub.server) driven by the real huggingface_hub client, and
zoo.hub publish/pull on a plain model directory (no exports: fast)."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest
import torch
from hubtools import TOKEN, USER, point_client_at

from zoo.artifact import save_model_dir
from zoo.models import build_model
from zoo.models.zoo_model import TargetInfo, ZooModel

SMALL = dict(num_layers=1, irreps_sh="1x0e+1x1e", irreps_node_embedding="8x0e+4x1e", irreps_head="4x0e+2x1e", num_heads=2,
             irreps_mlp_mid="16x0e+8x1e", irreps_feature="16x0e", num_basis=8, radial_hidden=(8, 8))  # fmt: skip


@pytest.fixture()
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture()
def small_dir(tmp_path) -> Path:
    torch.manual_seed(1)
    model = ZooModel({"energy": build_model("md17-l2", **SMALL)}, [TargetInfo("energy", "eV", forces_unit="eV/Å")])
    return save_model_dir(model, tmp_path / "small", name="small")


def test_repo_commit_tag_download_with_the_real_client(api, hub, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    assert api.whoami()["name"] == USER
    api.create_repo("org/demo")
    api.create_repo("org/demo", exist_ok=True)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    readme = "---\nlibrary_name: equizoo\ntags: [x]\n---\n# demo\n"
    (folder / "README.md").write_text(readme)
    (folder / "weights.bin").write_bytes(os.urandom(200_000))
    (folder / "sub" / "note.txt").write_text("hello")
    first = api.upload_folder(folder_path=str(folder), repo_id="org/demo", commit_message="first")
    api.create_tag("org/demo", tag="v1", revision=first.oid)
    (folder / "sub" / "note.txt").write_text("changed")
    second = api.upload_folder(folder_path=str(folder), repo_id="org/demo", commit_message="second")
    assert second.oid != first.oid and len(second.oid) == 40

    refs = api.list_repo_refs("org/demo")
    assert [t.name for t in refs.tags] == ["v1"] and refs.tags[0].target_commit == first.oid
    assert [b.target_commit for b in refs.branches if b.name == "main"] == [second.oid]
    info = api.model_info("org/demo", revision="v1", files_metadata=True)
    assert info.sha == first.oid and info.card_data["library_name"] == "equizoo"
    from zoo.hub.store import GITATTRIBUTES

    siblings = {s.rfilename: s.size for s in info.siblings}
    assert siblings == {
        ".gitattributes": len(GITATTRIBUTES),
        "README.md": len(readme),
        "sub/note.txt": 5,
        "weights.bin": 200_000,
    }
    assert sorted(api.list_repo_files("org/demo")) == [".gitattributes", "README.md", "sub/note.txt", "weights.bin"]
    assert [c.title for c in api.list_repo_commits("org/demo")] == ["second", "first", "initial commit"]
    assert [m.id for m in api.list_models(author="org")] == ["org/demo"]

    old = Path(snapshot_download("org/demo", revision="v1", endpoint=hub.url, cache_dir=str(tmp_path / "cache")))
    assert (old / "sub" / "note.txt").read_text() == "hello" and old.name == first.oid
    new = hf_hub_download("org/demo", "sub/note.txt", endpoint=hub.url, cache_dir=str(tmp_path / "cache"))
    assert Path(new).read_text() == "changed"


def test_errors_carry_the_hub_error_codes(api, hub):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api.create_repo("org/demo")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/demo", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/demo", "absent.bin", endpoint=hub.url)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("org/demo")
    assert exc.value.response.status_code == 409


def test_writes_need_a_valid_token_and_private_repos_hide(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    for token in (False, "wrong-token"):
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=hub.url, token=token).create_repo("org/x")
        assert exc.value.response.status_code == 401
    owner = HfApi(endpoint=hub.url, token=TOKEN)
    owner.create_repo("org/secret", private=True)
    assert owner.model_info("org/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("org/secret")


def test_keep_alive_connections_stay_in_step(api, hub):
    """Bodies are read even when the answer is an error, so the next request on the socket is intact."""
    api.create_repo("org/demo")
    host, port = hub.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"paths": ["x"] * 200}).encode()
    conn.request(
        "POST", "/api/models/org/absent/paths-info/main", body=body, headers={"Content-Type": "application/json"}
    )
    first = conn.getresponse()
    assert first.status == 404 and first.getheader("X-Error-Code") == "RepoNotFound"
    first.read()
    conn.request("POST", "/api/no/such/route", body=b"x" * 5000)
    second = conn.getresponse()
    assert second.status == 404
    second.read()
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
    third = conn.getresponse()
    assert third.status == 200 and json.loads(third.read())["name"] == USER
    hub.stop()  # a stopped server also ends the open connections
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
        conn.getresponse()
    conn.close()


def test_range_requests_and_resolve_headers(api, hub, tmp_path):
    api.create_repo("org/demo")
    (tmp_path / "f").mkdir()
    payload = bytes(range(256)) * 10
    (tmp_path / "f" / "data.bin").write_bytes(payload)
    commit = api.upload_folder(folder_path=str(tmp_path / "f"), repo_id="org/demo", commit_message="data")
    host, port = hub.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("HEAD", "/org/demo/resolve/main/data.bin")
    head = conn.getresponse()
    head.read()
    assert head.status == 200 and head.getheader("X-Repo-Commit") == commit.oid
    assert head.getheader("ETag").strip('"') == __import__("hashlib").sha256(payload).hexdigest()
    assert int(head.getheader("Content-Length")) == len(payload)
    conn.request("GET", "/org/demo/resolve/main/data.bin", headers={"Range": "bytes=10-19"})
    part = conn.getresponse()
    assert (
        part.status == 206
        and part.read() == payload[10:20]
        and part.getheader("Content-Range") == f"bytes 10-19/{len(payload)}"
    )
    conn.request("GET", "/org/demo/resolve/main/data.bin", headers={"Range": "bytes=99999-"})
    bad = conn.getresponse()
    bad.read()
    assert bad.status == 416
    conn.close()


def test_server_state_persists_across_restarts(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from zoo.hub.server import serve_hub

    with serve_hub(tmp_path / "store", tokens={TOKEN: USER}) as first:
        point_client_at(monkeypatch, first.url)
        api = HfApi(endpoint=first.url, token=TOKEN)
        api.create_repo("org/kept")
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / "a.txt").write_text("a")
        sha = api.upload_folder(folder_path=str(tmp_path / "f"), repo_id="org/kept", commit_message="a").oid
    with serve_hub(tmp_path / "store", tokens={"another-token": USER}) as second:
        assert HfApi(endpoint=second.url, token=False).model_info("org/kept").sha == sha


def test_publish_tags_and_pins_every_file(small_dir, hub):
    from zoo.hub import copy_model, pull, read_manifest, sha256_file
    from zoo.publish import publish

    first = publish(small_dir, "org/small")
    assert first.tag == "v1" and len(first.revision) == 40 and first.hub_id == f"hf-hub:org/small@{first.revision}"
    assert set(first.files) == {"config.json", "model.safetensors", "README.md", "manifest.json"}
    for name, info in first.files.items():
        assert info["sha256"] == sha256_file(small_dir / name)
    second = publish(small_dir, "org/small", tag="release-2")
    assert second.tag == "release-2"
    third = publish(small_dir, "org/small")
    assert third.tag == "v2"
    path = pull(f"hf-hub:org/small@{first.revision}")
    assert read_manifest(path) == {k: v["sha256"] for k, v in first.files.items() if k != "manifest.json"}
    copy = copy_model(path, small_dir.parent / "copy")  # what `equizoo export NAME --out DIR` exports into
    assert not any(p.is_symlink() for p in copy.iterdir())
    assert {p.name: sha256_file(p) for p in copy.iterdir()} == {k: v["sha256"] for k, v in first.files.items()}


def test_publish_errors(small_dir, hub, tmp_path, monkeypatch):
    from zoo.hub import HubError
    from zoo.publish import publish

    with pytest.raises(HubError, match="ORG/NAME"):
        publish(small_dir, "no-slash")
    with pytest.raises(HubError, match="does not exist"):
        publish(tmp_path / "nowhere", "org/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="neither a model directory"):
        publish(tmp_path / "empty", "org/x")
    monkeypatch.setenv("HF_TOKEN", "not-the-token")
    with pytest.raises(HubError, match="401"):
        publish(small_dir, "org/x")


def test_pull_accepts_run_directories_and_checks_local_manifests(small_dir, hub, tmp_path):
    import shutil

    from zoo.hub import IntegrityError, pull
    from zoo.publish import publish

    publish(small_dir, "org/small")
    run = tmp_path / "run"
    shutil.copytree(small_dir, run / "model")
    assert pull(run) == run / "model"
    (run / "model" / "config.json").write_text((run / "model" / "config.json").read_text() + " ")
    with pytest.raises(IntegrityError, match="sha256 mismatch for config.json"):
        pull(run)


def test_local_release_from_the_registry(small_dir, hub, tmp_path, monkeypatch):
    import shutil

    import zoo
    from zoo.hub import IntegrityError, hash_files
    from zoo.registry import get_model, register

    monkeypatch.setenv("EQUIZOO_RELEASES", str(tmp_path / "releases"))
    shutil.copytree(small_dir, tmp_path / "releases" / "equiformer-md17-ethanol-l2")
    entry = register("equiformer-md17-ethanol-l2", hash_files(small_dir), release="equiformer-md17-ethanol-l2")
    assert entry.status == "local release" and get_model("equiformer-md17-ethanol-l2").status == "local release"
    model = zoo.load("equiformer-md17-ethanol-l2")
    assert model.target("energy").unit == "eV"
    (tmp_path / "releases" / "equiformer-md17-ethanol-l2" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="model.safetensors"):
        zoo.load("equiformer-md17-ethanol-l2")


def test_cli_hub_serve(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from huggingface_hub import HfApi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", "hub", "serve", str(tmp_path / "store"), "--port", str(port), "--token", "t1=bob"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line + proc.stderr.read()
        deadline = time.time() + 30
        while True:
            try:
                assert HfApi(endpoint=f"http://127.0.0.1:{port}", token="t1").whoami()["name"] == "bob"
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
