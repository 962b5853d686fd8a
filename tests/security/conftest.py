"""Every security test runs on both database shapes: a plain PostgreSQL, and a
Supabase-shaped database (tests/supabase_shape.sql) whose default privileges grant ALL on
every new table, sequence and function to anon, authenticated and service_role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def owner_conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The migrating role (the worker's), autocommit."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn
