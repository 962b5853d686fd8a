"""Versioned migrations from ``schema/NNNN_name.sql``, then the repeatable ``schema/R__*.sql``.

* The files ship with the package as ``worker.schema`` (the project's top-level ``schema/``,
  mapped in pyproject.toml) and are read through ``importlib.resources``: the same code finds
  them in a wheel installed anywhere, in an editable install and in a checkout.
* Each migration runs in its own transaction and is recorded in ``schema_migrations``
  (version, name, SHA-256 checksum, applied_at).
* Every table, view, sequence and function a migration creates (in schemas ``public`` and
  ``auth``) is recorded in ``schema_objects``, in the same transaction, by comparing the
  catalog before and after. That ledger is what the privileges file works on: an object is
  this project's because a migration created it, not because of its name or owner (on
  Supabase the platform's own tables in ``public`` have the same owner as ours).
* Repeatable files (``R__name.sql``) run after the versioned ones on every ``migrate``, each in
  its own transaction: ``R__privileges.sql`` re-asserts every grant, so an object added later,
  or a grant changed by hand, cannot slip through.
* A session advisory lock serializes concurrent ``migrate`` runs: two processes starting at
  once cannot both apply a migration.
* Re-running is a no-op but for the repeatable files; a migration edited after it was applied
  is refused (add a new one). A migration may name, in a ``-- replaces-checksum: <sha256>``
  line, the checksum of an earlier text it supersedes when that text could not run on every
  supported database: a ledger holding that checksum is updated instead of refused.

Over 300 lines on purpose: the migrator, its ledgers and the schema check at start-up read
and write the same two tables and must agree on what a migration is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

import psycopg

from worker.errors import DatabaseUnavailable, MigrationError

# Any constant will do, as long as nothing else uses it: "position-worker migrate".
MIGRATION_LOCK_KEY: Final = 0x7057_6D69_6772_6174
_FILE_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_REPEATABLE_NAME: Final = re.compile(r"^R__([a-z0-9_]+)\.sql$")
_REPLACES: Final = re.compile(r"^-- replaces-checksum: ([0-9a-f]{64})\s*$", re.MULTILINE)


SCHEMA_PACKAGE: Final = "worker.schema"


def default_schema_dir() -> Traversable:
    """The migrations this code ships with: the package ``worker.schema`` (a directory on disk
    for a wheel or an editable install). A checkout put on ``sys.path`` without installing has
    no such package: there they are read from ``schema/`` beside ``worker/``."""
    try:
        return resources.files(SCHEMA_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != SCHEMA_PACKAGE:
            raise
        return Path(__file__).resolve().parents[2] / "schema"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def replaces(self) -> frozenset[str]:
        """Checksums of earlier texts of this migration that it supersedes."""
        return frozenset(_REPLACES.findall(self.sql))


@dataclass(frozen=True, slots=True)
class Repeatable:
    name: str
    sql: str


def discover(schema_dir: Traversable | None = None) -> list[Migration]:
    """Every versioned migration file, in version order (``schema_dir``: a directory, by
    default the package's own). A misnamed or duplicate file is an error, and so is a
    directory without any migration: no code of this project runs on an empty schema."""
    directory = default_schema_dir() if schema_dir is None else schema_dir
    found: dict[int, Migration] = {}
    for path in _sql_files(directory):
        if _REPEATABLE_NAME.match(path.name):
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: migration files are named NNNN_name.sql (or R__name.sql)"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} appears twice")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return [found[v] for v in sorted(found)]


def discover_repeatable(schema_dir: Traversable | None = None) -> list[Repeatable]:
    """The repeatable files, by name."""
    directory = default_schema_dir() if schema_dir is None else schema_dir
    return [
        Repeatable(match.group(1), path.read_text(encoding="utf-8"))
        for path in _sql_files(directory)
        if (match := _REPEATABLE_NAME.match(path.name))
    ]


def _sql_files(directory: Traversable) -> list[Traversable]:
    if not directory.is_dir():
        raise MigrationError(f"no migrations found: {directory} is not a directory")
    files = [p for p in directory.iterdir() if p.name.endswith(".sql") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


_CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  checksum   TEXT NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_objects (
  kind       TEXT NOT NULL CHECK (kind IN ('table', 'sequence', 'function')),
  name       TEXT NOT NULL,  -- schema-qualified, quoted; functions with their argument types
  version    INTEGER,        -- the migration that created it (NULL: the ledger itself)
  PRIMARY KEY (kind, name)
);
INSERT INTO schema_objects (kind, name) VALUES
  ('table', 'public.schema_migrations'), ('table', 'public.schema_objects')
ON CONFLICT DO NOTHING;
"""

# Tables, views and sequences, and functions, in the schemas migrations create objects in.
_CATALOG: Final = """
SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END,
       format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'auth') AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 'function', format('%I.%I(%s)', n.nspname, p.proname,
                          oidvectortypes(p.proargtypes))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('public', 'auth')
"""


def migrate(conninfo: str, schema_dir: Traversable | None = None) -> list[Migration]:
    """Apply every pending migration, then every repeatable file; return the migrations
    applied now (empty when up to date)."""
    migrations = discover(schema_dir)
    repeatable = discover_repeatable(schema_dir)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            _run(conn, "create the migration ledger", _CREATE_LEDGER)
            done = _apply_pending(conn, migrations)
            for item in repeatable:
                _run(conn, f"R__{item.name}", item.sql)
            return done
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _run(conn: psycopg.Connection, label: str, sql: str) -> None:
    try:
        with conn.transaction():
            conn.execute(sql.encode("utf-8"))
    except psycopg.Error as exc:
        raise MigrationError(f"{label} failed: {exc}".strip()) from None


def _apply_pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    applied = {version: (name, checksum) for version, name, checksum in rows}
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            _check_unchanged(conn, migration, *applied[migration.version])
            continue
        _apply_one(conn, migration)
        done.append(migration)
    return done


def _check_unchanged(
    conn: psycopg.Connection, migration: Migration, name: str, checksum: str
) -> None:
    if checksum == migration.checksum:
        return
    if checksum in migration.replaces:
        conn.execute(
            "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
            (migration.checksum, migration.version),
        )
        return
    raise MigrationError(
        f"migration {migration.version:04d}_{name} was edited after it was applied "
        f"(checksum {checksum[:12]} in the database, {migration.checksum[:12]} on disk); "
        "never edit an applied migration: add a new one"
    )


def _catalog(conn: psycopg.Connection) -> set[tuple[str, str]]:
    return {(str(kind), str(name)) for kind, name in conn.execute(_CATALOG).fetchall()}


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    label = f"{migration.version:04d}_{migration.name}"
    try:
        with conn.transaction():
            before = _catalog(conn)
            conn.execute(migration.sql.encode("utf-8"))
            created = sorted(_catalog(conn) - before)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO schema_objects (kind, name, version) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(kind, name, migration.version) for kind, name in created],
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


