"""Publishing model directories to a Hugging Face Hub and pulling them back, verified by sha256.

`publish` writes a `manifest.json` (sha256 + size of every file), renders the model card if the directory
has none, and uploads with `create_repo` + `upload_folder` + a tag; it returns the pinned 40-hex revision.
`pull` resolves a registry name, an `hf-hub:ORG/NAME[@REV]` id or a local directory to a verified local
model directory: Hub files come through `snapshot_download` into the Hugging Face cache (offline use from
the cache with HF_HUB_OFFLINE=1, HF_ENDPOINT honoured at call time), downloading only the files the
registry entry or the published manifest lists, and every file is checked against the registry's sha256
(or, for ids outside the registry, the published manifest) before it is used. The directory it returns
holds only verified files, so no backend can load an export that no hash covers.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Union

from zoo.artifact import CONFIG, WEIGHTS
from zoo.errors import ZooError
from zoo.hub.manifest import (
    MANIFEST,
    IntegrityError,
    read_manifest,
    sha256_file,
    verified_dir,
    verify_files,
    write_manifest,
)

HF_PREFIX = "hf-hub:"
_HF_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


class HubError(ZooError, RuntimeError):
    """Publishing or pulling failed; the message says what and what to do."""


@dataclass(frozen=True)
class Publication:
    """What `publish` did: repo, pinned revision, tag, and the sha256/size of every file."""

    repo_id: str
    revision: str
    tag: str
    endpoint: str
    files: Dict[str, dict] = field(default_factory=dict)

    @property
    def hub_id(self) -> str:
        return f"{HF_PREFIX}{self.repo_id}@{self.revision}"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def endpoint(value: Optional[str] = None) -> str:
    """The Hub endpoint: the argument, else $HF_ENDPOINT (read now, not at import), else huggingface.co."""
    return (value or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_cache_dir(value: Optional[str] = None) -> Optional[str]:
    """The Hugging Face cache to use: the argument, else $HF_HUB_CACHE, else $HF_HOME/hub (read now)."""
    if value:
        return str(value)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def offline() -> bool:
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def _hub():
    try:
        import huggingface_hub
    except ModuleNotFoundError as exc:
        raise HubError(
            "the Hub client is not installed: pip install 'huggingface_hub>=0.30,<3' (or equizoo[hub])"
        ) from exc
    return huggingface_hub


def model_dir_of(path: Union[str, Path]) -> Path:
    """The model directory of a model directory or a training run directory (RUN/model)."""
    path = Path(path).expanduser()
    if (path / CONFIG).is_file():
        return path
    if (path / "model" / CONFIG).is_file():
        return path / "model"
    if not path.exists():
        raise HubError(
            f"{path} does not exist; give a model directory (config.json + model.safetensors) or a training run directory"
        )
    raise HubError(
        f"{path} is neither a model directory (no config.json) nor a training run directory (no model/config.json)"
    )


def _explain(exc: Exception, what: str, url: str) -> HubError:
    """A HubError with one clear sentence for the client's exceptions."""
    from huggingface_hub import errors

    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"{what}: the revision does not exist on {url}; check the @REV part (a branch, tag or full commit sha) or `equizoo info`"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"{what}: repository not found on {url} (or it is private and no valid token was given: set HF_TOKEN)"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return HubError(f"{what}: not in the local Hugging Face cache and the Hub cannot be used (offline or unreachable: {url}); "
                        "connect and pull it once, or unset HF_HUB_OFFLINE")  # fmt: skip
    if isinstance(exc, errors.HfHubHTTPError):
        first = str(exc).splitlines()[0]
        return HubError(f"{what}: the Hub at {url} answered {first}")
    return HubError(f"{what}: {type(exc).__name__}: {exc} (Hub at {url})")


# ------------------------------------------------------------------------------------------- publish
def _next_tag(api, repo_id: str) -> str:
    numbers = [int(t.name[1:]) for t in api.list_repo_refs(repo_id).tags if re.fullmatch(r"v\d+", t.name)]
    return f"v{max(numbers, default=0) + 1}"


