"""The markdown table of the shipped releases (name, recipe, test MAE, the paper's), as README.md and
releases/README.md show it. `python tools/release_table.py` prints it; `--write` puts it into both files
(under their `| name | trained with | ...` header). tests/test_releases.py checks that they are current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from zoo.artifact import read_config
from zoo.paths import recipes_dir, releases_dir
from zoo.release import base_split, local_releases

REPO = Path(__file__).resolve().parents[1]
READMES = (REPO / "README.md", REPO / "releases" / "README.md")
HEADER = "| name | trained with | test MAE here | paper (full model) |\n|---|---|---|---|\n"


def _recipe_file(name: str) -> str:
    """The recipe a release was trained with: a budget recipe if one carries the description its config
    records, else the CPU recipe named after it."""
    description = (read_config(releases_dir() / name)["metadata"].get("recipe") or {}).get("description")
    root = recipes_dir()
    budget = [
        p
        for p in sorted((root / "budget").glob("*.yml"))
        if description and f"description: {description}\n" in p.read_text()
    ]
    if budget:
        return f"recipes/budget/{budget[0].name}"
    return f"recipes/cpu/{name.removeprefix('equiformer-').removesuffix('-cpu')}.yml"


def release_table() -> str:
    rows = []
    for entry in sorted(local_releases(), key=lambda m: (m.task, m.name)):
        paper = {m.target: m for m in entry.paper}
        measured = [m for m in entry.metrics if base_split(m.split) == "test"]
        ours = ", ".join(f"{m.target} {m.value:.4g} {m.unit}" for m in measured)
        theirs = ", ".join(
            f"{m.target} {paper[m.target].value:g} {paper[m.target].unit}" for m in measured if m.target in paper
        )
        split = measured[0].split if measured else "test"
        recipe = f"`{_recipe_file(entry.name)}`"
        rows.append(f"| `{entry.name}` | {recipe} | {ours} ({split}) | {theirs} |")
    return "\n".join(rows)


def write_tables() -> None:
    table = release_table()
    pattern = re.compile(re.escape(HEADER) + r"(?:\|.*\n|@TABLE@\n)*")
    for path in READMES:
        text = path.read_text()
        if HEADER not in text:
            raise SystemExit(f"{path} has no release table header {HEADER.splitlines()[0]!r}")
        path.write_text(pattern.sub(lambda _: HEADER + table + "\n", text, count=1))


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_tables()
    else:
        print(release_table())
