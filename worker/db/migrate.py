"""Versioned migrations from ``schema/NNNN_name.sql``.

* Each migration runs in its own transaction and is recorded in ``schema_migrations``
  (version, name, SHA-256 checksum, applied_at).
* A session advisory lock serializes concurrent ``migrate`` runs: two processes starting at
  once cannot both apply a migration.
* Re-running is a no-op; a migration edited after it was applied is refused (add a new one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg

from worker.errors import DatabaseUnavailable, MigrationError

# Any constant will do, as long as nothing else uses it: "position-worker migrate".
MIGRATION_LOCK_KEY: Final = 0x7057_6D69_6772_6174
_FILE_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def default_schema_dir() -> Path:
    """``schema/`` beside the package (a checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "schema"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(schema_dir: Path | None = None) -> list[Migration]:
    """Every migration file, in version order; a misnamed or duplicate file is an error."""
    directory = schema_dir or default_schema_dir()
    if not directory.is_dir():
        raise MigrationError(f"schema directory not found: {directory}")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} appears twice")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


_CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  checksum   TEXT NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migrate(conninfo: str, schema_dir: Path | None = None) -> list[Migration]:
    """Apply every pending migration; return the ones applied now (empty when up to date)."""
    migrations = discover(schema_dir)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_CREATE_LEDGER)
            return _apply_pending(conn, migrations)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _apply_pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    applied = {version: (name, checksum) for version, name, checksum in rows}
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            _check_unchanged(migration, *applied[migration.version])
            continue
        _apply_one(conn, migration)
        done.append(migration)
    return done


def _check_unchanged(migration: Migration, name: str, checksum: str) -> None:
    if checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{name} was edited after it was applied "
            f"(checksum {checksum[:12]} in the database, {migration.checksum[:12]} on disk); "
            "never edit an applied migration: add a new one"
        )


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    label = f"{migration.version:04d}_{migration.name}"
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"migration {label} failed: {exc}".strip()) from None


def applied_versions(conninfo: str) -> list[tuple[int, str, str]]:
    """(version, name, applied_at) of every applied migration, for ``status``."""
    with psycopg.connect(conninfo) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        rows = conn.execute(
            "SELECT version, name, applied_at::text FROM schema_migrations ORDER BY version"
        ).fetchall()
    return [(int(v), str(n), str(a)) for v, n, a in rows]


async def require_current_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Refuse to run on a database that lacks migrations this code relies on (a deploy that
    skipped ``migrate``): one clear error instead of a worker that crashes on the first
    query that needs them."""
    try:
        newest = discover()[-1]
    except (MigrationError, IndexError):  # no schema/ beside the package: nothing to compare
        return
    cur = await conn.execute(
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0"
        " ELSE (SELECT coalesce(max(version), 0) FROM schema_migrations) END"
    )
    row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current < newest.version:
        raise MigrationError(
            f"the database schema is at version {current:04d}, this worker needs "
            f"{newest.version:04d}_{newest.name}: run position-worker migrate"
        )
