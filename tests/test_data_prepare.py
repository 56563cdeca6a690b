"""Prepared format, cache, downloads (local HTTP server only) and the `equizoo data` CLI."""

import functools
import hashlib
import http.server
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zoo import keys
from zoo.data import (
    DataError,
    PreparedDataset,
    Structure,
    cache_dir,
    collate,
    dataset_info,
    download,
    iter_qm9_figshare,
    list_datasets,
    load_dataset,
    prepare_dataset,
    write_prepared,
)
from zoo.data.cli import app

HERE = Path(__file__).parent
SAMPLES = HERE / "data" / "qm9"


# --- a local HTTP server with Range support ----------------------------------------------------------


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        requested = self.headers.get("Range")
        self.server.requests.append((self.path, requested))
        start = int(requested.split("=")[1].split("-")[0]) if requested else 0
        body = data[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_resumes(server, tmp_path):
    root, url, requests = server
    payload = bytes(range(256)) * 400
    (root / "blob.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    md5 = hashlib.md5(payload).hexdigest()

    dest = tmp_path / "dl" / "blob.bin"
    assert download(f"{url}/blob.bin", dest, sha256=sha).read_bytes() == payload
    assert requests[-1] == ("/blob.bin", None)

    dest.unlink()
    part = dest.with_name("blob.bin.part")
    part.write_bytes(payload[:1000])
    assert download(f"{url}/blob.bin", dest, md5=md5).read_bytes() == payload
    assert requests[-1] == ("/blob.bin", "bytes=1000-") and not part.exists()

    count = len(requests)
    download(f"{url}/blob.bin", dest, sha256=sha)
    assert len(requests) == count, "a verified file is not downloaded again"

    with pytest.raises(DataError, match="corrupt"):
        download(f"{url}/blob.bin", tmp_path / "dl" / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "dl" / "other.bin.part").exists() and not (tmp_path / "dl" / "other.bin").exists()
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{url}/missing.bin", tmp_path / "dl" / "missing.bin")


def test_prepare_qm9_from_mirror(server, tmp_path):
    root, url, requests = server
    with tarfile.open(root / "dsgdb9nsd.xyz.tar.bz2", "w:bz2") as tar:
        for path in SAMPLES.glob("*.xyz"):
            tar.add(path, arcname=path.name)
    (root / "uncharacterized.txt").write_text("list\n  5003  X  Y  Z  7.5\n")
    with pytest.warns(UserWarning, match="no published checksum"):
        path = prepare_dataset("qm9", cache_dir=tmp_path / "cache", download=True, mirror=url)
    dataset = PreparedDataset(path)
    assert len(dataset) == 19 and 5003 not in dataset._arrays["index"]
    assert {r[0] for r in requests} == {"/dsgdb9nsd.xyz.tar.bz2", "/uncharacterized.txt"}
    recorded = {Path(d["file"]).name: d["sha256"] for d in dataset.manifest["downloaded"]}
    assert (
        recorded["dsgdb9nsd.xyz.tar.bz2"] == hashlib.sha256((root / "dsgdb9nsd.xyz.tar.bz2").read_bytes()).hexdigest()
    )


def test_prepare_from_url(server, tmp_path):
    root, url, _ = server
    rng = np.random.default_rng(0)
    np.savez(
        root / "md17_ethanol.npz",
        R=rng.normal(size=(30, 2, 3)),
        z=np.array([1, 8]),
        E=rng.normal(size=(30, 1)),
        F=rng.normal(size=(30, 2, 3)),
    )
    dataset = PreparedDataset(prepare_dataset("md17-ethanol", source=f"{url}/md17_ethanol.npz", cache_dir=tmp_path))
    assert len(dataset) == 30 and (tmp_path / "downloads" / "md17_ethanol.npz").is_file()


# --- prepared format ---------------------------------------------------------------------------------


def test_prepare_qm9_folder_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUIZOO_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    path = prepare_dataset("qm9", source=SAMPLES)
    assert path == tmp_path / "cache" / "prepared" / "qm9"
    dataset = load_dataset("qm9")
    originals = list(iter_qm9_figshare(SAMPLES))
    assert len(dataset) == len(originals) == 19
    assert "80/10/10" in dataset.manifest["split_rule"]
    assert sum(dataset.manifest["splits"].values()) == 19
    for mine, original in zip(dataset, originals):
        assert mine.name == original.name and mine.index == original.index
        np.testing.assert_array_equal(mine.positions, original.positions)
        assert mine.targets == original.targets and mine.units == original.units
    info = dataset_info("qm9")
    assert info["targets"]["U0"] == "eV" and info["source_units"]["U0"] == "Hartree" and info["n_structures"] == 19


def test_prepare_force_and_reuse(tmp_path):
    first = prepare_dataset("qm9", source=SAMPLES, cache_dir=tmp_path)
    stamp = (first / "manifest.json").read_text()
    assert prepare_dataset("qm9", source=SAMPLES, cache_dir=tmp_path) == first
    assert (first / "manifest.json").read_text() == stamp
    prepare_dataset("qm9", source=SAMPLES, cache_dir=tmp_path, force=True)
    assert json.loads((first / "manifest.json").read_text())["created"]
    assert not list(first.parent.glob("*.tmp-*"))


def _mixed():
    rng = np.random.default_rng(3)
    out = []
    for i in range(7):
        n = 2 + i % 3
        periodic = i % 2 == 0
        out.append(
            Structure(
                species=rng.integers(1, 10, n),
                positions=rng.normal(size=(n, 3)),
                cell=np.eye(3) * (4 + i) if periodic else None,
                pbc=[True, True, False] if periodic else None,
                tags=rng.integers(0, 3, n) if periodic else None,
                fixed=rng.integers(0, 2, n) if periodic else None,
                targets={keys.ENERGY: float(i), keys.FORCES: rng.normal(size=(n, 3)), "vec": rng.normal(size=2)},
                units={keys.ENERGY: "eV", keys.FORCES: "eV/Å", "vec": "D"},
                index=100 + i,
            )
        )
    return out


def test_fast_collate_equals_structure_collate(tmp_path):
    structures = _mixed()
    path = write_prepared(tmp_path / "mixed", "mixed", structures, {"train": [0, 2, 4, 6], "test": [1, 3, 5]})
    dataset = PreparedDataset(path)
    assert dataset.manifest["fields"] == ["cell", "fixed", "pbc", "tags"]
    for indices in ([0], [3, 1, 6], list(range(7))):
        fast = dataset.collate(indices, dtype=torch.float64)
        slow = collate([structures[i] for i in indices], dtype=torch.float64)
        assert set(fast) == set(slow)
        for key in slow:
            assert fast[key].dtype == slow[key].dtype, key
            assert torch.equal(fast[key], slow[key]), key
    train = dataset.split("train")
    assert len(train) == 4 and train[1].index == 102
    batches = list(train.iter_batches(3))
    assert [b[keys.NUM_ATOMS].numel() for b in batches] == [3, 1]
    shuffled = torch.cat([b[keys.INDEX] for b in train.iter_batches(2, shuffle=True, seed=5)])
    assert sorted(shuffled.tolist()) == [100, 102, 104, 106]
    np.testing.assert_array_equal(train.target(keys.ENERGY), [0.0, 2.0, 4.0, 6.0])
    assert train.target("vec").shape == (4, 2)


def test_missing_targets_are_nan_and_skipped(tmp_path):
    a = Structure(species=[1], positions=np.zeros((1, 3)), targets={keys.ENERGY: 1.0}, units={keys.ENERGY: "eV"})
    b = Structure(species=[1, 1], positions=np.ones((2, 3)))
    c = Structure(
        species=[8], positions=np.zeros((1, 3)), targets={keys.FORCES: np.ones((1, 3))}, units={keys.FORCES: "eV/Å"}
    )
    dataset = PreparedDataset(write_prepared(tmp_path / "m", "m", [b, a, c], {}))
    assert np.isnan(dataset.target(keys.ENERGY)[[0, 2]]).all() and dataset.target(keys.ENERGY)[1] == 1.0
    assert dataset[0].targets == {} and dataset[1].targets == {keys.ENERGY: 1.0}
    assert list(dataset[2].targets) == [keys.FORCES]
    forces = dataset.collate([0, 1, 2])[keys.FORCES]
    assert torch.isnan(forces[:3]).all() and torch.equal(forces[3], torch.ones(3))


def test_prepared_errors(tmp_path):
    with pytest.raises(DataError, match="equizoo data prepare"):
        PreparedDataset(tmp_path)
    path = write_prepared(tmp_path / "x", "x", _mixed(), {"train": [0]})
    with pytest.raises(DataError, match="no split 'val'"):
        PreparedDataset(path).split("val")
    with pytest.raises(DataError, match="indices outside"):
        write_prepared(tmp_path / "y", "y", _mixed(), {"train": [99]})
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob("y.tmp-*"))
    with pytest.raises(DataError, match="no structures"):
        write_prepared(tmp_path / "z", "z", [], {})


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli(tmp_path):
    runner = CliRunner()
    cache = str(tmp_path / "cache")
    result = runner.invoke(app, ["prepare", "qm9", "--source", str(SAMPLES), "--cache-dir", cache])
    assert result.exit_code == 0, result.output
    assert "19 structures" in result.output
    result = runner.invoke(app, ["info", "qm9", "--cache-dir", cache, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["n_structures"] == 19 and info["targets"]["homo"] == "eV" and info["path"].startswith(cache)
    result = runner.invoke(app, ["info", "qm9", "--cache-dir", cache])
    assert result.exit_code == 0 and "split rule" in result.output
    result = runner.invoke(app, ["list", "--cache-dir", cache, "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["qm9"]["prepared"] and not rows["md17-aspirin"]["prepared"] and "oc20-is2re" in rows
    result = runner.invoke(app, ["stats", "qm9", "--cache-dir", cache, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["avg_num_atoms"] > 0
    result = runner.invoke(app, ["info", "md17-aspirin", "--cache-dir", cache, "--json"])
    assert json.loads(result.output)["prepared"] is False
    result = runner.invoke(app, ["prepare", "md17-aspirin", "--cache-dir", cache])
    assert result.exit_code == 1 and "no source given" in result.output


def test_list_includes_custom_prepared(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "mine")
    prepare_dataset(
        "my-molecules", source=tmp_path / "mine" / "dsgdb9nsd_000001.xyz", cache_dir=tmp_path / "c", energy_unit="eV"
    )
    rows = {r["name"]: r for r in list_datasets(tmp_path / "c")}
    assert rows["my-molecules"]["prepared"]


def test_prepare_rmd17_from_mirror(server, tmp_path):
    root, url, _ = server
    src = tmp_path / "src" / "rmd17"
    (src / "npz_data").mkdir(parents=True)
    (src / "splits").mkdir()
    rng = np.random.default_rng(4)
    np.savez(
        src / "npz_data" / "rmd17_ethanol.npz",
        nuclear_charges=np.array([8, 1, 1]),
        coords=rng.normal(size=(10, 3, 3)),
        energies=rng.normal(size=10),
        forces=rng.normal(size=(10, 3, 3)),
    )
    (src / "splits" / "index_train_01.csv").write_text("0\n1\n2\n3\n4\n5\n")
    (src / "splits" / "index_test_01.csv").write_text("6\n7\n8\n9\n")
    with tarfile.open(root / "rmd17.tar.bz2", "w:bz2") as tar:
        tar.add(src, arcname="rmd17")
    with pytest.warns(UserWarning, match="no published checksum"):
        path = prepare_dataset("rmd17-ethanol", cache_dir=tmp_path / "c", download=True, mirror=url, val_size=1)
    dataset = PreparedDataset(path)
    assert dataset.manifest["splits"] == {"train": 5, "val": 1, "test": 4}
    np.testing.assert_array_equal(dataset.split_indices("test"), [6, 7, 8, 9])


def test_official_checksum_is_enforced(server, tmp_path):
    root, url, _ = server
    (root / "is2res_train_val_test_lmdbs.tar.gz").write_bytes(b"not the OC20 archive")
    with pytest.raises(DataError, match="md5 .* != expected cfc04dd2f87b4102ab2f607240d25fb1"):
        prepare_dataset("oc20-is2re", cache_dir=tmp_path, download=True, mirror=url)
    assert not list((tmp_path / "downloads").glob("is2res*"))


def test_safe_extract_refuses_escaping_members(tmp_path):
    from zoo.data.prepare import _safe_extract

    archive = tmp_path / "evil.tar"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "payload", arcname="ok/inside.txt")
        tar.add(tmp_path / "payload", arcname="../outside.txt")
    with pytest.raises(DataError, match="outside the extraction folder"):
        _safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