def upload(
    model_dir: Union[str, Path],
    repo_id: str,
    tag: Optional[str] = None,
    private: bool = False,
    endpoint_url: Optional[str] = None,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    prepare: Optional[Callable[[Path], object]] = None,
) -> Publication:
    """Upload a model (or run) directory to `repo_id` (created if needed) and tag the commit (default: the
    next free vN). Returns the pinned revision and the sha256 of every uploaded file. The directory's card
    is uploaded as it is; `prepare(directory)` runs once the inputs are checked, before anything is hashed
    (zoo.publish.publish writes the card there)."""
    from zoo.artifact import read_config

    hf = _hub()
    src = model_dir_of(model_dir)
    config = read_config(src)
    if not _HF_ID.match(repo_id) or "@" in repo_id:
        raise HubError(f"--repo must look like ORG/NAME, got {repo_id!r}")
    if not (src / WEIGHTS).is_file():
        raise HubError(f"{src} has no {WEIGHTS}; save or train the model first")
    if prepare is not None:
        prepare(src)
    url = endpoint(endpoint_url)
    files = write_manifest(src, str(config.get("name", repo_id.split("/")[1])))
    api = hf.HfApi(endpoint=url, token=token)
    what = f"publishing {src} to {repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(src), repo_id=repo_id, allow_patterns=sorted(files) + [MANIFEST], delete_patterns="*",
            commit_message=commit_message or f"equizoo publish {config.get('name', src.name)}",
        )  # fmt: skip
        revision = info.oid
        tag = tag or _next_tag(api, repo_id)
        api.create_tag(repo_id, tag=tag, revision=revision)
    except Exception as exc:  # noqa: BLE001 - translated into one clear message
        if isinstance(exc, HubError):
            raise
        raise _explain(exc, what, url) from exc
    if not revision or not _SHA.match(revision):
        raise HubError(f"{what}: the Hub returned {revision!r} instead of a 40-hex commit sha")
    manifest = {MANIFEST: {"sha256": sha256_file(src / MANIFEST), "size": (src / MANIFEST).stat().st_size}}
    return Publication(repo_id, revision, tag, url, {**files, **manifest})


# ---------------------------------------------------------------------------------------------- pull
def parse_hub_id(spec: str) -> tuple[str, Optional[str]]:
    """(repo_id, revision or None) of `hf-hub:ORG/NAME[@REV]`."""
    m = _HF_ID.match(spec[len(HF_PREFIX) :] if spec.startswith(HF_PREFIX) else spec)
    if not m:
        raise HubError(f"{spec!r} is not a Hub id; write hf-hub:ORG/NAME@REVISION (a 40-hex commit sha, tag or branch)")
    return m.group("repo"), m.group("rev")


