"""Publishing: a model directory goes to the Hub with its model card (written first where it has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from zoo.artifact import CARD
from zoo.cards import write_card
from zoo.hub.client import Publication, upload


def publish(
    model_dir: Union[str, Path],
    repo_id: str,
    tag: Optional[str] = None,
    private: bool = False,
    endpoint_url: Optional[str] = None,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
) -> Publication:
    """Upload a model (or run) directory to `repo_id` (created if needed) with its card and tag the commit
    (default: the next free vN); the pinned revision and the sha256 of every uploaded file."""
    options = dict(tag=tag, private=private, endpoint_url=endpoint_url, token=token, commit_message=commit_message)
    return upload(model_dir, repo_id, **options, prepare=_ensure_card)


def _ensure_card(model_dir: Path) -> None:
    if not (model_dir / CARD).is_file():
        write_card(model_dir)
