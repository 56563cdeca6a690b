"""Storage and validation of the local Hub server: the Hub's naming rules for repo types, ids, revisions and
paths (untrusted input is checked before use), and `HubStore`, repositories persisted in a folder
(`ROOT/blobs/{sha256}` content-addressed, `ROOT/repos/{type}s/{ns}/{name}/{repo.json, commits/{sha}.json}`;
every write temp + rename). zoo.hub.server puts the HTTP protocol on top."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

from zoo.errors import ZooError
from zoo.hub.frontmatter import FrontMatterError, load_front_matter

REPO_TYPES = ("model", "dataset", "space")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
NAME_RULE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?")
_REF_FORBIDDEN = set(" ~^:?*[\\\x7f")

# What huggingface.co writes as `.gitattributes` in the first commit of a new repository.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip


class RequestError(ZooError):
    """An HTTP error answer: status, message and the Hub's X-Error-Code."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, body: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body


# ---------------------------------------------------------------------- validation (the Hub's rules)
def check_repo_type(repo_type: object) -> str:
    """One of REPO_TYPES, else 400."""
    if repo_type not in REPO_TYPES:
        raise RequestError(400, f"invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
    return str(repo_type)


def check_repo_id(repo_id: object) -> str:
    """NAMESPACE/NAME, each 1-96 of A-Z a-z 0-9 _ . - (starting and ending with a letter, digit or _),
    without `--` or `..` and not ending in `.git`, else 400."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(
        NAME_RULE.fullmatch(p) and "--" not in p and ".." not in p and not p.endswith(".git") for p in parts
    ):
        raise RequestError(400, f"invalid repo id {repo_id!r}: expected NAMESPACE/NAME, each 1-96 of A-Z a-z 0-9 _ . - "
                            "(no '--' or '..', not ending in .git)")  # fmt: skip
    return str(repo_id)


def check_revision(rev: object) -> str:
    """A branch, tag, refs/... name or commit sha by git's ref-name rules, else 400."""
    ok = isinstance(rev, str) and 0 < len(rev) <= 255
    if ok:
        ok = not (rev.startswith(("/", "-", ".")) or rev.endswith(("/", ".", ".lock")) or ".." in rev or "//" in rev
                  or "/." in rev or "@{" in rev or rev == "@" or any(c in _REF_FORBIDDEN or ord(c) < 0x20 for c in rev))  # fmt: skip
    if not ok:
        raise RequestError(400, f"invalid revision {rev!r}: a branch, tag or commit sha (git ref-name rules: no '..', "
                            "spaces, control characters or ~^:?*[\\)")  # fmt: skip
    return str(rev)


def check_path(path: object, allow_root: bool = False) -> str:
    """A relative file path inside a repo: '/'-separated, no empty, '.' or '..' parts, no leading '/',
    no backslash or control characters, not inside `.git`, at most 4096 bytes (255 per part), else 400."""
    if allow_root and path == "":
        return ""
    ok = isinstance(path, str) and 0 < len(path.encode("utf-8", "surrogatepass")) <= 4096
    if ok:
        parts = path.split("/")
        ok = not ("\\" in path or any(ord(c) < 0x20 or c == "\x7f" for c in path) or parts[0] == ".git"
                  or any(p in ("", ".", "..") or len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts))  # fmt: skip
    if not ok:
        raise RequestError(400, f"invalid file path {path!r}: a relative path inside the repo ('/'-separated; no '..', "
                            "leading '/', backslash or control characters; not in .git)")  # fmt: skip
    return str(path)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    from zoo.io import atomic_write_bytes

    atomic_write_bytes(path, data)


def card_metadata(readme: bytes) -> Optional[dict]:
    """The metadata of a stored README, or None (none, or refused: listings never fail on a card)."""
    try:
        return load_front_matter(readme.decode("utf-8", errors="replace")) or None
    except FrontMatterError:
        return None


def repo_owner(repo: dict) -> str:
    return str(repo.get("owner") or repo.get("author"))


def _commit_header(lines: list, branch: str, head: str) -> dict:
    """The header line of a commit payload, its parent (if named) checked to be the branch head."""
    header = next((item.get("value") for item in lines if isinstance(item, dict) and item.get("key") == "header"), None)
    if not isinstance(header, dict):
        raise RequestError(400, "the commit payload has no header line")
    parent = header.get("parentCommit")
    if parent and parent != head:
        raise RequestError(412, f"parent commit {parent} is not the head of {branch} ({head})")
    return header


class HubStore:
    """Repositories, commits, refs and blobs in a folder (thread-safe through one lock)."""

    def __init__(self, root: Union[str, Path]) -> None:
        (Path(root) / "blobs").mkdir(parents=True, exist_ok=True)
        self.root = Path(root).resolve()
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ storage
    def _inside(self, path: Path) -> Path:
        """`path` resolved (links followed); 400 unless it stays inside the data folder."""
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise RequestError(400, f"{path} is outside the server's data folder")
        return resolved

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        ns, name = check_repo_id(repo_id).split("/")
        return self._inside(self.root / "repos" / f"{check_repo_type(repo_type)}s" / ns / name)

    def repo(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise RequestError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def _save_repo(self, repo_type: str, repo_id: str, repo: dict) -> None:
        _write_atomic(self._repo_dir(repo_type, repo_id) / "repo.json", json.dumps(repo, indent=1).encode())

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        if not _HEX40.fullmatch(sha):
            raise RequestError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        if not path.is_file():
            raise RequestError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
        return json.loads(path.read_text())

    def blob(self, sha256: object) -> Path:
        if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise RequestError(400, f"invalid object id {sha256!r}: expected 64 lowercase hex digits (a sha256)")
        return self._inside(self.root / "blobs" / sha256)

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if not path.is_file():
            _write_atomic(path, data)
        return digest

    def repos(self, repo_type: str) -> Iterator[Tuple[str, dict]]:
        base = self.root / "repos" / f"{check_repo_type(repo_type)}s"
        for path in sorted(base.glob("*/*/repo.json")):
            repo_id = f"{path.parent.parent.name}/{path.parent.name}"
            try:
                self._repo_dir(repo_type, repo_id)
            except RequestError:
                continue  # not a name this server writes, or a link out of the folder
            yield repo_id, json.loads(path.read_text())

    # ------------------------------------------------------------------ refs
    def resolve(self, repo_type: str, repo_id: str, rev: str) -> str:
        """The commit sha a branch, tag, refs/... name or full sha points to."""
        check_revision(rev)
        repo = self.repo(repo_type, repo_id)
        refs = repo["refs"]
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if rev.startswith(prefix) and rev[len(prefix) :] in refs[table]:
                return refs[table][rev[len(prefix) :]]
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if _HEX40.fullmatch(rev):
            return self.commit(repo_type, repo_id, rev)["id"]
        raise RequestError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ writes
    def create_repo(self, repo_type: str, repo_id: str, private: bool, user: str) -> dict:
        """A new repo owned by `user`, whose first commit holds the Hub's default `.gitattributes`."""
        with self.lock:
            path = self._repo_dir(repo_type, repo_id) / "repo.json"
            if path.is_file():
                raise RequestError(
                    409,
                    f"You already created this {repo_type} repo",
                    body={"error": f"You already created this {repo_type} repo", "url": repo_id},
                )
            repo = {"id": repo_id, "type": repo_type, "private": bool(private), "created": _now(), "author": user, "owner": user,
                    "refs": {"branches": {}, "tags": {}}}  # fmt: skip
            data = GITATTRIBUTES.encode()
            tree = {".gitattributes": {"sha256": self.put_blob(data), "oid": _git_blob_sha1(data), "size": len(data)}}
            self._new_commit(repo_type, repo_id, repo, "main", None, tree, "initial commit", "", user)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.repo(repo_type, repo_id)
            shutil.rmtree(self._repo_dir(repo_type, repo_id))

    def _new_commit(
        self,
        repo_type: str,
        repo_id: str,
        repo: dict,
        branch: str,
        parent: Optional[str],
        tree: dict,
        title: str,
        message: str,
        user: str,
    ) -> str:
        """Write the commit object, then move `branch` with one atomic replace of repo.json."""
        body = {
            "parents": [parent] if parent else [],
            "tree": tree,
            "title": title,
            "message": message,
            "date": _now(),
            "author": user,
            "nonce": time.time_ns(),
        }
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        body["id"] = sha
        _write_atomic(self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json", json.dumps(body).encode())
        repo["refs"]["branches"][branch] = sha
        repo["lastModified"] = body["date"]
        self._save_repo(repo_type, repo_id, repo)
        return sha

    def apply_commit(self, repo_type: str, repo_id: str, branch: str, lines: list, user: str) -> str:
        """Check every operation first (paths, contents, card metadata), then store blobs, then commit."""
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            check_revision(branch)
            if branch not in repo["refs"]["branches"]:
                raise RequestError(
                    404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound"
                )
            head = repo["refs"]["branches"][branch]
            tree = dict(self.commit(repo_type, repo_id, head)["tree"])
            header = _commit_header(lines, branch, head)
            new: Dict[str, bytes] = {}
            for item in lines:
                if not isinstance(item, dict) or not isinstance(item.get("value", {}), dict):
                    raise RequestError(400, "every commit line is a JSON object {key, value}")
                if item.get("key") != "header":
                    self._apply_operation(tree, new, item.get("key"), item.get("value", {}))
            if "README.md" in new:
                try:
                    load_front_matter(new["README.md"].decode("utf-8", errors="replace"), "README.md")
                except FrontMatterError as exc:
                    raise RequestError(400, f"Invalid metadata in {exc}") from None
            for path, data in new.items():
                tree[path] = {"sha256": self.put_blob(data), "oid": _git_blob_sha1(data), "size": len(data)}
            return self._new_commit(
                repo_type,
                repo_id,
                repo,
                branch,
                head,
                tree,
                str(header.get("summary", "")),
                str(header.get("description", "")),
                user,
            )

    def _apply_operation(self, tree: dict, new: Dict[str, bytes], key, value: dict) -> None:
        """One commit line on the tree being built: an inline file (kept in `new` until every line is checked),
        an uploaded LFS object, a deleted file or a deleted folder."""
        raw = value.get("path")
        path = check_path(raw.rstrip("/") if key == "deletedFolder" and isinstance(raw, str) else raw)
        if key == "file":
            content = value.get("content")
            if not isinstance(content, str):
                raise RequestError(400, f"file {path}: content must be a string")
            data = base64.b64decode(content, validate=True) if value.get("encoding") == "base64" else content.encode()
            new[path] = data
            tree[path] = None
        elif key == "lfsFile":
            blob = self.blob(value.get("oid"))
            if not blob.is_file():
                raise RequestError(
                    422, f"LFS object {value['oid']} for {path} was never uploaded (this server takes files inline)"
                )
            new.pop(path, None)
            tree[path] = {"sha256": value["oid"], "oid": _git_blob_sha1(blob.read_bytes()), "size": blob.stat().st_size}
        elif key == "deletedFile":
            if path not in tree:
                raise RequestError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            new.pop(path, None)
            del tree[path]
        elif key == "deletedFolder":
            for p in [p for p in tree if p.startswith(path + "/")]:
                new.pop(p, None)
                del tree[p]
        else:
            raise RequestError(400, f"unsupported commit operation {key!r}")

    def set_ref(self, repo_type: str, repo_id: str, kind: str, name: str, sha: Optional[str]) -> None:
        """Create (sha given; 409 if it exists) or delete (sha None; 404 if missing) a branch or tag."""
        check_revision(name)
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            table = repo["refs"][kind]
            if sha is None:
                if name not in table:
                    raise RequestError(404, f"{kind[:-1]} {name} not found", "RevisionNotFound")
                del table[name]
            else:
                if name in table:
                    raise RequestError(409, f"{kind[:-1]} {name} already exists")
                table[name] = sha
            self._save_repo(repo_type, repo_id, repo)
