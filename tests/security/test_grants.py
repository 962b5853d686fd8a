"""Exactly the documented privileges on every object the migrations created, on both shapes;
``migrate`` re-asserts them; objects a later migration adds stay closed.

The expected table is the README's Security table, written out per object and role."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import act_as, schema_on_disk
from worker.db.migrate import migrate

Conn = psycopg.Connection[Any]
ROLES = ("PUBLIC", "anon", "authenticated", "service_role", "position_worker_operator")
OPS = "position_worker_operator"
CRUD = {"SELECT", "INSERT", "UPDATE", "DELETE"}
USER_INSERT = [
    "id",
    "user_id",
    "trader_id",
    "signal_id",
    "symbol",
    "side",
    "status",
    "requested_quantity",
    "requested_quote",
    "limit_price",
    "stop_loss_price",
    "take_profit_price",
    "max_loss_usdt",
    "is_paper_trade",
    "metadata",
    "account_id",
]
USER_UPDATE = ["stop_loss_price", "take_profit_price", "max_loss_usdt", "metadata"]
AUDIT_COLUMNS = [
    "id",
    "occurred_at",
    "kind",
    "position_id",
    "order_id",
    "user_id",
    "symbol",
    "old_status",
    "new_status",
    "actor_role",
    "actor_uid",
    "data",
]

ACCOUNT_COLUMNS = [
    "id",
    "user_id",
    "exchange",
    "label",
    "api_key_hint",
    "key_type",
    "status",
    "status_reason",
    "is_default",
    "key_version",
    "secret_state",
    "checked_at",
    "notified_at",
    "created_at",
    "updated_at",
]  # every column but api_key
USERS_AND_PLATFORM = {"authenticated": {"EXECUTE"}, "service_role": {"EXECUTE"}}

_READERS = {"authenticated": {"SELECT"}, "service_role": {"SELECT"}, OPS: {"SELECT"}}
EXPECTED_OBJECTS: dict[str, dict[str, set[str]]] = {
    "public.positions": _READERS,
    "public.orders": _READERS,
    "public.trades": _READERS,
    "public.position_requests": _READERS,
    "public.position_audit": _READERS,
    "public.position_events": {"service_role": {"SELECT"}, OPS: {"SELECT"}},
    "public.signals": {"authenticated": CRUD, "service_role": CRUD},
    "public.traders": {"authenticated": CRUD, "service_role": CRUD},
    "public.user_limits": {"authenticated": {"SELECT"}, "service_role": CRUD, OPS: CRUD},
    "public.user_limit_defaults": {
        "authenticated": {"SELECT"},
        "service_role": {"SELECT", "UPDATE"},
        OPS: {"SELECT", "UPDATE"},
    },
    "public.user_risk_limits": {"authenticated": {"SELECT"}, "service_role": CRUD, OPS: CRUD},
    # exchange accounts: column grants only (below); the secret tables get nothing at all
    "public.exchange_accounts": {},
    "public.exchange_account_secrets": {},
    "public.exchange_account_secret_inbox": {},
    # paper trading state: read-only for its owner (row-level security), written by the worker
    "public.paper_balances": _READERS,
    "public.paper_orders": _READERS,
    # the outbox's claims: the worker's (the owner's) alone
    "public.outbox_claim(bigint, integer)": {},
    "public.outbox_claim_fair(bigint, integer, integer)": {},
    "public.add_exchange_account(text, text, text, text, text, boolean)": USERS_AND_PLATFORM,
    "public.rotate_exchange_account_key(uuid, text, text, text)": USERS_AND_PLATFORM,
    "public.enable_exchange_account(uuid)": USERS_AND_PLATFORM,
    "public.set_default_exchange_account(uuid)": USERS_AND_PLATFORM,
    "public.delete_exchange_account(uuid)": USERS_AND_PLATFORM,
    "public.disable_exchange_account(uuid)": {**USERS_AND_PLATFORM, OPS: {"EXECUTE"}},
    "public.request_position_exit(uuid, numeric, text)": {
        "authenticated": {"EXECUTE"}, "service_role": {"EXECUTE"}, OPS: {"EXECUTE"},
    },
    "public.request_position_scale_in(uuid, numeric, numeric, text)": {
        "authenticated": {"EXECUTE"}, "service_role": {"EXECUTE"}, OPS: {"EXECUTE"},
    },
    # the trigger function making a change of positions.protection an event: nobody calls it
    "public.record_protection_event()": {},
    # only where this project created the stand-in (plain PostgreSQL)
    "auth.uid()": {r: {"EXECUTE"} for r in ("anon", "authenticated", "service_role", OPS)},
}  # fmt: skip
EXPECTED_COLUMNS: dict[str, dict[str, set[str]]] = {
    **{
        f"public.positions.{c}": {
            r: {"INSERT", "UPDATE"} if c in USER_UPDATE else {"INSERT"}
            for r in ("authenticated", "service_role")
        }
        for c in USER_INSERT
    },
    **{f"public.position_events.{c}": {"authenticated": {"SELECT"}} for c in AUDIT_COLUMNS},
    **{
        f"public.exchange_accounts.{c}": {
            r: {"SELECT"} for r in ("authenticated", "service_role", OPS)
        }
        for c in ACCOUNT_COLUMNS
    },
}

_ACL = """
SELECT s.name, coalesce(r.rolname, 'PUBLIC'), a.privilege_type
FROM schema_objects s
JOIN pg_class c ON c.oid = to_regclass(s.name)
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault(
    (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE s.kind <> 'function' AND a.grantee <> c.relowner
UNION ALL
SELECT s.name, coalesce(r.rolname, 'PUBLIC'), a.privilege_type
FROM schema_objects s
JOIN pg_proc p ON p.oid = to_regprocedure(s.name)
CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE s.kind = 'function' AND a.grantee <> p.proowner
"""
_COLUMN_ACL = """
SELECT s.name || '.' || att.attname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type
FROM schema_objects s
JOIN pg_class c ON c.oid = to_regclass(s.name)
JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND att.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(att.attacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE s.kind = 'table' AND a.grantee <> c.relowner
"""


def _grants(conn: Conn, query: str) -> dict[str, dict[str, set[str]]]:
    found: dict[str, dict[str, set[str]]] = {}
    for name, role, privilege in conn.execute(query).fetchall():
        found.setdefault(name, {}).setdefault(role, set()).add(privilege)
    return found


def _expected(ledger: set[str]) -> dict[str, dict[str, set[str]]]:
    """EXPECTED_OBJECTS of the ledger; an object expected to have no grant is absent from
    what _grants finds, so it must be absent here too (and it must be in the ledger)."""
    assert {n for n, g in EXPECTED_OBJECTS.items() if not g} <= ledger
    return {name: grants for name, grants in EXPECTED_OBJECTS.items() if name in ledger and grants}


def _ledger(conn: Conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM schema_objects").fetchall()}


def test_every_object_has_exactly_the_documented_grants(owner_conn: Conn, db_shape: str) -> None:
    ledger = _ledger(owner_conn)
    assert _grants(owner_conn, _ACL) == _expected(ledger)
    assert _grants(owner_conn, _COLUMN_ACL) == EXPECTED_COLUMNS
    # The ledger holds every table, view, sequence and function of ours ...
    assert {
        "public.schema_migrations", "public.schema_objects", "public.position_events_id_seq",
        "public.outbox_claim(bigint, integer)", "public._is_privileged()",
        "public.outbox_claim_fair(bigint, integer, integer)",
    } <= ledger  # fmt: skip
    # ... and on Supabase nothing of auth, which is Supabase's.
    auth_objects = {n for n in ledger if n.startswith("auth.")}
    assert auth_objects == (set() if db_shape == "supabase" else {"auth.users", "auth.uid()"})


def test_nobody_but_the_owner_truncates_sets_sequences_or_references(owner_conn: Conn) -> None:
    rows = owner_conn.execute(
        "SELECT s.name, r, p FROM schema_objects s, unnest(%s::text[]) r, "
        "unnest(array['TRUNCATE', 'REFERENCES', 'TRIGGER']) p "
        "WHERE s.kind = 'table' AND to_regclass(s.name) IS NOT NULL "
        "AND has_table_privilege(r, s.name, p)",
        (list(ROLES[1:]),),
    ).fetchall()
    assert rows == []
    seq = owner_conn.execute(
        "SELECT r FROM unnest(%s::text[]) r WHERE has_sequence_privilege(r, "
        "'position_events_id_seq', 'USAGE') OR has_sequence_privilege(r, "
        "'position_events_id_seq', 'UPDATE')",
        (list(ROLES[1:]),),
    ).fetchall()
    assert seq == []


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_api_roles_cannot_break_the_platform(db_url: str, role: str) -> None:
    """setval on the event sequence (every later state change fails), rewriting the migration
    ledger (migrate and run refuse to start), TRUNCATE, and the outbox's claim functions
    (PostgREST's /rpc/outbox_claim_fair with values of the caller's choosing would read and
    lock every user's events; outbox_mark_processed would drop them unhandled)."""
    attacks = {
        "setval": "SELECT setval('position_events_id_seq', 9223372036854775807)",
        "nextval": "SELECT nextval('position_events_id_seq')",
        "rewrite ledger": "UPDATE schema_migrations SET checksum = 'x'",
        "delete ledger": "DELETE FROM schema_migrations",
        "objects ledger": "DELETE FROM schema_objects",
        "truncate positions": "TRUNCATE positions CASCADE",
        "truncate events": "TRUNCATE position_events",
        "truncate orders": "TRUNCATE orders CASCADE",
        "claim fair": "SELECT * FROM outbox_claim_fair(0, 2147483647, 2147483647)",
        "claim": "SELECT * FROM outbox_claim(0, 2147483647)",
        "mark processed": "SELECT outbox_mark_processed(ARRAY[1, 2, 3]::bigint[])",
    }
    outcomes = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, None, role=role)
        for label, statement in attacks.items():
            try:
                conn.execute(statement)
                outcomes[label] = "accepted"
            except psycopg.Error as exc:
                outcomes[label] = str(exc.sqlstate)
    assert outcomes == dict.fromkeys(attacks, "42501")


def test_migrate_reasserts_grants_changed_by_hand(db_url: str, owner_conn: Conn) -> None:
    owner_conn.execute("GRANT ALL ON positions, position_events, schema_migrations TO anon")
    owner_conn.execute("GRANT UPDATE ON positions TO authenticated")
    owner_conn.execute("GRANT EXECUTE ON FUNCTION outbox_claim(bigint, integer) TO PUBLIC")
    assert migrate(db_url) == []
    ledger = _ledger(owner_conn)
    assert _grants(owner_conn, _ACL) == _expected(ledger)
    assert _grants(owner_conn, _COLUMN_ACL) == EXPECTED_COLUMNS


def test_an_object_a_later_migration_forgets_stays_closed(
    db_url: str, owner_conn: Conn, tmp_path: Path
) -> None:
    """Under Supabase's default privileges a new table starts with ALL for anon; the next
    migration adds one without a word about grants."""
    schema = tmp_path / "schema"
    shutil.copytree(schema_on_disk(), schema)
    (schema / "0999_forgotten.sql").write_text(
        "CREATE TABLE forgotten (id int PRIMARY KEY, secret text);\n"
        "CREATE FUNCTION forgotten_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
    )
    assert [m.version for m in migrate(db_url, schema)] == [999]
    for role in ROLES[1:]:
        assert owner_conn.execute(
            "SELECT has_table_privilege(%s, 'forgotten', 'SELECT'),"
            " has_table_privilege(%s, 'forgotten', 'INSERT'),"
            " has_function_privilege(%s, 'forgotten_fn()', 'EXECUTE')",
            (role, role, role),
        ).fetchone() == (False, False, False), role


def test_supabase_auth_is_used_never_replaced(owner_conn: Conn, db_shape: str) -> None:
    if db_shape != "supabase":
        pytest.skip("Supabase's own auth objects exist only on the Supabase shape")
    rows = owner_conn.execute(
        "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.proacl IS NULL "
        "FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace ORDER BY 1"
    ).fetchall()
    # still Supabase's, untouched (no ACL written: PUBLIC EXECUTE as shipped)
    assert rows == [
        ("auth.jwt()", "supabase_auth_admin", True),
        ("auth.role()", "supabase_auth_admin", True),
        ("auth.uid()", "supabase_auth_admin", True),
    ]
    owner = owner_conn.execute(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'auth'"
    ).fetchone()
    assert owner == ("supabase_admin",)
    superuser = owner_conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert superuser.fetchone() == (False,)
