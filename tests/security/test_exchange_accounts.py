"""Exchange accounts (schema/0013_exchange_accounts.sql), on both database shapes: each user
manages only their own accounts through the functions; the API secret is write-only (the
plain shape keeps it in the unlogged inbox until the worker seals it, the Supabase shape in
Vault); positions trade only on an account of their own user; risk limits are the
platform's to set. Every refusal is asserted with its SQLSTATE and message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, insert_position, seed_owner

Conn = psycopg.Connection[Any]
WAIT = 10.0
# what users may read of an account: every column but api_key
VISIBLE = (
    "id, user_id, exchange, label, api_key_hint, key_type, status, status_reason, is_default, "
    "key_version, secret_state, checked_at, notified_at, created_at, updated_at"
)


def _secret() -> str:
    return f"sEcReT{uuid.uuid4().hex}"


def _key() -> str:
    return f"KeY{uuid.uuid4().hex}"


def _outcome(conn: Conn, sql: str, *args: Any) -> str:
    try:
        with conn.transaction():
            cur = conn.execute(sql, args)
            return f"rows={cur.rowcount}"
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {exc.diag.message_primary}"


def _error_text(exc: psycopg.Error) -> str:
    """Everything an error tells the client (and a server log line of it)."""
    d = exc.diag
    fields = (d.message_primary, d.message_detail, d.message_hint, d.context, d.internal_query)
    return " | ".join([str(exc), *(f or "" for f in fields)])


def _user(db_url: str, owner: Owner | None, role: str = "authenticated") -> Conn:
    conn = psycopg.connect(db_url, autocommit=True)
    act_as(conn, owner.user_id if owner else None, role=role)
    return conn


def _add(conn: Conn, secret: str, label: str = "main", **kw: Any) -> uuid.UUID:
    args = {"exchange": "binance", "label": label, "key": _key(), "secret": secret, **kw}
    extra = ", p_make_default => %(default)s" if "default" in args else ""
    row = conn.execute(
        f"SELECT add_exchange_account(%(exchange)s, %(label)s, %(key)s, %(secret)s{extra})",
        args,
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _account(owner_conn: Conn, account: uuid.UUID) -> dict[str, Any]:
    cur = owner_conn.execute("SELECT * FROM exchange_accounts WHERE id = %s", (account,))
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([d.name for d in cur.description], row, strict=True))


def _stored_secret(owner_conn: Conn, account: uuid.UUID) -> str | None:
    """The plaintext as the worker (the owner) reads it: inbox, or Vault."""
    row = owner_conn.execute(
        "SELECT api_secret FROM exchange_account_secret_inbox WHERE account_id = %s",
        (account,),
    ).fetchone()
    if row:
        return str(row[0])
    if owner_conn.execute("SELECT to_regclass('vault.decrypted_secrets')").fetchone() == (None,):
        return None
    row = owner_conn.execute(
        "SELECT d.decrypted_secret FROM exchange_account_secrets s"
        " JOIN vault.decrypted_secrets d ON d.id = s.vault_secret_id WHERE s.account_id = %s",
        (account,),
    ).fetchone()
    return str(row[0]) if row else None


def _everything(owner_conn: Conn) -> list[Any]:
    tables = ["exchange_accounts", "exchange_account_secrets", "exchange_account_secret_inbox",
              "positions", "user_risk_limits"]  # fmt: skip
    if owner_conn.execute("SELECT to_regclass('vault.secrets')").fetchone() != (None,):
        tables.append("vault.secrets")
    rows: list[Any] = []
    for table in tables:
        rows += owner_conn.execute(
            f"SELECT '{table}', t::text FROM {table} t ORDER BY 2"
        ).fetchall()
    return rows


def _close(conn: Conn, position: uuid.UUID) -> None:
    for status, held in (("submitting", "0"), ("open", "1"), ("closing", "1"), ("closed", "0")):
        conn.execute(
            "UPDATE positions SET status = %s, held_quantity = %s WHERE id = %s",
            (status, Decimal(held), position),
        )


@pytest.fixture
def a(owner_conn: Conn) -> Owner:
    return seed_owner(owner_conn)


@pytest.fixture
def b(owner_conn: Conn) -> Owner:
    return seed_owner(owner_conn)


@pytest.fixture
def operator(db_url: str, pg_admin_url: str) -> Iterator[Conn]:
    """A login role in position_worker_operator, as a platform grants it to its people."""
    login = f"pw_ops_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE position_worker_operator")
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, user=login),
                             autocommit=True) as conn:  # fmt: skip
            yield conn
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {login}")
            admin.execute(f"DROP ROLE {login}")


# ---------------------------------------------------------------------------------------
# Adding, reading, storing


def test_a_user_adds_an_account_and_reads_only_its_harmless_columns(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner, b: Owner
) -> None:
    secret, key = _secret(), _key()
    with _user(db_url, a) as user:
        account = _add(user, secret, key=key)
        row = user.execute(
            "SELECT user_id, exchange, label, api_key_hint, key_type, status, is_default,"
            " key_version, secret_state, checked_at FROM exchange_accounts"
        ).fetchall()
        hidden = [
            _outcome(user, "SELECT api_key FROM exchange_accounts"),
            _outcome(user, "SELECT * FROM exchange_accounts"),
        ]
    state = "vault" if db_shape == "supabase" else "pending"
    assert row == [
        (a.user_id, "binance", "main", "..." + key[-4:], "hmac", "active", True, 1, state, None)
    ]
    assert hidden == ["42501: permission denied for table exchange_accounts"] * 2
    with _user(db_url, b) as other:
        assert other.execute(f"SELECT {VISIBLE} FROM exchange_accounts").fetchall() == []
    # the worker reads the plaintext where the shape keeps it ...
    assert _stored_secret(owner_conn, account) == secret
    stored = owner_conn.execute(
        "SELECT (SELECT count(*) FROM exchange_account_secret_inbox),"
        " (SELECT count(*) FROM exchange_account_secrets)"
    ).fetchone()
    assert stored == ((0, 1) if db_shape == "supabase" else (1, 0))
    if db_shape == "supabase":
        # ... Vault's table holds it encrypted, under a name that says whose it is
        vault = owner_conn.execute("SELECT name, secret FROM vault.secrets").fetchall()
        assert vault == [(f"position_worker.exchange_account.{account}", vault[0][1])]
        assert secret not in vault[0][1]


def test_the_inbox_is_unlogged(owner_conn: Conn) -> None:
    """The plaintext never reaches the WAL, replicas or base backups."""
    row = owner_conn.execute(
        "SELECT relpersistence FROM pg_class WHERE oid = 'exchange_account_secret_inbox'::regclass"
    ).fetchone()
    assert row == ("u",)


def _secret_reads(db_shape: str) -> dict[str, str]:
    reads = {
        "secrets": "SELECT * FROM exchange_account_secrets",
        "secret ciphertext": "SELECT ciphertext FROM exchange_account_secrets",
        "inbox": "SELECT * FROM exchange_account_secret_inbox",
        "inbox column": "SELECT api_secret FROM exchange_account_secret_inbox",
        "api key": "SELECT api_key FROM exchange_accounts",
        "copy": "COPY exchange_account_secret_inbox TO STDOUT",
        "truncate": "TRUNCATE exchange_account_secret_inbox",
        "delete": "DELETE FROM exchange_account_secrets",
        "update": "UPDATE exchange_accounts SET status = 'active'",
        "seal": "SELECT seal_exchange_account_secret(gen_random_uuid(), now(), '\\x00', 'k')",
        "mark lost": "SELECT mark_lost_exchange_secrets()",
        "store": "SELECT _store_exchange_secret(gen_random_uuid(), 'x')",
        "lock": "SELECT _lock_exchange_account(gen_random_uuid())",
    }
    if db_shape == "supabase":
        reads |= {
            "vault table": "SELECT * FROM vault.secrets",
            "vault view": "SELECT decrypted_secret FROM vault.decrypted_secrets",
            "vault decrypt": "SELECT vault._crypto_aead_det_decrypt('\\x00', '\\x00', 0)",
            "vault update": "SELECT vault.update_secret(gen_random_uuid(), 'x')",
        }
    return reads


@pytest.mark.parametrize("role", ["authenticated", "anon", "service_role"])
def test_no_api_role_reads_a_secret_by_any_path(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner, role: str
) -> None:
    """Own account or another user's: the secret tables, the inbox, api_key, Vault, the
    owner's helper functions are all closed. service_role is the platform's admin key: it
    gets nothing of ours either, but Supabase itself grants it Vault (below)."""
    with _user(db_url, a) as user:
        _add(user, _secret())
    before = _everything(owner_conn)
    with _user(db_url, a, role) as caller:
        outcomes = {k: _outcome(caller, sql) for k, sql in _secret_reads(db_shape).items()}
    denied = {k: v for k, v in outcomes.items() if not v.startswith("42501: permission denied")}
    if role == "service_role" and db_shape == "supabase":
        # Supabase's own grants (after-create.sql of supabase_vault), not this project's
        assert set(denied) == {"vault table", "vault view", "vault decrypt", "vault update"}
    else:
        assert denied == {}
    assert _everything(owner_conn) == before


def test_the_operator_reads_accounts_but_no_secret(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner, operator: Conn
) -> None:
    with _user(db_url, a) as user:
        account = _add(user, _secret())
    outcomes = {k: _outcome(operator, sql) for k, sql in _secret_reads(db_shape).items()}
    assert {v.split(":")[0] for v in outcomes.values()} == {"42501"}, outcomes
    seen = operator.execute("SELECT id, label FROM exchange_accounts").fetchall()
    assert seen == [(account, "main")]


# ---------------------------------------------------------------------------------------
# Secrets never come back


def _bad_calls(secret: str, account: uuid.UUID) -> dict[str, tuple[str, tuple[Any, ...]]]:
    add = "SELECT add_exchange_account(%s, %s, %s, %s, %s)"
    rotate = "SELECT rotate_exchange_account_key(%s, %s, %s, %s)"
    key = _key()
    return {
        "secret as exchange": (add, (secret, "l", key, secret, "hmac")),
        "secret as label": (add, ("binance", secret + "\n", key, secret, "hmac")),
        "secret as key type": (add, ("binance", "l", key, secret, secret)),
        "secret with a space as api key": (add, ("binance", "l", secret + " x", secret, "hmac")),
        "secret as both": (add, ("binance", "l", secret, secret, "hmac")),
        "hmac secret with a space": (add, ("binance", "l", key, secret + " x", "hmac")),
        "secret too long": (add, ("binance", "l", key, secret * 300, "hmac")),
        "secret with a NUL-like control": (add, ("binance", "l", key, secret + "\x07", "rsa")),
        "rotate: secret as key type": (rotate, (account, key, secret, secret)),
        "rotate: secret with a space": (rotate, (account, key, secret + " x", None)),
        "rotate: another user's account": (rotate, (uuid.uuid4(), key, secret, None)),
    }


def test_bad_arguments_are_refused_without_echoing_the_secret(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    secret = _secret()
    with _user(db_url, a) as user:
        account = _add(user, _secret(), label="l")
        before = _everything(owner_conn)
        errors: dict[str, tuple[str | None, str]] = {}
        for label, (sql, args) in _bad_calls(secret, account).items():
            with pytest.raises(psycopg.Error) as info:
                user.execute(sql, args)
            errors[label] = (info.value.sqlstate, _error_text(info.value))
    assert {k for k, (_, text) in errors.items() if secret[6:] in text} == set()
    codes = {k: code for k, (code, _) in errors.items()}
    assert codes == {k: "PW016" if "another user" in k else "PW017" for k in errors}
    assert _everything(owner_conn) == before


def test_a_duplicate_label_is_refused_by_name_not_by_row(db_url: str, a: Owner) -> None:
    with _user(db_url, a) as user:
        _add(user, _secret(), label="same")
        outcome = _outcome(
            user, "SELECT add_exchange_account('binance', 'same', %s, %s)", _key(), _secret()
        )
    assert outcome == "PW017: label already used"


def test_the_secret_reaches_no_event_notification_or_other_session(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner
) -> None:
    secret = _secret()
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN position_worker_accounts")
        listener.execute("LISTEN position_state_change")
        with _user(db_url, a) as user:
            # the secret inline in the statement text, the worst case for pg_stat_activity
            row = user.execute(
                f"SELECT add_exchange_account('binance', 'main', '{_key()}', '{secret}')"
            ).fetchone()
            assert row is not None
            account = row[0]
            insert_position(user, a)
            got = [(n.channel, n.payload) for n in listener.notifies(timeout=WAIT, stop_after=2)]
            # another user's session: the statement text of a's session is not visible
            with _user(db_url, b) as other:
                seen = other.execute(
                    "SELECT coalesce(query, '') FROM pg_stat_activity WHERE pid = %s",
                    (user.info.backend_pid,),
                ).fetchall()
    assert got[0] == ("position_worker_accounts", str(account))
    assert got[1][0] == "position_state_change" and secret not in got[1][1]
    assert seen == [("<insufficient privilege>",)]
    events = owner_conn.execute("SELECT string_agg(t::text, ' ') FROM position_events t")
    text = events.fetchone()
    assert text is not None and text[0] and secret not in text[0]
    assert str(account) not in text[0]  # the account is not even named in the audit trail


# ---------------------------------------------------------------------------------------
# Each user changes only their own accounts


CHANGES = {
    "rotate": "SELECT rotate_exchange_account_key(%s, 'KeYnew', 'sEcReTnew')",
    "disable": "SELECT disable_exchange_account(%s)",
    "enable": "SELECT enable_exchange_account(%s)",
    "set default": "SELECT set_default_exchange_account(%s)",
    "delete": "SELECT delete_exchange_account(%s)",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_another_users_account_answers_like_a_missing_one(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner, change: str
) -> None:
    with _user(db_url, b) as victim:
        theirs = _add(victim, _secret())
    missing = uuid.uuid4()
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        _add(user, _secret())
        mine = _everything(owner_conn)
        outcomes = [_outcome(user, CHANGES[change], x) for x in (theirs, missing)]
    assert outcomes == [f"PW016: exchange account {x} not found" for x in (theirs, missing)]
    assert [r for r in _everything(owner_conn)] == mine
    assert all(r in mine for r in before)


def test_rotation_replaces_the_key_and_destroys_the_old_secret(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner
) -> None:
    old, new, new_key = _secret(), _secret(), _key()
    with _user(db_url, a) as user:
        account = _add(user, old)
    if db_shape == "plain":  # the worker seals the first secret
        inbox = owner_conn.execute("SELECT submitted_at FROM exchange_account_secret_inbox")
        submitted = inbox.fetchone()
        assert submitted is not None
        sealed = owner_conn.execute(
            "SELECT seal_exchange_account_secret(%s, %s, '\\xdeadbeef', 'k1')",
            (account, submitted[0]),
        ).fetchone()
        assert sealed == (True,)
    owner_conn.execute(
        "UPDATE exchange_accounts SET status = 'invalid', status_reason = 'bad key',"
        " checked_at = now(), notified_at = now() WHERE id = %s",
        (account,),
    )
    vault_before = _vault_rows(owner_conn, db_shape)
    with _user(db_url, a) as user:
        user.execute(
            "SELECT rotate_exchange_account_key(%s, %s, %s, 'ed25519')", (account, new_key, new)
        )
    row = _account(owner_conn, account)
    assert (row["api_key"], row["key_type"], row["key_version"], row["status"]) == (
        new_key, "ed25519", 2, "active",
    )  # fmt: skip
    assert (row["status_reason"], row["checked_at"], row["notified_at"]) == (None, None, None)
    assert _stored_secret(owner_conn, account) == new
    if db_shape == "plain":
        assert row["secret_state"] == "pending"
        sealed = owner_conn.execute("SELECT count(*) FROM exchange_account_secrets")
        assert sealed.fetchone() == (0,)
    else:
        assert row["secret_state"] == "vault"
        # the same Vault row, overwritten: one row, and the old plaintext nowhere
        assert [r[0] for r in _vault_rows(owner_conn, db_shape)] == [r[0] for r in vault_before]
        assert all(old not in str(r) for r in _vault_rows(owner_conn, db_shape))


def _vault_rows(owner_conn: Conn, db_shape: str) -> list[Any]:
    if db_shape != "supabase":
        return []
    return owner_conn.execute("SELECT id, decrypted_secret FROM vault.decrypted_secrets").fetchall()


def test_a_disabled_account_stays_disabled_when_rotated_until_enabled(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    with _user(db_url, a) as user:
        account = _add(user, _secret())
        owner_conn.execute("UPDATE exchange_accounts SET checked_at = now() WHERE id = %s",
                           (account,))  # fmt: skip
        user.execute("SELECT disable_exchange_account(%s)", (account,))
        disabled = _account(owner_conn, account)
        user.execute("SELECT rotate_exchange_account_key(%s, %s, %s)", (account, _key(), _secret()))
        rotated = _account(owner_conn, account)
        owner_conn.execute("UPDATE exchange_accounts SET checked_at = now() WHERE id = %s",
                           (account,))  # fmt: skip
        user.execute("SELECT enable_exchange_account(%s)", (account,))
        enabled = _account(owner_conn, account)
    assert (disabled["status"], disabled["status_reason"]) == ("disabled", "disabled by the user")
    assert (rotated["status"], rotated["key_version"]) == ("disabled", 2)
    assert (enabled["status"], enabled["status_reason"], enabled["checked_at"]) == (
        "active", None, None,
    )  # fmt: skip


def test_the_operator_may_disable_any_account_and_nothing_more(
    db_url: str, owner_conn: Conn, a: Owner, operator: Conn
) -> None:
    with _user(db_url, a) as user:
        account = _add(user, _secret())
    operator.execute("SELECT disable_exchange_account(%s)", (account,))
    row = _account(owner_conn, account)
    assert (row["status"], row["status_reason"]) == ("disabled", "disabled by the platform")
    outcomes = {k: _outcome(operator, sql, account) for k, sql in CHANGES.items()}
    assert outcomes == {
        "rotate": "42501: permission denied for function rotate_exchange_account_key",
        "disable": "rows=1",
        "enable": "42501: permission denied for function enable_exchange_account",
        "set default": "42501: permission denied for function set_default_exchange_account",
        "delete": "42501: permission denied for function delete_exchange_account",
    }


def test_the_default_account(db_url: str, owner_conn: Conn, a: Owner) -> None:
    def defaults() -> list[Any]:
        return owner_conn.execute(
            "SELECT label FROM exchange_accounts WHERE is_default AND user_id = %s", (a.user_id,)
        ).fetchall()

    with _user(db_url, a) as user:
        first = _add(user, _secret(), label="first")
        assert defaults() == [("first",)]  # the first account, automatically
        _add(user, _secret(), label="second")
        assert defaults() == [("first",)]
        third = _add(user, _secret(), label="third", default=True)
        assert defaults() == [("third",)]
        user.execute("SELECT set_default_exchange_account(%s)", (first,))
        assert defaults() == [("first",)]
        # deleting the default passes it to the most recent account left
        user.execute("SELECT delete_exchange_account(%s)", (first,))
        assert defaults() == [("third",)]
        user.execute("SELECT delete_exchange_account(%s)", (third,))
        assert defaults() == [("second",)]


# ---------------------------------------------------------------------------------------
# Positions and accounts


def test_a_live_position_gets_the_default_account_a_paper_one_does_not(
    db_url: str, a: Owner
) -> None:
    with _user(db_url, a) as user:
        no_account_yet = insert_position(user, a)
        main = _add(user, _secret(), label="main")
        other = _add(user, _secret(), label="other")
        live = insert_position(user, a)
        live_null_flag = insert_position(user, a, is_paper_trade=None)
        paper = insert_position(user, a, is_paper_trade=True)
        chosen = insert_position(user, a, account_id=other)
        rows = dict(user.execute("SELECT id, account_id FROM positions").fetchall())
    assert rows == {
        no_account_yet: None, live: main, live_null_flag: main, paper: None, chosen: other,
    }  # fmt: skip


def test_a_position_cannot_use_another_users_account_nor_change_it(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner
) -> None:
    with _user(db_url, b) as victim:
        theirs = _add(victim, _secret())
    with _user(db_url, a) as user:
        mine = _add(user, _secret(), label="mine")
        spare = _add(user, _secret(), label="spare")
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as info:
            insert_position(user, a, account_id=theirs)
        position = insert_position(user, a, account_id=mine)
        before = _everything(owner_conn)
        updates = [
            _outcome(user, "UPDATE positions SET account_id = %s WHERE id = %s", x, position)
            for x in (spare, theirs, None)
        ]
    assert "positions_account_fk" in str(info.value)
    assert updates == ["42501: permission denied for table positions"] * 3
    assert _everything(owner_conn) == before
    # not even the owner can put a's position on b's account
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        owner_conn.execute("UPDATE positions SET account_id = %s WHERE id = %s", (theirs, position))


def test_delete_is_refused_while_a_position_is_open_then_keeps_the_history(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner
) -> None:
    with _user(db_url, a) as user:
        account = _add(user, _secret())
        position = insert_position(user, a)
        owner_conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (position,))
        before = _everything(owner_conn)
        refused = _outcome(user, "SELECT delete_exchange_account(%s)", account)
        assert _everything(owner_conn) == before
        owner_conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (position,))
        events = owner_conn.execute("SELECT count(*) FROM position_events").fetchone()
        user.execute("SELECT delete_exchange_account(%s)", (account,))
        kept = user.execute("SELECT id, account_id, status FROM positions").fetchall()
    assert refused == f"PW018: exchange account {account} has positions that are not closed"
    assert kept == [(position, None, "failed")]
    assert owner_conn.execute("SELECT count(*) FROM position_events").fetchone() == events
    left = owner_conn.execute(
        "SELECT (SELECT count(*) FROM exchange_accounts), (SELECT count(*) FROM"
        " exchange_account_secrets), (SELECT count(*) FROM exchange_account_secret_inbox)"
    ).fetchone()
    assert left == (0, 0, 0)
    assert _vault_rows(owner_conn, db_shape) == []


def test_deleting_the_user_takes_the_vault_secret_too(
    owner_conn: Conn, db_url: str, db_shape: str
) -> None:
    user_id = uuid.uuid4()
    owner_conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (user_id,))
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, user_id)
        _add(conn, _secret())
    owner_conn.execute("DELETE FROM auth.users WHERE id = %s", (user_id,))
    assert owner_conn.execute("SELECT count(*) FROM exchange_accounts").fetchone() == (0,)
    assert _vault_rows(owner_conn, db_shape) == []


# ---------------------------------------------------------------------------------------
# Quota, lost secrets, risk limits


def test_accounts_per_user_are_limited(db_url: str, owner_conn: Conn, a: Owner) -> None:
    default = owner_conn.execute("SELECT max_exchange_accounts FROM user_limit_defaults")
    assert default.fetchone() == (10,)
    owner_conn.execute(
        "INSERT INTO user_limits (user_id, max_exchange_accounts) VALUES (%s, 2)", (a.user_id,)
    )
    with _user(db_url, a) as user:
        _add(user, _secret(), label="1")
        _add(user, _secret(), label="2")
        before = _everything(owner_conn)
        outcome = _outcome(
            user, "SELECT add_exchange_account('binance', '3', %s, %s)", _key(), _secret()
        )
    assert outcome == f"PW015: quota exceeded: exchange accounts (limit 2) for user {a.user_id}"
    assert _everything(owner_conn) == before


def test_a_secret_lost_before_sealing_is_unambiguous(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner
) -> None:
    """An unclean shutdown empties the unlogged inbox (simulated by TRUNCATE): the account
    says pending with no inbox row, and the worker marks it invalid with a reason."""
    if db_shape != "plain":
        pytest.skip("the inbox is the path without Vault")
    with _user(db_url, a) as user:
        account = _add(user, _secret())
        kept = _add(user, _secret(), label="kept")
    owner_conn.execute("DELETE FROM exchange_account_secret_inbox WHERE account_id = %s",
                       (account,))  # fmt: skip
    lost = owner_conn.execute("SELECT * FROM mark_lost_exchange_secrets()").fetchall()
    again = owner_conn.execute("SELECT * FROM mark_lost_exchange_secrets()").fetchall()
    assert (lost, again) == ([(account,)], [])
    row = _account(owner_conn, account)
    assert (row["status"], row["secret_state"]) == ("invalid", "pending")
    assert "rotate the key again" in row["status_reason"]
    assert _account(owner_conn, kept)["status"] == "active"


def test_sealing_never_overwrites_a_newer_secret(
    db_url: str, owner_conn: Conn, db_shape: str, a: Owner
) -> None:
    if db_shape != "plain":
        pytest.skip("the inbox is the path without Vault")
    with _user(db_url, a) as user:
        account = _add(user, _secret())
        read = owner_conn.execute("SELECT submitted_at FROM exchange_account_secret_inbox")
        submitted = read.fetchone()
        assert submitted is not None
        newer = _secret()
        user.execute("SELECT rotate_exchange_account_key(%s, %s, %s)", (account, _key(), newer))
    stale = owner_conn.execute(
        "SELECT seal_exchange_account_secret(%s, %s, '\\x01', 'k1')", (account, submitted[0])
    ).fetchone()
    assert stale == (False,)
    assert _stored_secret(owner_conn, account) == newer
    assert _account(owner_conn, account)["secret_state"] == "pending"


def test_risk_limits_are_set_by_the_platform_and_read_by_their_user(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner, operator: Conn
) -> None:
    operator.execute(
        "INSERT INTO user_risk_limits (user_id, max_position_notional, max_open_positions,"
        " allowed_symbols, short_selling) VALUES (%s, 1000, 3, '{BTCUSDT,ETHUSDT}', 'off')",
        (a.user_id,),
    )
    operator.execute("UPDATE user_risk_limits SET max_open_notional = 5000.5")
    with _user(db_url, a) as user:
        mine = user.execute(
            "SELECT max_position_notional, max_open_positions, max_open_notional,"
            " allowed_symbols, short_selling FROM user_risk_limits"
        ).fetchall()
        writes = [
            _outcome(user, "UPDATE user_risk_limits SET max_open_positions = 99"),
            _outcome(user, "INSERT INTO user_risk_limits (user_id) VALUES (%s)", a.user_id),
            _outcome(user, "DELETE FROM user_risk_limits"),
        ]
    with _user(db_url, b) as other:
        theirs = other.execute("SELECT count(*) FROM user_risk_limits").fetchone()
    assert mine == [(Decimal(1000), 3, Decimal("5000.5"), ["BTCUSDT", "ETHUSDT"], "off")]
    assert writes == ["42501: permission denied for table user_risk_limits"] * 3
    assert theirs == (0,)
    bad = {
        "symbol": "allowed_symbols = '{btcusdt}'",
        "null symbol": "allowed_symbols = '{BTCUSDT,NULL}'",
        "decimals": "max_position_notional = 0.000000001",
        "zero": "max_open_notional = 0",
        "negative": "max_open_positions = -1",
        "short": "short_selling = 'naked'",
    }
    outcomes = {k: _outcome(operator, f"UPDATE user_risk_limits SET {v}") for k, v in bad.items()}
    assert {v.split(":")[0] for v in outcomes.values()} == {"23514"}, outcomes
    assert _outcome(operator, "UPDATE user_risk_limits SET allowed_symbols = '{}'") == "rows=1"
