"""Real servers for the tests: the machine's, or embedded ones started here.

* ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` set: use those servers (a superuser URL for
  PostgreSQL: tests create databases and roles).
* unset: start embedded PostgreSQL 18 and Valkey from the PyPI wheels for this session.

One migrated template database per session; every test gets a fresh copy
(``CREATE DATABASE ... TEMPLATE``), never a rolled-back transaction: notifications and the
outbox only exist after a commit.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from worker.db.migrate import migrate
from worker.testing.fake_binance import FakeBinance
from worker.testing.servers import EmbeddedPostgres, EmbeddedRedis

_counter = itertools.count()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server when the suite started one (restart tests need it), else None."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_admin_url(embedded_pg: EmbeddedPostgres | None) -> str:
    return os.environ.get("TEST_DATABASE_URL") or (embedded_pg.url if embedded_pg else "")


def db_url_for(admin_url: str, dbname: str) -> str:
    """The same server, another database (URLs, as DATABASE_URL would be)."""
    return urlsplit(admin_url)._replace(path=f"/{dbname}").geturl()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"pw_tpl_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(db_url_for(pg_admin_url, name))
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database (for migration tests)."""
    yield from _scratch_db(pg_admin_url, None)


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    yield from _scratch_db(pg_admin_url, template_db)


def _scratch_db(admin_url: str, template: str | None) -> Iterator[str]:
    name = f"pw_t_{os.getpid()}_{next(_counter)}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield db_url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis | None]:
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(embedded_redis: EmbeddedRedis | None) -> Iterator[str]:
    """A Redis URL whose database is empty at the start of the test."""
    url = os.environ.get("TEST_REDIS_URL") or (embedded_redis.url if embedded_redis else "")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
    finally:
        client.close()


@pytest.fixture
def restart_postgres(embedded_pg: EmbeddedPostgres | None) -> Callable[[], None]:
    """Restart the PostgreSQL server under test (embedded, or $TEST_PG_RESTART_CMD)."""
    return _restarter(embedded_pg, "TEST_PG_RESTART_CMD")


@pytest.fixture
def restart_redis(embedded_redis: EmbeddedRedis | None) -> Callable[[], None]:
    """Restart the Redis server under test (embedded, or $TEST_REDIS_RESTART_CMD)."""
    return _restarter(embedded_redis, "TEST_REDIS_RESTART_CMD")


def _restarter(server: EmbeddedPostgres | EmbeddedRedis | None, env: str) -> Callable[[], None]:
    if server is not None:
        return server.restart
    command = os.environ.get(env)
    if not command:
        pytest.skip(f"external server and no ${env} to restart it")

    def restart() -> None:
        subprocess.run(command, shell=True, check=True, timeout=120)

    return restart


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    """The fake Binance on loopback: BTCUSDT at 100, 0.1 % commission in USDT."""
    from tests.execution_support import KEY, SECRET

    with FakeBinance(api_key=KEY, api_secret=SECRET) as server:
        server.set_price("BTCUSDT", "100")
        server.set_commission("0.001", "quote")
        yield server
        server.release_hung()  # a test that hung a request must not keep a thread waiting
