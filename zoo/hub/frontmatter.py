"""The YAML front matter of a model card, read safely: no anchors or aliases, a size cap, mappings only."""

from __future__ import annotations

from typing import Optional

import yaml

from zoo.errors import ZooError

MAX_FRONT_MATTER = 256 * 1024  # bytes of YAML between the --- lines; real cards are a few KB


class FrontMatterError(ZooError, ValueError):
    """Card metadata that is refused (aliases, anchors, too large, not YAML, not a mapping)."""


def split_front_matter(text: str) -> Optional[str]:
    """The YAML between a leading `---` line and the next `---` line, or None without front matter."""
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    return text[3:end]


def load_front_matter(text: str, what: str = "card metadata") -> Optional[dict]:
    """The front matter of `text` as a dict (None if it has none).

    Anchors and aliases are refused before anything is built: a few hundred bytes of nested aliases
    expand to gigabytes when the metadata is serialised (the "billion laughs" YAML bomb)."""
    block = split_front_matter(text)
    if block is None:
        return None
    if len(block.encode("utf-8", errors="replace")) > MAX_FRONT_MATTER:
        raise FrontMatterError(
            f"{what}: the YAML front matter is over {MAX_FRONT_MATTER // 1024} KiB; keep card metadata small"
        )
    try:
        for event in yaml.parse(block, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise FrontMatterError(
                    f"{what}: YAML anchors and aliases (&name, *name) are not accepted in card metadata; write the values out"
                )
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"{what}: invalid YAML front matter: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FrontMatterError(f"{what}: the front matter must be a YAML mapping between --- lines")
    return data
