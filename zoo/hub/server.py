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

Like the Hub, a new repo's first commit ("initial commit") holds the Hub's default `.gitattributes`.
Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) so the client raises the right
exception.

Untrusted input is checked before it is used: repo types, repo ids, revisions and file paths follow the
Hub's rules (allowed characters and lengths, no `..`, no absolute paths, no backslash or control
characters) and every path the store builds is resolved and must stay inside its folder. Writes need
`Authorization: Bearer TOKEN` with one of the server's tokens (one is generated when none is given) and
touch only repos the token's user created; private repos are visible to their owner only. Tokens are
compared in constant time. The token is checked and the declared body size (`max_body`) and
Content-Length are validated before a body is read; a body that is cut off, malformed or too slow
(`timeout` seconds per read) is answered 400/408 and nothing is written; a commit is applied only from a
complete body, and the branch moves by one atomic rename of `repo.json`. Card metadata with YAML anchors
or aliases is refused (zoo.hub.frontmatter).

Storage (zoo.hub.store): `ROOT/blobs/{sha256}` (content-addressed) and
`ROOT/repos/{type}s/{ns}/{name}/{repo.json, commits/{sha}.json}`; every write is temp + rename.

    with serve_hub(tmp_path / "hub", tokens={"TOKEN": "alice"}) as hub:       # http://127.0.0.1:PORT
        HfApi(endpoint=hub.url, token="TOKEN").create_repo("alice/name")
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

from zoo.hub.frontmatter import MAX_FRONT_MATTER, FrontMatterError, load_front_matter
from zoo.hub.store import (
    NAME_RULE,
    HubStore,
    RequestError,
    card_metadata,
    check_path,
    check_repo_id,
    check_repo_type,
    check_revision,
    repo_owner,
)

