"""The Hub server (zoo.hub.server) under bad input: names that climb out of its folder, bodies that are
too large, malformed or cut off, missing or foreign tokens, YAML bombs in cards; and what it creates
like the real Hub (`.gitattributes`). Malicious requests go over raw sockets / http.client, what a user
sees through the real huggingface_hub client. docs/bad-inputs.md lists every case beside its test."""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hubtools import point_client_at

ALICE, BOB = "alice-token", "bob-token"


def _raw(url: str, method: str, path: str, body=None, token=None, headers=None, timeout: float = 10):
    """(status, headers, body) of one request on a fresh connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def _exchange(url: str, head: bytes, body: bytes = b"", shut: bool = False, timeout: float = 10) -> bytes:
    """Send raw bytes (optionally then end the sending side) and return everything the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else -1


def _commit_body(path: str, data: bytes, summary: str = "c") -> bytes:
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}},
             {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}]  # fmt: skip
    return b"\n".join(json.dumps(line).encode() for line in lines) + b"\n"


def _head(url: str, repo: str = "alice/demo") -> str:
    status, _, body = _raw(url, "GET", f"/api/models/{repo}/refs", token=ALICE)
    assert status == 200, body
    return {b["name"]: b["targetCommit"] for b in json.loads(body)["branches"]}["main"]


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """The server in this process: two users, a 1 MiB body limit and a 2 s read timeout."""
    from zoo.hub.server import serve_hub

    with serve_hub(tmp_path / "store", tokens={ALICE: "alice", BOB: "bob"}, max_body=1 << 20, timeout=2.0) as hub:
        point_client_at(monkeypatch, hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield hub


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """`equizoo hub serve` in a subprocess without --token: (url, the token it printed, process, root)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path_factory.mktemp("cli-hub") / "data" / "store"
    proc = subprocess.Popen([sys.executable, "-m", "zoo.cli", "hub", "serve", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        first, second = (lines.get(timeout=60) for _ in range(2))
        url = f"http://127.0.0.1:{port}"
        assert url in first and "write token" in second, (
            first + second + (proc.stderr.read() if proc.poll() is not None else "")
        )
        token = second.split("HF_TOKEN=")[1].split(";")[0].strip()
        deadline = time.time() + 30
        while True:
            try:
                if _raw(url, "GET", "/api/whoami-v2", token=token, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "the server did not come up"
            time.sleep(0.2)
        yield url, token, proc, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_names_that_leave_the_data_folder_are_refused(cli_server, tmp_path):
    """Repo ids, types, revisions, file paths and object ids that climb out are 400, in a subprocess
    server that must survive them; nothing outside (or at the top of) the data folder is read or changed."""
    url, token, proc, root = cli_server
    victim = tmp_path / "victims" / "org" / "name"  # an outside folder with a repo.json: type "<tmp>/victim"
    victim.mkdir(parents=True)
    (victim / "repo.json").write_text('{"private": false}')
    assert _raw(url, "POST", "/api/repos/create", {"name": "demo", "organization": "org"}, token)[0] == 200
    bad_creates = [
        {"name": "..", "organization": ".."},
        {"name": "x", "organization": ".."},
        {"name": "..", "organization": "org"},
        {"name": "a/b", "organization": "org"},
        {"name": "x\\y", "organization": "org"},
        {"name": "a--b", "organization": "org"},
        {"name": "x.git", "organization": "org"},
        {"name": "n" * 97, "organization": "org"},
        {"name": "x\x00", "organization": "org"},
        {"name": "x", "organization": "org", "type": str(tmp_path / "victim")},
        {"name": "x", "organization": "org", "type": "../../models"},
    ]
    for payload in bad_creates:
        status, resp, body = _raw(url, "POST", "/api/repos/create", payload, token)
        assert status == 400, (payload, body)
    deletes = [{"name": "name", "organization": "org", "type": str(tmp_path / "victim")},
               {"name": "..", "organization": ".."}, {"name": "store", "organization": ".."}]  # fmt: skip
    for payload in deletes:
        assert _raw(url, "DELETE", "/api/repos/delete", payload, token)[0] == 400, payload
    reads = ["/api/models/%2e%2e/%2e%2e", "/api/models/..%2f../x", "/api/datasets/%2e%2e/repos",
             "/api/models/org/demo/tree/main/..%2f..", "/api/models/org/demo/tree/a..b",
             "/api/models/org/demo/revision/..%2f..%2fx", "/org/demo/resolve/main/..%2f..%2frepo.json",
             "/org/demo/resolve/main/%2fetc%2fpasswd", "/org/demo/resolve/main/a%5cb", "/org/demo/resolve/main/a%00b",
             "/org/demo/resolve/..%2f..%2fx/.gitattributes", "/org/demo/resolve/main/.git/config"]  # fmt: skip
    for path in reads:
        assert _raw(url, "GET", path, token=token)[0] == 400, path
    status, _, body = _raw(url, "GET", "/api/models/org/demo/refs", token=token)
    head = {b["name"]: b["targetCommit"] for b in json.loads(body)["branches"]}["main"]
    for path in ["../escape.txt", "/abs.txt", "a\\b.txt", "a/./b", "a//b", "nul\x00.txt", ".git/hooks/x", ""]:
        status, _, body = _raw(url, "POST", "/api/models/org/demo/commit/main", _commit_body(path, b"x"), token)
        assert status == 400, (path, body)
    sneaky = json.dumps(
        {"key": "lfsFile", "value": {"path": "x.json", "oid": "../repos/models/org/demo/repo.json", "algo": "sha256"}}
    )
    status, _, body = _raw(
        url,
        "POST",
        "/api/models/org/demo/commit/main",
        _commit_body("ok.txt", b"x").replace(b'{"key": "file"', sneaky.encode() + b'\n{"key": "file"'),
        token,
    )
    assert status == 400 and b"object id" in body, body
    for rev in ["..", "a..b", "/x", "x/", "a b", "a~1", "x.lock", "-x"]:
        assert _raw(url, "POST", "/api/models/org/demo/tag/main", {"tag": rev}, token)[0] == 400, rev
        assert (
            _raw(url, "POST", f"/api/models/org/demo/branch/{rev.replace('/', '%2F').replace(' ', '%20')}", {}, token)[
                0
            ]
            == 400
        ), rev
    status, _, body = _raw(url, "GET", "/api/models/org/demo/refs", token=token)
    refs = json.loads(body)
    assert status == 200 and refs["tags"] == [] and [b["name"] for b in refs["branches"]] == ["main"]
    assert refs["branches"][0]["targetCommit"] == head
    assert proc.poll() is None, "the server died"
    assert (victim / "repo.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["victims"]
    assert [p.name for p in root.parent.iterdir()] == ["store"] and [p.name for p in root.parent.parent.iterdir()] == [
        "data"
    ]
    assert sorted(p.name for p in root.iterdir()) == ["blobs", "repos"] and [
        p.name for p in (root / "repos").iterdir()
    ] == ["models"]
    assert [p.name for p in (root / "repos" / "models" / "org").iterdir()] == ["demo"]


def test_cli_server_generates_a_write_token(cli_server):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    url, token, _, _ = cli_server
    for wrong in (False, "anything", token[:-1]):
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=url, token=wrong).create_repo("equizoo/x")
        assert exc.value.response.status_code == 401
    assert HfApi(endpoint=url, token=token).create_repo("equizoo/x").repo_id == "equizoo/x"


def test_new_repos_hold_the_hubs_gitattributes(served, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    from zoo.hub.store import GITATTRIBUTES

    api = HfApi(endpoint=served.url, token=ALICE)
    api.create_repo("alice/fresh")
    assert api.list_repo_files("alice/fresh") == [".gitattributes"]
    assert [c.title for c in api.list_repo_commits("alice/fresh")] == ["initial commit"]
    text = Path(
        hf_hub_download("alice/fresh", ".gitattributes", endpoint=served.url, cache_dir=str(tmp_path / "c"))
    ).read_text()
    assert text == GITATTRIBUTES
    for pattern in ("*.safetensors", "*.pt", "*.onnx", "*.bin", "*.ckpt", "*tfevents*"):
        assert f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" in text
    api.create_repo("alice/data", repo_type="dataset")
    assert api.list_repo_files("alice/data", repo_type="dataset") == [".gitattributes"]


def _bomb(levels: int = 6) -> str:
    lines = ['a0: &a0 ["xyz", "xyz", "xyz", "xyz", "xyz", "xyz", "xyz", "xyz", "xyz", "xyz"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "---\nlibrary_name: equizoo\n" + "\n".join(lines) + "\n---\n# bomb\n"


def test_card_metadata_with_yaml_aliases_is_refused(served, tmp_path):
    """A few hundred bytes of nested aliases (10**6 strings once expanded) are refused on commit, skipped
    if already stored, and refused by the card reader of zoo.cards."""
    from huggingface_hub import HfApi

    from zoo.cards import CardError, card_metrics
    from zoo.hub.store import _git_blob_sha1

    bomb = _bomb()
    assert len(bomb) < 600
    api = HfApi(endpoint=served.url, token=ALICE)
    api.create_repo("alice/card")
    head = api.model_info("alice/card").sha
    with pytest.raises(ValueError, match="anchors and aliases"):  # the client asks /api/validate-yaml first
        api.upload_file(path_or_fileobj=bomb.encode(), path_in_repo="README.md", repo_id="alice/card")
    status, _, body = _raw(
        served.url, "POST", "/api/models/alice/card/commit/main", _commit_body("README.md", bomb.encode()), ALICE
    )
    assert status == 400 and b"anchors and aliases" in body  # and the commit itself is refused
    assert api.model_info("alice/card").sha == head

    store = served.server.store  # a card stored before this check existed: listings skip its metadata
    repo = store.repo("model", "alice/card")
    tree = dict(store.commit("model", "alice/card", head)["tree"])
    tree["README.md"] = {
        "sha256": store.put_blob(bomb.encode()),
        "oid": _git_blob_sha1(bomb.encode()),
        "size": len(bomb),
    }
    store._new_commit("model", "alice/card", repo, "main", head, tree, "old card", "", "alice")
    status, _, body = _raw(served.url, "GET", "/api/models")
    assert status == 200 and len(body) < 10_000 and "cardData" not in json.loads(body)[0]

    big = "---\n" + "".join(f"k{i}: {'v' * 60}\n" for i in range(5000)) + "---\n"
    status, _, body = _raw(served.url, "POST", "/api/validate-yaml", {"content": big})
    assert status == 400 and b"over 256 KiB" in body

    card = tmp_path / "README.md"
    card.write_text(bomb)
    with pytest.raises(CardError, match="anchors and aliases"):
        card_metrics(card)


def test_links_out_of_the_data_folder_are_not_followed(served, tmp_path):
    """A folder inside the store that links outside is neither read, listed nor deleted."""
    outside = tmp_path / "outside" / "name"
    outside.mkdir(parents=True)
    (outside / "repo.json").write_text(
        json.dumps({"id": "evil/name", "private": False, "owner": "alice", "refs": {"branches": {}, "tags": {}}})
    )
    (served.root / "repos" / "models").mkdir(parents=True, exist_ok=True)
    (served.root / "repos" / "models" / "evil").symlink_to(tmp_path / "outside", target_is_directory=True)
    status, _, body = _raw(served.url, "GET", "/api/models/evil/name", token=ALICE)
    assert status == 400 and b"outside the server's data folder" in body
    assert _raw(served.url, "GET", "/api/models", token=ALICE)[2] == b"[]"
    assert _raw(served.url, "DELETE", "/api/repos/delete", {"name": "name", "organization": "evil"}, ALICE)[0] == 400
    assert (outside / "repo.json").is_file()


def test_token_is_checked_and_length_validated_before_the_body_is_read(served):
    url = served.url
    # no token, 50 MB announced and none sent: answered at once (the server does not wait for the body)
    answer = _exchange(
        url, b"POST /api/repos/create HTTP/1.1\r\nHost: h\r\nContent-Length: 50000000\r\n\r\n", timeout=5
    )
    assert _status(answer) == 401 and b"Connection: close" in answer
    auth = f"Authorization: Bearer {ALICE}\r\n".encode()
    answer = _exchange(
        url,
        b"POST /api/repos/create HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Length: 1000000000000\r\n\r\n",
        timeout=5,
    )
    assert _status(answer) == 413 and b"limit" in answer
    for length in (b"-1", b"abc", b"1e3", b"12, 13", b" "):
        answer = _exchange(
            url,
            b"POST /api/repos/create HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Length: " + length + b"\r\n\r\n",
            timeout=5,
        )
        assert _status(answer) == 400 and b"Content-Length" in answer, length
    both = (
        b"POST /api/repos/create HTTP/1.1\r\nHost: h\r\n"
        + auth
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert _status(_exchange(url, both, b"0\r\n\r\n", timeout=5)) == 400
    big = b"POST /api/repos/create HTTP/1.1\r\nHost: h\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    assert (
        _status(_exchange(url, big, b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n1\r\nx\r\n0\r\n\r\n", timeout=5))
        == 413
    )
    assert _raw(url, "GET", "/api/models")[0] == 200  # still serving


def test_cut_off_uploads_are_never_committed(served):
    from huggingface_hub import HfApi

    url = served.url
    api = HfApi(endpoint=url, token=ALICE)
    api.create_repo("alice/demo")
    head = _head(url)
    body = _commit_body("weights.bin", os.urandom(3000))
    start = f"POST /api/models/alice/demo/commit/main HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/x-ndjson\r\n".encode()
    # every line complete, but fewer bytes than announced, then the client hangs up
    answer = _exchange(url, start + b"Content-Length: %d\r\n\r\n" % (len(body) + 100), body, shut=True)
    assert _status(answer) == 400 and b"cut off" in answer
    # chunked: the whole payload in one chunk, then the stream breaks before the last (empty) chunk
    answer = _exchange(
        url, start + b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n" % len(body) + body + b"\r\n", shut=True
    )
    assert _status(answer) == 400 and b"cut off" in answer
    # malformed chunk framing
    answer = _exchange(
        url, start + b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\n" + body + b"\r\n0\r\n\r\n", shut=True
    )
    assert _status(answer) == 400
    # a client that stops sending: the read times out (2 s here) instead of holding the connection
    answer = _exchange(url, start + b"Content-Length: %d\r\n\r\n" % len(body), body[:100], timeout=20)
    assert _status(answer) == 408
    assert _head(url) == head and api.list_repo_files("alice/demo") == [".gitattributes"]
    # the same payload, complete, commits
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    assert _status(_exchange(url, start + b"Transfer-Encoding: chunked\r\n\r\n", chunked)) == 200
    assert _head(url) != head and sorted(api.list_repo_files("alice/demo")) == [".gitattributes", "weights.bin"]


def test_writes_need_the_owners_token_and_private_repos_are_the_owners(served, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    alice, bob, anonymous = (HfApi(endpoint=served.url, token=t) for t in (ALICE, BOB, False))
    alice.create_repo("alice/model")
    (tmp_path / "a.txt").write_text("a")
    alice.upload_file(path_or_fileobj=str(tmp_path / "a.txt"), path_in_repo="a.txt", repo_id="alice/model")
    head = alice.model_info("alice/model").sha
    for attempt in (lambda: bob.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="alice/model"),
                    lambda: bob.create_tag("alice/model", tag="v1"), lambda: bob.create_branch("alice/model", branch="b"),
                    lambda: bob.delete_repo("alice/model")):  # fmt: skip
        with pytest.raises(HfHubHTTPError) as exc:
            attempt()
        assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        anonymous.delete_repo("alice/model")
    assert exc.value.response.status_code == 401
    assert alice.model_info("alice/model").sha == head and alice.list_repo_refs("alice/model").tags == []

    alice.create_repo("alice/secret", private=True)
    assert alice.model_info("alice/secret").private is True
    for other in (bob, anonymous):
        with pytest.raises(RepositoryNotFoundError):
            other.model_info("alice/secret")
        assert [m.id for m in other.list_models()] == ["alice/model"]
    assert sorted(m.id for m in alice.list_models()) == ["alice/model", "alice/secret"]
    alice.delete_repo("alice/model")
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/model")


def test_tokens_are_compared_in_constant_time(served, monkeypatch):
    """Every known token goes through hmac.compare_digest (an operation count, not a timing)."""
    import hmac

    from zoo.hub import server as hub_server

    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hub_server.hmac, "compare_digest", counting)
    assert served.server.user_of(BOB) == "bob" and served.server.user_of("nope") is None
    assert len(calls) == 4 and {a for a, _ in calls} == {ALICE.encode(), BOB.encode()}


def test_start_hub_without_tokens_generates_one(tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from zoo.hub.server import serve_hub

    with serve_hub(tmp_path / "store") as hub:
        assert hub.generated and len(hub.token) >= 32
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(endpoint=hub.url, token="anything").create_repo("equizoo/x")
        assert exc.value.response.status_code == 401
        HfApi(endpoint=hub.url, token=hub.token).create_repo("equizoo/x")
