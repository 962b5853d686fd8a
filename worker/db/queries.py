"""Named SQL blocks from ``queries.sql`` (``-- name: X`` starts a block)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString, cast

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


QUERIES_FILE = Path(__file__).with_name("queries.sql")


@cache
def load(path: Path = QUERIES_FILE) -> dict[str, LiteralString]:
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    blocks: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"{path.name}: query {name} is defined twice")
        blocks[name] = cast(LiteralString, body.strip())
    return blocks


def q(name: str) -> LiteralString:
    """The SQL of the named query (KeyError names it when absent)."""
    return load()[name]