MAX_BODY = 1 << 30  # bytes; commits carry files base64-inline, so this bounds one upload
TIMEOUT = 60.0  # seconds a socket read may wait
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class HubHandler(BaseHTTPRequestHandler):
    """One request; the server object carries the store, the tokens and the limits."""

    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # every socket read waits at most this long
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ plumbing
    def _body_length(self) -> Optional[int]:
        """The declared body size (None: chunked), checked before any of it is read."""
        encoding = self.headers.get_all("Transfer-Encoding") or []
        lengths = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if encoding:
            if [e.strip().lower() for e in encoding] != ["chunked"]:
                raise RequestError(
                    400, f"unsupported Transfer-Encoding {', '.join(encoding)!r}: send chunked or a Content-Length"
                )
            if lengths:
                raise RequestError(400, "a request has either Content-Length or Transfer-Encoding: chunked, not both")
            return None
        if not lengths:
            return 0
        if len(set(lengths)) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0]):
            raise RequestError(400, f"invalid Content-Length {', '.join(lengths)!r}: expected one non-negative integer")
        length = int(lengths[0])
        if length > self.server.max_body:
            raise RequestError(
                413,
                f"request body of {length} bytes is over this server's limit of {self.server.max_body} bytes (hub serve --max-body-mb)",
            )
        return length

    def _read_body(self, length: Optional[int]) -> bytes:
        """The whole body, or RequestError (400 cut off or malformed, 413 too large, 408 too slow)."""
        try:
            if length is None:
                return self._read_chunked()
            data = self.rfile.read(length) if length else b""
        except TimeoutError:
            raise RequestError(
                408, f"the request body did not arrive within {self.server.timeout_s:g} s; nothing was changed"
            ) from None
        if len(data) < length:
            raise RequestError(
                400, f"the request body was cut off ({len(data)} of {length} bytes arrived); nothing was changed"
            )
        return data

    def _read_chunked(self) -> bytes:
        chunks: List[bytes] = []
        total = 0
        cut = RequestError(400, "the chunked request body was cut off or malformed; nothing was changed")
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise cut
            size_text = line.split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise RequestError(
                    400, f"malformed chunk size {size_text[:20]!r} in the chunked request body; nothing was changed"
                )
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > self.server.max_body:
                raise RequestError(
                    413,
                    f"request body over this server's limit of {self.server.max_body} bytes (hub serve --max-body-mb)",
                )
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise cut
            chunks.append(data)
        for _ in range(64):  # trailer lines, then the empty line that ends the body
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n"):
                return b"".join(chunks)
            if not line.endswith(b"\n"):
                raise cut
        raise RequestError(400, "too many trailer lines after the chunked request body")

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: Optional[Mapping[str, str]] = None,
        head: bool = False,
    ) -> None:
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

    def _error(self, exc: RequestError, in_step: bool) -> None:
        """Answer an error; if the body was not (fully) read, close the connection after answering."""
        message = "".join(c if " " <= c < "\x7f" else "?" for c in exc.message)
        headers = {"X-Error-Message": message}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        if exc.code == "EntryNotFound" and getattr(exc, "commit", None):
            headers["X-Repo-Commit"] = exc.commit  # type: ignore[attr-defined]
        if not in_step:
            headers["Connection"] = "close"
            self.close_connection = True
        self._json(exc.status, exc.body or {"error": exc.message}, headers)
        if not in_step:
            self._discard_unread()

    def _discard_unread(self) -> None:
        """Lingering close: stop sending, then drop what the client still sends (at most 1 MiB, 2 s), so
        closing with unread data does not reset the connection before the client has read the answer."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 2.0
            left = 1 << 20
            while left > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)

    def _user(self, required: bool) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        user = self.server.user_of(token) if token else None
        if user is None and required:
            raise RequestError(
                401,
                "Invalid credentials in Authorization header"
                if token
                else "You must be authenticated (Authorization: Bearer TOKEN) to do this",
            )
        return user

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        """The repo if this request may read it: public, or private and the token's user owns it."""
        repo = self.server.store.repo(repo_type, repo_id)
        if repo["private"]:
            user = self._user(False)
            if user is None:
                raise RequestError(401, f"Repository {repo_id} not found", "RepoNotFound")
            if user != repo_owner(repo):
                raise RequestError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _writable(self, repo_type: str, repo_id: str) -> Tuple[dict, str]:
        """(repo, user) if the token's user owns the repo: 401 without a valid token, 403 otherwise."""
        user = self._user(True)
        repo = self._readable(repo_type, repo_id)
        if user != repo_owner(repo):
            raise RequestError(
                403,
                f"You don't have the rights to change {repo_type} repo {repo_id} (it belongs to {repo_owner(repo)})",
            )
        return repo, user

    @staticmethod
    def _is_write(method: str, parts: list) -> bool:
        """Whether the route changes something (and so needs a token before its body is read)."""
        if method not in ("POST", "PUT", "DELETE") or parts[:1] != ["api"]:
            return False
        if parts[1:3] in (["repos", "create"], ["repos", "delete"]):
            return True
        return (
            len(parts) >= 6
            and parts[1] in ("models", "datasets", "spaces")
            and parts[4] in ("preupload", "commit", "tag", "branch")
        )

    def _dispatch(self) -> None:
        in_step = False  # the request body has been read in full: the connection can carry another request
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            parts = [unquote(p) for p in url.path.split("/") if p]
            if self._is_write(self.command, parts):
                self._user(True)
            length = self._body_length()
            body = self._read_body(length)
            in_step = True
            self._route(parts, query, body)
        except RequestError as exc:
            self._error(exc, in_step)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            self._error(RequestError(400, f"bad request: {type(exc).__name__}: {exc}"), in_step)
        except Exception as exc:  # noqa: BLE001 - answer instead of dropping the connection
            self._error(RequestError(500, f"server error: {type(exc).__name__}: {exc}"), in_step)

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _dispatch

    # ------------------------------------------------------------------ routing
    def _route(self, parts: list, query: dict, body: bytes) -> None:
        m = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and m == "GET":
                user = self._user(True)
                return self._json(
                    200,
                    {
                        "type": "user",
                        "name": user,
                        "fullname": user,
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                    },
                )
            if rest == ["repos", "create"] and m == "POST":
                return self._create(json.loads(body or b"{}"))
            if rest == ["repos", "delete"] and m == "DELETE":
                return self._delete(json.loads(body or b"{}"))
            if rest == ["validate-yaml"] and m == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(rest) == 1 and rest[0] in ("models", "datasets", "spaces") and m == "GET":
                return self._list(rest[0][:-1], query)
            if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
                return self._repo_api(rest[0][:-1], check_repo_id(f"{rest[1]}/{rest[2]}"), rest[3:], query, body)
        else:
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = parts[0][:-1], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve" and m in ("GET", "HEAD"):
                return self._resolve(
                    repo_type,
                    check_repo_id(f"{parts[0]}/{parts[1]}"),
                    check_revision(parts[3]),
                    check_path("/".join(parts[4:])),
                )
        raise RequestError(404, f"no route for {m} {urlsplit(self.path).path}")

    def _repo_api(self, repo_type: str, repo_id: str, rest: list, query: dict, body: bytes) -> None:
        store, m = self.server.store, self.command
        if not rest and m == "GET":
            return self._info(repo_type, repo_id, "main", query)
        if len(rest) == 2 and rest[0] == "revision" and m == "GET":
            return self._info(repo_type, repo_id, rest[1], query)
        if len(rest) >= 2 and rest[0] == "tree" and m == "GET":
            return self._tree(repo_type, repo_id, rest[1], check_path("/".join(rest[2:]), allow_root=True), query)
        if len(rest) == 2 and rest[0] == "paths-info" and m == "POST":
            return self._paths_info(repo_type, repo_id, rest[1], body)
        if rest == ["refs"] and m == "GET":
            repo = self._readable(repo_type, repo_id)
            refs = repo["refs"]

            def items(kind: str, prefix: str) -> list:
                return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())]

            return self._json(
                200,
                {
                    "branches": items("branches", "refs/heads/"),
                    "tags": items("tags", "refs/tags/"),
                    "converts": [],
                    "pullRequests": [],
                },
            )
        if len(rest) == 2 and rest[0] == "commits" and m == "GET":
            return self._commits(repo_type, repo_id, rest[1])
        if len(rest) == 2 and rest[0] == "preupload" and m == "POST":
            return self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        if len(rest) == 2 and rest[0] == "commit" and m == "POST":
            _, user = self._writable(repo_type, repo_id)
            if "create_pr" in query:
                raise RequestError(400, "pull requests are not supported by this server")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            sha = store.apply_commit(repo_type, repo_id, rest[1], lines, user)
            return self._json(
                200,
                {
                    "success": True,
                    "commitOid": sha,
                    "commitUrl": f"{self._base()}/{self._prefix(repo_type)}{repo_id}/commit/{sha}",
                    "pullRequestUrl": None,
                },
            )
        if len(rest) == 2 and rest[0] == "tag" and m in ("POST", "DELETE"):
            self._writable(repo_type, repo_id)
            if m == "POST":
                payload = json.loads(body or b"{}")
                store.set_ref(repo_type, repo_id, "tags", payload["tag"], store.resolve(repo_type, repo_id, rest[1]))
            else:
                store.set_ref(repo_type, repo_id, "tags", rest[1], None)
            return self._json(200, {})
        if len(rest) == 2 and rest[0] == "branch" and m in ("POST", "DELETE"):
            self._writable(repo_type, repo_id)
            if m == "POST":
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                store.set_ref(repo_type, repo_id, "branches", rest[1], store.resolve(repo_type, repo_id, start))
            else:
                store.set_ref(repo_type, repo_id, "branches", rest[1], None)
            return self._json(200, {})
        raise RequestError(404, f"no route for {m} {urlsplit(self.path).path}")

    # ------------------------------------------------------------------ handlers
    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @staticmethod
    def _prefix(repo_type: str) -> str:
        return "" if repo_type == "model" else f"{repo_type}s/"

    def _create(self, payload: dict) -> None:
        user = self._user(True)
        repo_type = check_repo_type(payload.get("type") or "model")
        repo_id = check_repo_id(f"{payload.get('organization') or user}/{payload.get('name')}")
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        url = f"{self._base()}/{self._prefix(repo_type)}{repo_id}"
        try:
            self.server.store.create_repo(repo_type, repo_id, private, user)
        except RequestError as exc:
            if exc.status == 409:
                exc.body = {"error": exc.message, "url": url}
            raise
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete(self, payload: dict) -> None:
        user = self._user(True)
        repo_type = check_repo_type(payload.get("type") or "model")
        repo_id = check_repo_id(f"{payload.get('organization') or user}/{payload.get('name')}")
        self._writable(repo_type, repo_id)
        self.server.store.delete_repo(repo_type, repo_id)
        self._json(200, {})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if not isinstance(content, str):
            raise RequestError(400, "validate-yaml takes {content: the README text}")
        try:
            load_front_matter(content, "README.md")
        except FrontMatterError as exc:
            return self._json(400, {"errors": [{"message": str(exc)}], "warnings": []})
        if content.startswith("---") and content.find("\n---", 3) < 0:
            return self._json(
                400,
                {
                    "errors": [{"message": "the metadata block must be a YAML mapping between --- lines"}],
                    "warnings": [],
                },
            )
        self._json(200, {"errors": [], "warnings": []})

    def _summary(self, repo_type: str, repo_id: str, repo: dict, sha: str, blobs: bool) -> dict:
        commit = self.server.store.commit(repo_type, repo_id, sha)
        tree = commit["tree"]
        siblings = []
        for path in sorted(tree):
            entry = {"rfilename": path}
            if blobs:
                e = tree[path]
                entry.update(
                    size=e["size"], blobId=e["oid"], lfs={"sha256": e["sha256"], "size": e["size"], "pointerSize": 134}
                )
            siblings.append(entry)
        card = None
        if "README.md" in tree:
            with open(self.server.store.blob(tree["README.md"]["sha256"]), "rb") as f:
                card = card_metadata(f.read(MAX_FRONT_MATTER + 16))
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
        user = self._user(False)
        out = []
        for repo_id, repo in self.server.store.repos(repo_type):
            if (
                (author and repo_id.split("/")[0] != author)
                or (search and search not in repo_id.lower())
                or (repo["private"] and user != repo_owner(repo))
            ):
                continue
            head = repo["refs"]["branches"].get("main") or next(iter(repo["refs"]["branches"].values()), None)
            if head is not None:
                out.append(self._summary(repo_type, repo_id, repo, head, False))
        limit = query.get("limit", [None])[0]
        if limit is not None and (not limit.isdigit() or not limit.isascii()):
            raise RequestError(400, f"invalid limit {limit!r}: a non-negative integer")
        self._json(200, out[: int(limit)] if limit else out)

    def _entries(self, tree: dict, base: str, recursive: bool) -> list:
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        files, folders = [], set()
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
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
            out.append(
                {
                    "type": "file",
                    "oid": e["oid"],
                    "size": e["size"],
                    "path": path,
                    "lfs": {"oid": e["sha256"], "size": e["size"], "pointerSize": 134},
                }
            )
        return out

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str, query: dict) -> None:
        self._readable(repo_type, repo_id)
        store = self.server.store
        sha = store.resolve(repo_type, repo_id, rev)
        tree = store.commit(repo_type, repo_id, sha)["tree"]
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        if path and path in tree:
            raise RequestError(400, f"{path} is a file, not a folder")
        entries = self._entries(tree, path, recursive)
        if path and not entries:
            exc = RequestError(404, f"{path} does not exist at {rev}", "EntryNotFound")
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
            p = check_path(p.strip("/") if isinstance(p, str) else p)
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
            out.append(
                {
                    "id": c["id"],
                    "title": c["title"],
                    "message": c["message"],
                    "authors": [{"user": c["author"]}],
                    "date": c["date"],
                }
            )
            sha = c["parents"][0] if c["parents"] else None
        self._json(200, out)

    def _preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict) -> None:
        self._writable(repo_type, repo_id)
        store = self.server.store
        try:
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev))["tree"]
        except RequestError:
            tree = {}
        patterns = [
            line.strip()
            for line in (payload.get("gitIgnore") or "").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        files = []
        for f in payload.get("files", []):
            path = check_path(f["path"])
            ignored = any(fnmatch.fnmatch(path, p) for p in patterns)
            files.append(
                {"path": path, "uploadMode": "regular", "shouldIgnore": ignored, "oid": tree.get(path, {}).get("oid")}
            )
        self._json(200, {"files": files, "commitOid": None})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        head = self.command == "HEAD"
        self._readable(repo_type, repo_id)
        store = self.server.store
        sha = store.resolve(repo_type, repo_id, rev)
        tree = store.commit(repo_type, repo_id, sha)["tree"]
        if path not in tree:
            exc = RequestError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
            exc.commit = sha  # type: ignore[attr-defined]
            raise exc
        entry = tree[path]
        blob = store.blob(entry["sha256"])
        size = entry["size"]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["sha256"]}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{Path(path).name}"',
        }
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

    def __init__(
        self,
        address,
        store: HubStore,
        tokens: Mapping[str, str],
        verbose: bool,
        max_body: int = MAX_BODY,
        timeout: float = TIMEOUT,
    ) -> None:
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("the Hub server needs at least one non-empty token")
        super().__init__(address, HubHandler)
        self.store = store
        self.tokens = dict(tokens)
        self._token_bytes = [(t.encode("utf-8"), u) for t, u in self.tokens.items()]
        self.verbose = verbose
        self.max_body = int(max_body)
        self.timeout_s = float(timeout)
        self._connections: set = set()
        self._connections_lock = threading.Lock()

    def user_of(self, token: str) -> Optional[str]:
        """The user a token belongs to, or None; every known token is compared, each in constant time."""
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for known, user in self._token_bytes:
            if hmac.compare_digest(known, given):
                found = user
        return found

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
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RunningHub:
    """A server running in a background thread; `url` is its endpoint (give it to HF_ENDPOINT) and
    `token` a token it accepts (the generated one when none was given; `generated` says which)."""

    def __init__(self, server: HubHTTPServer, generated: bool) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name="equizoo-hub", daemon=True)
        self.thread.start()
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.root = server.store.root
        self.token = next(iter(server.tokens))
        self.generated = generated

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
    max_body: int = MAX_BODY,
    timeout: float = TIMEOUT,
) -> RunningHub:
    """Start a Hub server on host:port (0: a free port) storing into `root`. `tokens` maps accepted
    tokens to user names; None generates one random token for `user` (read it from `.token`).
    `max_body` bounds a request body in bytes, `timeout` each socket read in seconds."""
    generated = not tokens
    table = dict(tokens) if tokens else {secrets.token_urlsafe(32): user}
    return RunningHub(HubHTTPServer((host, port), HubStore(root), table, verbose, max_body, timeout), generated)


@contextlib.contextmanager
def serve_hub(root: Union[str, Path], **kwargs) -> Iterator[RunningHub]:
    """`start_hub` as a context manager that stops the server on exit."""
    hub = start_hub(root, **kwargs)
    try:
        yield hub
    finally:
        hub.stop()


def parse_tokens(items: Optional[list]) -> Optional[Dict[str, str]]:
    """TOKEN or TOKEN=USER strings as a token table (None if no items); users follow the repo-name rules."""
    if not items:
        return None
    out = {}
    for item in items:
        token, _, user = item.partition("=")
        user = user or "equizoo"
        if not token or any(c.isspace() for c in token):
            raise ValueError(
                f"invalid --token {item!r}: give TOKEN or TOKEN=USER with a non-empty token without spaces"
            )
        if not NAME_RULE.fullmatch(user) or "--" in user or ".." in user:
            raise ValueError(f"invalid user in --token {item!r}: 1-96 of A-Z a-z 0-9 _ . -")
        out[token] = user
    return out