async def require_current_schema(conn: psycopg.AsyncConnection[Any]) -> Migration:
    """Refuse a database whose schema is not the one this code was written for: never
    migrated, missing a migration (a deploy that skipped ``migrate``), or holding migrations
    this code does not know (an older worker on a newer schema). One clear error instead of
    a worker that fails on the first query that needs them. Returns the newest migration,
    which the database has."""
    migrations = discover()  # none shipped with the package: MigrationError, never a pass
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    applied: dict[int, str] = {}
    if row and row[0]:
        cur = await conn.execute("SELECT version, name FROM schema_migrations")
        applied = {int(version): str(name) for version, name in await cur.fetchall()}
    problem = schema_mismatch(applied, migrations)
    if problem is not None:
        raise MigrationError(problem)
    return migrations[-1]


def schema_mismatch(applied: Mapping[int, str], migrations: Sequence[Migration]) -> str | None:
    """What is wrong with a database whose ledger holds ``applied`` (version: name) for code
    that ships ``migrations``, as one line that says what to do; None when they match."""
    newest = migrations[-1]
    known = {m.version for m in migrations}
    unknown = sorted(v for v in applied if v not in known)
    if unknown and unknown[-1] > newest.version:
        return (
            f"the database schema is newer than this worker ({unknown[-1]:04d} > "
            f"{newest.version:04d}): upgrade the worker"
        )
    if unknown:
        names = _listed(f"{v:04d}_{applied[v]}" for v in unknown)
        return (
            f"the database schema has {names}, which this worker (up to "
            f"{newest.version:04d}) does not know: upgrade the worker"
        )
    missing = [m for m in migrations if m.version not in applied]
    if not missing:
        return None
    needs = f"this worker needs {newest.version:04d}_{newest.name}: run position-worker migrate"
    if not applied:
        return f"the database has no schema yet, {needs}"
    current = max(applied)
    if missing[0].version > current:
        return f"the database schema is at version {current:04d}, {needs}"
    names = _listed(f"{m.version:04d}_{m.name}" for m in missing)
    return (
        f"the database schema is at version {current:04d} but lacks {names}, which this "
        "worker needs: run position-worker migrate"
    )


def _listed(names: Iterable[str], at_most: int = 3) -> str:
    items = list(names)
    shown = ", ".join(items[:at_most])
    return shown if len(items) <= at_most else f"{shown} and {len(items) - at_most} more"