def _download(repo_id: str, revision: str, what: str, endpoint_url: Optional[str], token: Optional[str], cache: Optional[str], force: bool,
              patterns: list) -> Path:  # fmt: skip
    """The snapshot folder of `repo_id@revision` holding just the files named in `patterns` (plain file
    names, so also glob-free): what the Hub adds by itself (.gitattributes) or anything else is never fetched."""
    hf = _hub()
    url = endpoint(endpoint_url)
    try:
        path = hf.snapshot_download(
            repo_id, revision=revision, endpoint=url, token=token, cache_dir=hf_cache_dir(cache), local_files_only=offline(), force_download=force,
            allow_patterns=sorted(patterns),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - translated into one clear message
        raise _explain(exc, what, url) from exc
    return Path(path)


def _views() -> Path:
    """Where verified copies of model directories go (inside the equizoo cache)."""
    from zoo.data.remote import cache_dir

    return cache_dir() / "verified"


def _pull_hub_id(text: str, endpoint_url, token, cache_dir, force) -> Path:
    repo_id, revision = parse_hub_id(text)
    what = f"pulling {text}"
    first = _download(repo_id, revision or "main", what, endpoint_url, token, cache_dir, force, [MANIFEST])
    expected = read_manifest(first)  # refuses names outside the snapshot
    commit = first.name if _SHA.match(first.name) else (revision or "main")  # the same commit for the files
    snapshot = _download(repo_id, commit, what, endpoint_url, token, cache_dir, force, [MANIFEST, *expected])
    expected = {**expected, MANIFEST: sha256_file(first / MANIFEST)}
    return verified_dir(snapshot, expected, f"{text} (published manifest)", _views())


def _pull_registry(entry, endpoint_url, token, cache_dir, force) -> Path:
    """The first source of a registry entry that has its files: Hub, model distribution, $EQUIZOO_RELEASES,
    source checkout; one error naming every source tried when none has them. A source whose files fail
    their sha256 check stops the search (a changed file is reported, never papered over by another copy)."""
    from zoo.registry import MODELS_DISTRIBUTION, release_sources

    expected = entry.file_hashes()
    tried: list = []

    def verified(folder: Path, label: str) -> Path:
        try:
            return verified_dir(folder, expected, f"model {entry.name} ({label})", _views())
        except IntegrityError as exc:
            before = f" (tried before: {'; '.join(tried)})" if tried else ""
            raise IntegrityError(
                f"{exc}{before}; refusing model {entry.name} from {label} rather than falling back to another copy"
            ) from None

    if entry.repo_id and entry.revision:
        label = f"Hub {entry.repo_id}@{entry.revision} at {endpoint(endpoint_url)}"
        try:
            snapshot = _download(
                entry.repo_id,
                entry.revision,
                f"pulling {entry.name}",
                endpoint_url,
                token,
                cache_dir,
                force,
                list(expected),
            )
        except HubError as exc:
            tried.append(f"{label}: {exc}")
        else:
            return verified(snapshot, label)
    for label, folder in release_sources(entry):
        if folder is None:
            tried.append(label)
        elif not folder.is_dir():
            tried.append(f"{label}: no folder {folder}")
        else:
            return verified(folder, label)
    raise HubError(
        f"model {entry.name} could not be loaded from any source; tried, in order: " + "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        + f". Install the model distribution (pip install {MODELS_DISTRIBUTION}), set EQUIZOO_RELEASES to a folder holding {entry.release or entry.name}/, "
        "or register a Hub revision (EQUIZOO_REGISTRY)"
    )  # fmt: skip


def pull(
    spec: Union[str, Path],
    endpoint_url: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    force: bool = False,
) -> Path:
    """A verified local model directory for a registry name, an `hf-hub:ORG/NAME[@REV]` id or a path.

    Registry entries are fetched at their pinned revision, or read from the model distribution or a local
    release folder, and checked against the registry's sha256; Hub ids are checked against their published
    manifest.json. Only the listed files are downloaded, and the directory returned holds nothing but
    verified files. Raises HubError / IntegrityError (a ValueError) / zoo.registry.RegistryError with what to do."""
    from zoo.registry import RegistryError, get_model

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        src = model_dir_of(path)
        if (src / MANIFEST).is_file():
            verify_files(src, read_manifest(src), f"model directory {src}")
        return src
    if text.startswith(HF_PREFIX):
        return _pull_hub_id(text, endpoint_url, token, cache_dir, force)
    if os.sep in text or text.startswith((".", "~")):
        raise HubError(
            f"{text}: no such model directory; give a model directory, a registry name (`equizoo list`) or hf-hub:ORG/NAME@REV"
        )
    entry = get_model(text)
    if not entry.published:
        raise RegistryError(
            f"model {entry.name} is registered but not published yet (no trained weights have been released for it); "
            f"`equizoo list --published` shows the models you can pull"
        )
    return _pull_registry(entry, endpoint_url, token, cache_dir, force)


def resolve_model(spec: str) -> Path:
    """A verified local model directory for a registry name or Hub id (what `zoo.load(NAME)` uses)."""
    return pull(spec)


def copy_model(src: Union[str, Path], out: Union[str, Path], overwrite: bool = False) -> Path:
    """Copy a (pulled, possibly symlinked) model directory into a plain writable directory, atomically."""
    from zoo.artifact import atomic_write_dir

    src = Path(src)

    def write(tmp: Path) -> None:
        for p in src.iterdir():
            if p.is_file() and not p.name.startswith("."):
                shutil.copyfile(p, tmp / p.name)

    return atomic_write_dir(out, write, overwrite=overwrite)
