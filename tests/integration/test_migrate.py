"""Migrations: from empty, idempotent, serialized, tamper-evident."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from worker.db.migrate import default_schema_dir, discover, migrate
from worker.errors import MigrationError

SPEC_INDEXES = {
    "idx_positions_user_id", "idx_positions_trader_id", "idx_positions_signal_id",
    "idx_positions_status", "idx_positions_symbol", "idx_positions_created_at",
    "idx_orders_position_id", "idx_orders_user_id", "idx_orders_binance_order_id",
    "idx_orders_status", "idx_orders_created_at",
    "idx_trades_order_id", "idx_trades_position_id", "idx_trades_executed_at",
}  # fmt: skip


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    """Migrations run on a plain PostgreSQL (as a superuser) and on a Supabase-shaped
    database (as its non-superuser owner, auth owned by another role)."""
    return str(request.param)


def test_migrate_from_empty_creates_everything_and_rerun_is_a_noop(empty_db_url: str) -> None:
    applied = migrate(empty_db_url)
    assert [m.version for m in applied] == [m.version for m in discover()]
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}  # fmt: skip
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
        recorded = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert {"positions", "orders", "trades", "signals", "traders", "position_events"} <= tables
    assert indexes >= SPEC_INDEXES
    assert recorded == (len(applied),)


def test_concurrent_migrate_applies_each_migration_once(empty_db_url: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(migrate(empty_db_url)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [0, 0, len(discover())]


def test_edited_applied_migration_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(default_schema_dir(), schema)
    migrate(empty_db_url, schema)
    first = sorted(schema.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_db_url, schema)


def test_failing_migration_leaves_nothing_half_applied(empty_db_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(default_schema_dir(), schema)
    (schema / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match="9999_broken failed"):
        migrate(empty_db_url, schema)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM schema_migrations WHERE version = 9999"
        ).fetchone() == (0,)


def test_misnamed_migration_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "add_stuff.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def test_run_refuses_a_database_that_misses_migrations(
    empty_db_url: str, tmp_path: Path, redis_url: str
) -> None:
    """A deploy that skipped ``migrate``: one clear line and exit 2, not a crash later."""
    older = tmp_path / "schema"
    older.mkdir()
    for path in sorted(default_schema_dir().glob("[0-9]*.sql"))[:-1]:
        shutil.copy(path, older / path.name)
    migrate(empty_db_url, older)
    newest = discover()[-1]
    env = {**os.environ, "DATABASE_URL": empty_db_url, "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    expected = f"this worker needs {newest.version:04d}_{newest.name}: run position-worker migrate"
    assert expected in done.stderr
    migrate(empty_db_url)  # and migrating is all it takes
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    assert row == (newest.version,)
