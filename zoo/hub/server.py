"""A small Hugging Face Hub-compatible HTTP server, persisted in a folder: for tests and for a team's
local model hub. The real `huggingface_hub` client talks to it through `HF_ENDPOINT` (or `endpoint=`).

It implements what the client uses to create repos, commit files (every file is answered "regular", so
contents travel base64-inline in the commit and Git-LFS/Xet are never touched), tag, list and download:

    GET  /api/whoami-v2                         POST /api/repos/create      DELETE /api/repos/delete
    POST /api/validate-yaml                     GET  /api/{type}s?author=&search=
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]        GET  .../tree/{rev}[/{path}]
    POST .../paths-info/{rev}   GET .../refs   GET .../commits/{rev}   POST .../preupload/{rev}
    POST .../commit/{branch}    POST|DELETE .../tag/{rev|tag}   POST|DELETE .../branch/{branch}
    HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}  (X-Repo-Commit, ETag = sha256, Range)

Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) so the client raises the right
exception. Writes need `Authorization: Bearer TOKEN` (any token when the server was given none, else one
of its tokens); private repos need it for reads too. The request body is always read, so HTTP/1.1
keep-alive connections stay in step. Storage: `ROOT/blobs/{sha256}` (content-addressed) and
`ROOT/repos/{type}s/{ns}/{name}/{repo.json, commits/{sha}.json}`; every write is temp + rename.

    with serve_hub(tmp_path / "hub") as hub:       # http://127.0.0.1:PORT
        HfApi(endpoint=hub.url, token="x").create_repo("org/name")
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = ("model", "dataset", "space")
_HEX40 = set("0123456789abcdef")


class HubError(Exception):
    """An HTTP error answer: status, message and the Hub's X-Error-Code."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, body: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    from zoo.io import atomic_write_bytes

    atomic_write_bytes(path, data)


