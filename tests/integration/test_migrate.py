"""Migrations: from empty, idempotent, serialized, tamper-evident."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from tests.support import schema_on_disk
from worker.db.migrate import (
    Migration,
    default_schema_dir,
    discover,
    discover_repeatable,
    migrate,
    schema_mismatch,
)
from worker.errors import MigrationError

SCHEMA_ON_DISK = Path(__file__).resolve().parents[2] / "schema"

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
    shutil.copytree(schema_on_disk(), schema)
    migrate(empty_db_url, schema)
    first = sorted(schema.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_db_url, schema)


def test_failing_migration_leaves_nothing_half_applied(empty_db_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(schema_on_disk(), schema)
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


def test_a_directory_without_migrations_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "R__privileges.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="no migrations found in"):
        discover(tmp_path)
    with pytest.raises(MigrationError, match=r"no migrations found: .* is not a directory"):
        discover(tmp_path / "missing")


def test_the_package_ships_every_file_of_schema() -> None:
    """The migrations are read as the package's resources (``worker.schema``, which is the
    top-level ``schema/``), never by a path relative to the code: what a wheel carries."""
    shipped = resources.files("worker.schema")
    assert str(default_schema_dir()) == str(shipped)
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_ON_DISK.glob("*.sql")}
    found = {f"{m.version:04d}_{m.name}.sql": m.sql for m in discover()} | {
        f"R__{r.name}.sql": r.sql for r in discover_repeatable()
    }
    assert found == on_disk
    assert any(name.startswith("R__") for name in found)
    assert {p.name for p in shipped.iterdir() if p.name.endswith(".sql")} == set(on_disk)


def test_schema_mismatch_says_what_to_do() -> None:
    known = [Migration(v, f"m{v}", "SELECT 1;") for v in (1, 2, 3, 5, 6)]
    assert schema_mismatch({1: "m1", 2: "m2", 3: "m3", 5: "m5", 6: "m6"}, known) is None
    assert schema_mismatch({}, known) == (
        "the database has no schema yet, this worker needs 0006_m6: run position-worker migrate"
    )
    assert schema_mismatch({1: "m1", 2: "m2"}, known) == (
        "the database schema is at version 0002, this worker needs 0006_m6: "
        "run position-worker migrate"
    )
    assert schema_mismatch({1: "m1", 6: "m6"}, known) == (
        "the database schema is at version 0006 but lacks 0002_m2, 0003_m3, 0005_m5, which "
        "this worker needs: run position-worker migrate"
    )
    assert schema_mismatch({6: "m6"}, known) == (
        "the database schema is at version 0006 but lacks 0001_m1, 0002_m2, 0003_m3 and 1 "
        "more, which this worker needs: run position-worker migrate"
    )
    everything = {m.version: m.name for m in known}
    assert schema_mismatch({**everything, 4: "branch", 9: "later"}, known) == (
        "the database schema is newer than this worker (0009 > 0006): upgrade the worker"
    )
    assert schema_mismatch({**everything, 4: "branch"}, known) == (
        "the database schema has 0004_branch, which this worker (up to 0006) does not know: "
        "upgrade the worker"
    )
    assert schema_mismatch({1: "m1", 9: "later"}, known) == (  # newer wins: migrate cannot help
        "the database schema is newer than this worker (0009 > 0006): upgrade the worker"
    )


def test_run_refuses_a_database_that_misses_migrations(
    empty_db_url: str, tmp_path: Path, redis_url: str
) -> None:
    """A deploy that skipped ``migrate``: one clear line and exit 2, not a crash later."""
    older = tmp_path / "schema"
    older.mkdir()
    *before, newest = discover()
    for m in before:
        (older / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    migrate(empty_db_url, older)
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
