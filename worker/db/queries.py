"""Named SQL blocks from ``queries.sql`` (``-- name: X`` starts a block)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString, cast

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


QUERY_DIR = Path(__file__).parent  # queries.sql (pipeline), execution.sql (engine)


@cache
def load(directory: Path = QUERY_DIR) -> dict[str, LiteralString]:
    blocks: dict[str, LiteralString] = {}
    for path in sorted(directory.glob("*.sql")):
        parts = _NAME.split(path.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in blocks:
                raise ValueError(f"{path.name}: query {name} is defined twice")
            blocks[name] = cast(LiteralString, body.strip())
    return blocks


def q(name: str) -> LiteralString:
    """The SQL of the named query (KeyError names it when absent)."""
    return load()[name]