def _card_data(readme: bytes) -> Optional[dict]:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class HubStore:
    """Repositories, commits, refs and blobs in a folder (thread-safe through one lock)."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        ns, name = repo_id.split("/")
        return self.root / "repos" / f"{repo_type}s" / ns / name

    def repo(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def _save_repo(self, repo_type: str, repo_id: str, repo: dict) -> None:
        _write_atomic(self._repo_dir(repo_type, repo_id) / "repo.json", json.dumps(repo, indent=1).encode())

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        if not path.is_file():
            raise HubError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
        return json.loads(path.read_text())

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if not path.is_file():
            _write_atomic(path, data)
        return digest

    def repos(self, repo_type: str) -> Iterator[Tuple[str, dict]]:
        base = self.root / "repos" / f"{repo_type}s"
        for path in sorted(base.glob("*/*/repo.json")):
            yield f"{path.parent.parent.name}/{path.parent.name}", json.loads(path.read_text())

    # ------------------------------------------------------------------ refs
    def resolve(self, repo_type: str, repo_id: str, rev: str) -> str:
        """The commit sha a branch, tag, refs/... name or full sha points to."""
        repo = self.repo(repo_type, repo_id)
        refs = repo["refs"]
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if rev.startswith(prefix) and rev[len(prefix):] in refs[table]:
                return refs[table][rev[len(prefix):]]
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if len(rev) == 40 and set(rev) <= _HEX40:
            return self.commit(repo_type, repo_id, rev)["id"]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ writes
    def create_repo(self, repo_type: str, repo_id: str, private: bool, user: str) -> dict:
        with self.lock:
            path = self._repo_dir(repo_type, repo_id) / "repo.json"
            if path.is_file():
                raise HubError(409, f"You already created this {repo_type} repo", body={"error": f"You already created this {repo_type} repo", "url": repo_id})
            repo = {"id": repo_id, "type": repo_type, "private": bool(private), "created": _now(), "author": user,
                    "refs": {"branches": {}, "tags": {}}}  # fmt: skip
            self._save_repo(repo_type, repo_id, repo)
            self._new_commit(repo_type, repo_id, repo, "main", None, {}, "initial commit", "", user)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        import shutil

        with self.lock:
            self.repo(repo_type, repo_id)
            shutil.rmtree(self._repo_dir(repo_type, repo_id))

    def _new_commit(self, repo_type: str, repo_id: str, repo: dict, branch: str, parent: Optional[str], tree: dict, title: str, message: str, user: str) -> str:
        body = {"parents": [parent] if parent else [], "tree": tree, "title": title, "message": message, "date": _now(), "author": user, "nonce": time.time_ns()}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        body["id"] = sha
        _write_atomic(self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json", json.dumps(body).encode())
        repo["refs"]["branches"][branch] = sha
        repo["lastModified"] = body["date"]
        self._save_repo(repo_type, repo_id, repo)
        return sha

    def apply_commit(self, repo_type: str, repo_id: str, branch: str, lines: list, user: str) -> str:
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            if branch not in repo["refs"]["branches"]:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound")
            head = repo["refs"]["branches"][branch]
            tree = dict(self.commit(repo_type, repo_id, head)["tree"])
            header = next((item["value"] for item in lines if item.get("key") == "header"), None)
            if header is None:
                raise HubError(400, "the commit payload has no header line")
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, f"parent commit {parent} is not the head of {branch} ({head})")
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                if key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                    tree[value["path"]] = {"sha256": self.put_blob(data), "oid": _git_blob_sha1(data), "size": len(data)}
                elif key == "lfsFile":
                    if not self.blob(value["oid"]).is_file():
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded (this server takes files inline)")
                    data = self.blob(value["oid"]).read_bytes()
                    tree[value["path"]] = {"sha256": value["oid"], "oid": _git_blob_sha1(data), "size": len(data)}
                elif key == "deletedFile":
                    if value["path"] not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del tree[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in tree if p.startswith(prefix)]:
                        del tree[path]
                elif key != "header":
                    raise HubError(400, f"unsupported commit operation {key!r}")
            return self._new_commit(repo_type, repo_id, repo, branch, head, tree, header.get("summary", ""), header.get("description", ""), user)

    def set_ref(self, repo_type: str, repo_id: str, kind: str, name: str, sha: Optional[str]) -> None:
        """Create (sha given; 409 if it exists) or delete (sha None; 404 if missing) a branch or tag."""
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            table = repo["refs"][kind]
            if sha is None:
                if name not in table:
                    raise HubError(404, f"{kind[:-1]} {name} not found", "RevisionNotFound")
                del table[name]
            else:
                if name in table:
                    raise HubError(409, f"{kind[:-1]} {name} already exists")
                table[name] = sha
            self._save_repo(repo_type, repo_id, repo)


class HubHandler(BaseHTTPRequestHandler):
    """One request; the server object carries the store and the accepted tokens."""

    protocol_version = "HTTP/1.1"
    server: "HubHTTPServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: Optional[Mapping[str, str]] = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Mapping[str, str]] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers, head=self.command == "HEAD")

    def _error(self, exc: HubError) -> None:
        headers = {"X-Error-Message": exc.message.encode("ascii", "replace").decode()}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        if exc.code == "EntryNotFound" and getattr(exc, "commit", None):
            headers["X-Repo-Commit"] = exc.commit  # type: ignore[attr-defined]
        self._json(exc.status, exc.body or {"error": exc.message}, headers)

    def _user(self, required: bool) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        tokens = self.server.tokens
        if token and (tokens is None or token in tokens):
            return self.server.default_user if tokens is None else tokens[token]
        if required:
            raise HubError(401, "Invalid credentials in Authorization header" if token else "You must be authenticated (Authorization: Bearer TOKEN) to do this")
        return None

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        repo = self.server.store.repo(repo_type, repo_id)
        if repo["private"] and self._user(False) is None:
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _dispatch(self) -> None:
        body = self._body()  # always read, even for errors: keep-alive needs it
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            parts = [unquote(p) for p in url.path.split("/") if p]
            self._route(parts, query, body)
        except HubError as exc:
            self._error(exc)
        except (KeyError, ValueError, TypeError) as exc:
            self._error(HubError(400, f"bad request: {type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - answer instead of dropping the connection
            self._error(HubError(500, f"server error: {type(exc).__name__}: {exc}"))

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _dispatch

    # ------------------------------------------------------------------ routing
    def _route(self, parts: list, query: dict, body: bytes) -> None:
        m = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and m == "GET":
                user = self._user(True)
                return self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})
            if rest == ["repos", "create"] and m == "POST":
                return self._create(json.loads(body or b"{}"))
            if rest == ["repos", "delete"] and m == "DELETE":
                return self._delete(json.loads(body or b"{}"))
            if rest == ["validate-yaml"] and m == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(rest) == 1 and rest[0] in ("models", "datasets", "spaces") and m == "GET":
                return self._list(rest[0][:-1], query)
            if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
                return self._repo_api(rest[0][:-1], f"{rest[1]}/{rest[2]}", rest[3:], query, body)
        else:
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = parts[0][:-1], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve" and m in ("GET", "HEAD"):
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"no route for {m} {self.path}")

    def _repo_api(self, repo_type: str, repo_id: str, rest: list, query: dict, body: bytes) -> None:
        store, m = self.server.store, self.command
        if not rest and m == "GET":
            return self._info(repo_type, repo_id, "main", query)
        if len(rest) == 2 and rest[0] == "revision" and m == "GET":
            return self._info(repo_type, repo_id, rest[1], query)
        if len(rest) >= 2 and rest[0] == "tree" and m == "GET":
            return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
        if len(rest) == 2 and rest[0] == "paths-info" and m == "POST":
            return self._paths_info(repo_type, repo_id, rest[1], body)
        if rest == ["refs"] and m == "GET":
            repo = self._readable(repo_type, repo_id)
            refs = repo["refs"]
            def items(kind: str, prefix: str) -> list:
                return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())]
            return self._json(200, {"branches": items("branches", "refs/heads/"), "tags": items("tags", "refs/tags/"), "converts": [], "pullRequests": []})
        if len(rest) == 2 and rest[0] == "commits" and m == "GET":
            return self._commits(repo_type, repo_id, rest[1])
        if len(rest) == 2 and rest[0] == "preupload" and m == "POST":
            return self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        if len(rest) == 2 and rest[0] == "commit" and m == "POST":
            user = self._user(True)
            if "create_pr" in query:
                raise HubError(400, "pull requests are not supported by this server")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            sha = store.apply_commit(repo_type, repo_id, rest[1], lines, user)
            return self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self._base()}/{self._prefix(repo_type)}{repo_id}/commit/{sha}", "pullRequestUrl": None})
        if len(rest) == 2 and rest[0] == "tag" and m in ("POST", "DELETE"):
            self._user(True)
            if m == "POST":
                payload = json.loads(body or b"{}")
                store.set_ref(repo_type, repo_id, "tags", payload["tag"], store.resolve(repo_type, repo_id, rest[1]))
            else:
                store.set_ref(repo_type, repo_id, "tags", rest[1], None)
            return self._json(200, {})
        if len(rest) == 2 and rest[0] == "branch" and m in ("POST", "DELETE"):
            self._user(True)
            if m == "POST":
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                store.set_ref(repo_type, repo_id, "branches", rest[1], store.resolve(repo_type, repo_id, start))
            else:
                store.set_ref(repo_type, repo_id, "branches", rest[1], None)
            return self._json(200, {})
        raise HubError(404, f"no route for {m} {self.path}")

    # ------------------------------------------------------------------ handlers
    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @staticmethod
    def _prefix(repo_type: str) -> str:
        return "" if repo_type == "model" else f"{repo_type}s/"

    def _create(self, payload: dict) -> None:
        user = self._user(True)
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"unknown repo type {repo_type!r}")
        name, ns = payload["name"], payload.get("organization") or user
        if "/" in name or not name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{ns}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        url = f"{self._base()}/{self._prefix(repo_type)}{repo_id}"
        try:
            self.server.store.create_repo(repo_type, repo_id, private, user)
        except HubError as exc:
            if exc.status == 409:
                exc.body = {"error": exc.message, "url": url}
            raise
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete(self, payload: dict) -> None:
        user = self._user(True)
        repo_type = payload.get("type") or "model"
        self.server.store.delete_repo(repo_type, f"{payload.get('organization') or user}/{payload['name']}")
        self._json(200, {})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---"):
            end = content.find("\n---", 3)
            try:
                data = yaml.safe_load(content[3:end]) if end > 0 else None
            except yaml.YAMLError as exc:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
            if end < 0 or (data is not None and not isinstance(data, dict)):
                return self._json(400, {"errors": [{"message": "the metadata block must be a YAML mapping between --- lines"}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _summary(self, repo_type: str, repo_id: str, repo: dict, sha: str, blobs: bool) -> dict:
        commit = self.server.store.commit(repo_type, repo_id, sha)
        tree = commit["tree"]
        siblings = []
        for path in sorted(tree):
            entry = {"rfilename": path}
            if blobs:
                e = tree[path]
                entry.update(size=e["size"], blobId=e["oid"], lfs={"sha256": e["sha256"], "size": e["size"], "pointerSize": 134})
            siblings.append(entry)
        card = None
        if "README.md" in tree:
            card = _card_data(self.server.store.blob(tree["README.md"]["sha256"]).read_bytes())
        info = {"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo["private"], "gated": False,
                "disabled": False, "lastModified": commit["date"], "createdAt": repo["created"], "tags": list((card or {}).get("tags") or []),
                "siblings": siblings, "downloads": 0, "likes": 0}  # fmt: skip
        if card is not None:
            info["cardData"] = card
            if repo_type == "model" and card.get("library_name"):
                info["library_name"] = card["library_name"]
        return info

    def _info(self, repo_type: str, repo_id: str, rev: str, query: dict) -> None:
        repo = self._readable(repo_type, repo_id)
        sha = self.server.store.resolve(repo_type, repo_id, rev)
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        self._json(200, self._summary(repo_type, repo_id, repo, sha, blobs))

    def _list(self, repo_type: str, query: dict) -> None:
        author = query.get("author", [None])[0]
        search = (query.get("search", [""])[0] or "").lower()
        authenticated = self._user(False) is not None
        out = []
        for repo_id, repo in self.server.store.repos(repo_type):
            if (author and repo_id.split("/")[0] != author) or (search and search not in repo_id.lower()) or (repo["private"] and not authenticated):
                continue
            head = repo["refs"]["branches"].get("main") or next(iter(repo["refs"]["branches"].values()), None)
            if head is not None:
                out.append(self._summary(repo_type, repo_id, repo, head, False))
        limit = query.get("limit", [None])[0]
        self._json(200, out[: int(limit)] if limit else out)

    def _entries(self, tree: dict, base: str, recursive: bool) -> list:
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        files, folders = [], set()
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest:
                parts = rest.split("/")[:-1]
                for depth in range(1, (len(parts) if recursive else 1) + 1):
                    folders.add(prefix + "/".join(parts[:depth]))
                if not recursive:
                    continue
            files.append(path)
        out = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f} for f in sorted(folders)]
        for path in files:
            e = tree[path]
            out.append({"type": "file", "oid": e["oid"], "size": e["size"], "path": path, "lfs": {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}})
        return out

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str, query: dict) -> None:
        self._readable(repo_type, repo_id)
        store = self.server.store
        sha = store.resolve(repo_type, repo_id, rev)
        tree = store.commit(repo_type, repo_id, sha)["tree"]
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        if path and path in tree:
            raise HubError(400, f"{path} is a file, not a folder")
        entries = self._entries(tree, path, recursive)
        if path and not entries:
            exc = HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
            exc.commit = sha  # type: ignore[attr-defined]
            raise exc
        self._json(200, entries, {"X-Repo-Commit": sha})

    def _paths_info(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        self._readable(repo_type, repo_id)
        store = self.server.store
        tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev))["tree"]
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths if isinstance(paths, list) else [paths]:
            p = p.strip("/")
            if p in tree:
                out.extend(e for e in self._entries(tree, "", True) if e["path"] == p)
            elif any(k.startswith(p + "/") for k in tree):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "path": p})
        self._json(200, out)

    def _commits(self, repo_type: str, repo_id: str, rev: str) -> None:
        self._readable(repo_type, repo_id)
        store = self.server.store
        sha: Optional[str] = store.resolve(repo_type, repo_id, rev)
        out = []
        while sha:
            c = store.commit(repo_type, repo_id, sha)
            out.append({"id": c["id"], "title": c["title"], "message": c["message"], "authors": [{"user": c["author"]}], "date": c["date"]})
            sha = c["parents"][0] if c["parents"] else None
        self._json(200, out)

    def _preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict) -> None:
        self._user(True)
        store = self.server.store
        store.repo(repo_type, repo_id)
        try:
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev))["tree"]
        except HubError:
            tree = {}
        patterns = [line.strip() for line in (payload.get("gitIgnore") or "").splitlines() if line.strip() and not line.startswith("#")]
        files = []
        for f in payload.get("files", []):
            ignored = any(fnmatch.fnmatch(f["path"], p) for p in patterns)
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": ignored, "oid": tree.get(f["path"], {}).get("oid")})
        self._json(200, {"files": files, "commitOid": None})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        head = self.command == "HEAD"
        self._readable(repo_type, repo_id)
        store = self.server.store
        sha = store.resolve(repo_type, repo_id, rev)
        tree = store.commit(repo_type, repo_id, sha)["tree"]
        if path not in tree:
            exc = HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
            exc.commit = sha  # type: ignore[attr-defined]
            raise exc
        entry = tree[path]
        blob = store.blob(entry["sha256"])
        size = entry["size"]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["sha256"]}"', "Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{Path(path).name}"'}
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].split(",")[0].partition("-")
            if first:
                start, end = int(first), (int(last) if last else size - 1)
            else:
                start, end = max(size - int(last), 0), size - 1
            if start >= size or start > end:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, b"", "text/plain", headers, head)
            end = min(end, size - 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head or not length:
            return
        with open(blob, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, store: HubStore, tokens: Optional[Mapping[str, str]], default_user: str, verbose: bool) -> None:
        super().__init__(address, HubHandler)
        self.store = store
        self.tokens = dict(tokens) if tokens is not None else None
        self.default_user = default_user
        self.verbose = verbose
        self._connections: set = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (or connections ended by `close_connections`) are not errors."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End open keep-alive connections (a stopped server must not keep answering on them)."""
        import socket

        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RunningHub:
    """A server running in a background thread; `url` is its endpoint (give it to HF_ENDPOINT)."""

    def __init__(self, server: HubHTTPServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name="equizoo-hub", daemon=True)
        self.thread.start()
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.root = server.store.root

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self.thread.join(timeout=10)


def start_hub(
    root: Union[str, Path],
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: Optional[Mapping[str, str]] = None,
    user: str = "equizoo",
    verbose: bool = False,
) -> RunningHub:
    """Start a Hub server on host:port (0: a free port) storing into `root`. `tokens` maps accepted
    tokens to user names; None accepts any bearer token as `user`."""
    return RunningHub(HubHTTPServer((host, port), HubStore(root), tokens, user, verbose))


@contextlib.contextmanager
def serve_hub(root: Union[str, Path], **kwargs) -> Iterator[RunningHub]:
    """`start_hub` as a context manager that stops the server on exit."""
    hub = start_hub(root, **kwargs)
    try:
        yield hub
    finally:
        hub.stop()


def parse_tokens(items: Optional[list]) -> Optional[Dict[str, str]]:
    """TOKEN or TOKEN=USER strings as a token table (None if no items)."""
    if not items:
        return None
    out = {}
    for item in items:
        token, _, user = item.partition("=")
        out[token] = user or "equizoo"
    return out
