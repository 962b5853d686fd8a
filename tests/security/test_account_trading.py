"""Each user trades their own exchange account: two users, two accounts on the fake Binance.

On both database shapes (tests/security/conftest.py): on the Supabase shape the secrets go
to Vault, on the plain one through the inbox, sealed by the worker with its key. The users
add their accounts as they would over PostgREST (their JWT, the SQL functions); the worker
runs with its own account registry, as ``position-worker run`` builds it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest
import redis.asyncio as aioredis
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.execution_support import call_off_loop, exec_settings, position, wait_status
from tests.pipeline_support import eventually, stream_entries
from tests.support import Owner, act_as, insert_position, seed_owner, waiting_on_a_lock
from worker.app import App
from worker.execution.accounts import AccountRegistry
from worker.execution.routing import ExchangeRouter
from worker.sealing import Keyring, new_key
from worker.settings import AccountSettings, BinanceSettings, Settings
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio

NOTIFICATIONS = "positions:notifications"


def add_account(
    db_url: str, user: uuid.UUID, label: str, key: str, secret: str, kind: str
) -> uuid.UUID:
    """The user adds an account with their own JWT, as over PostgREST."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, user)
        row = conn.execute(
            "SELECT add_exchange_account('binance', %s, %s, %s, %s)", (label, key, secret, kind)
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def as_user(db_url: str, user: uuid.UUID, sql: str, *args: Any) -> Any:
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, user)
        row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


def new_user(db_url: str) -> Owner:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return seed_owner(conn)


def live_position(db_url: str, owner: Owner, **columns: Any) -> uuid.UUID:
    """A live position the user inserts with their JWT (no account named: the default)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, owner.user_id)
        return insert_position(conn, owner, is_paper_trade=False, **columns)


def account_row(db_url: str, account_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT * FROM exchange_accounts WHERE id = %s", (account_id,)
        ).fetchone()
    assert row is not None
    return row


def settings(db_url: str, redis_url: str, fake: FakeBinance, **risk: Any) -> Settings:
    base = exec_settings(db_url, redis_url)
    return replace(
        base,
        binance=BinanceSettings(
            base_url=fake.base_url,
            testnet_base_url=fake.base_url,
            ws_api_url=fake.ws_api_url,  # each account's user data stream
            testnet_ws_api_url=fake.ws_api_url,
        ),
        accounts=AccountSettings(check_interval=0.1, recheck_invalid_seconds=0.5),
        risk=replace(base.risk, **risk),
    )


@asynccontextmanager
async def worker(s: Settings) -> AsyncIterator[App]:
    """A worker trading users' accounts only (no operator account, no paper)."""
    log = structlog.get_logger()
    client = aioredis.Redis.from_url(s.redis.url, decode_responses=True)

    async def notify(fields: Any) -> None:
        await client.xadd(NOTIFICATIONS, dict(fields))

    async with AsyncConnectionPool(s.database.url, open=False) as pool:
        await pool.open()
        keyring = Keyring.parse(KEY)
        registry = AccountRegistry(pool, s, keyring, notify, log)
        try:
            app = App(s, handle_signals=False, router=ExchangeRouter(None, accounts=registry))
            async with app.serving():
                yield app
        finally:
            await registry.aclose()
            await client.aclose()


KEY = new_key()


def fake_orders(fake: FakeBinance, name: str) -> set[str]:
    return {str(o["clientOrderId"]) for o in fake.account(name).orders()}


async def test_each_users_orders_land_only_in_their_own_account(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_price("BTCUSDT", "100")
    alice_acct = fake.add_account("alice", key_type="ed25519")
    bob_acct = fake.add_account("bob", key_type="hmac")
    alice, bob = new_user(db_url), new_user(db_url)
    assert alice_acct.private_key_pem is not None and bob_acct.api_secret is not None
    a_id = add_account(
        db_url, alice.user_id, "main", alice_acct.api_key, alice_acct.private_key_pem, "ed25519"
    )
    b_id = add_account(db_url, bob.user_id, "main", bob_acct.api_key, bob_acct.api_secret, "hmac")
    s = settings(db_url, redis_url, fake)
    async with worker(s):
        pa = live_position(db_url, alice, quantity=Decimal("0.1"), stop_loss_price=Decimal("90"))
        pb = live_position(db_url, bob, quantity=Decimal("0.2"))
        await wait_status(db_url, pa, "open", "monitoring")
        await wait_status(db_url, pb, "open", "monitoring")
    assert position(db_url, pa)["account_id"] == a_id  # the user's default, filled on insert
    assert position(db_url, pb)["account_id"] == b_id
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT client_order_id, user_id FROM orders WHERE position_id IN (%s, %s)", (pa, pb)
        ).fetchall()
    mine = {str(cid) for cid, uid in rows if uid == alice.user_id}
    theirs = {str(cid) for cid, uid in rows if uid == bob.user_id}
    assert mine and theirs
    assert fake_orders(fake, "alice") == mine  # alice's entry and stop, and nothing of bob's
    assert fake_orders(fake, "bob") == theirs
    assert not fake.account().orders()  # the fake's default account (nobody's) saw nothing
    for name, acct in (("alice", a_id), ("bob", b_id)):
        row = account_row(db_url, acct)
        assert (row["status"], row["checked_at"] is not None) == ("active", True), name


async def test_a_refused_key_fails_new_entries_notifies_and_exits_once_fixed(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_price("BTCUSDT", "100")
    acct = fake.add_account("carol", key_type="hmac")
    carol = new_user(db_url)
    assert acct.api_secret is not None
    account_id = add_account(db_url, carol.user_id, "main", acct.api_key, acct.api_secret, "hmac")
    s = settings(db_url, redis_url, fake)
    async with worker(s):
        held = live_position(db_url, carol, quantity=Decimal("0.1"))
        await wait_status(db_url, held, "open", "monitoring")
        fake.disable_key(acct.api_key)  # revoked on Binance's side
        refused = live_position(db_url, carol, quantity=Decimal("0.1"))
        await wait_status(db_url, refused, "failed")
        reason = position(db_url, refused)["failure_reason"]
        assert "-2015" in reason and "key" in reason
        with psycopg.connect(db_url) as conn:
            statuses = conn.execute(
                "SELECT status FROM orders WHERE position_id = %s", (refused,)
            ).fetchall()
        assert all(s != "rejected" for (s,) in statuses)  # never an order rejection
        row = account_row(db_url, account_id)
        assert row["status"] == "invalid" and "-2015" in row["status_reason"]

        def told() -> list[dict[str, str]]:
            return [
                f
                for f in stream_entries(redis_url, NOTIFICATIONS)
                if f.get("type") == "account.invalid" and f.get("user_id") == str(carol.user_id)
            ]

        notes = await eventually(told, timeout=10)
        assert notes[0]["severity"] == "critical" and acct.api_secret not in str(notes)

        # An exit of the open position waits for the key...
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", held)
        await wait_status(db_url, held, "closing")
        # ...which the user fixes (here: re-enabled on Binance, then enabled again).
        fake.enable_key(acct.api_key)
        as_user(db_url, carol.user_id, "SELECT enable_exchange_account(%s)", account_id)
        await wait_status(db_url, held, "closed", timeout=30)
    assert account_row(db_url, account_id)["status"] == "active"


async def test_rotating_a_key_mid_position_keeps_it_managed(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_price("BTCUSDT", "100")
    old = fake.add_account("dave", key_type="hmac")
    dave = new_user(db_url)
    assert old.api_secret is not None
    account_id = add_account(db_url, dave.user_id, "main", old.api_key, old.api_secret, "hmac")
    s = settings(db_url, redis_url, fake)
    async with worker(s):
        pid = live_position(db_url, dave, quantity=Decimal("0.1"), stop_loss_price=Decimal("90"))
        await wait_status(db_url, pid, "open", "monitoring")
        new = fake.add_key("dave", key_type="ed25519")  # a second key of the same account
        assert new.private_key_pem is not None
        as_user(
            db_url,
            dave.user_id,
            "SELECT rotate_exchange_account_key(%s, %s, %s, 'ed25519')",
            account_id,
            new.api_key,
            new.private_key_pem,
        )
        fake.disable_key(old.api_key)  # the old key is deleted on Binance
        await eventually(lambda: account_row(db_url, account_id)["checked_at"], timeout=10)
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed", timeout=30)
    row = account_row(db_url, account_id)
    assert (row["status"], row["key_version"], row["key_type"]) == ("active", 2, "ed25519")
    exits = [
        r
        for r in fake.requests_to("POST", "/api/v3/order")
        if r.params.get("side") == "SELL" and r.params.get("type") == "MARKET"
    ]
    assert exits and {r.api_key for r in exits} == {new.api_key}  # signed with the new key
    sold = [
        o for o in fake.account("dave").orders() if o["type"] == "MARKET" and o["side"] == "SELL"
    ]
    assert sold and sold[0]["status"] == "FILLED"


@pytest.mark.parametrize(
    ("limits", "before", "columns", "reason"),
    [
        ({"max_position_notional": Decimal("50")}, False, {}, "above the maximum of 50 per"),
        ({"max_open_positions": 1}, True, {}, "you have 1 positions open, the maximum is 1"),
        ({"max_open_notional": Decimal("150")}, True, {}, "your open notional would be 200"),
        ({"allowed_symbols": ("ETHUSDT",)}, False, {}, "BTCUSDT is not among the symbols"),
        ({"short_selling": "off"}, False, {"side": "short"}, "short positions are off"),
        ({"short_selling": "holdings"}, False, {"side": "short"}, "it holds 0 free, the"),
    ],
)
async def test_every_risk_limit_refuses_with_its_reason_and_sends_nothing(
    db_url: str,
    redis_url: str,
    fake: FakeBinance,
    limits: dict[str, Any],
    before: bool,
    columns: dict[str, Any],
    reason: str,
) -> None:
    fake.set_price("BTCUSDT", "100")
    acct = fake.add_account("erin", key_type="hmac")
    acct.set_balances({"USDT": "1000000", "BTC": "0"})
    erin = new_user(db_url)
    assert acct.api_secret is not None
    add_account(db_url, erin.user_id, "main", acct.api_key, acct.api_secret, "hmac")
    s = settings(db_url, redis_url, fake, **limits)
    async with worker(s):
        if before:  # a position within the limits first: 1 BTC at 100, 100 USDT
            first = live_position(db_url, erin, quantity=Decimal("1"))
            await wait_status(db_url, first, "open", "monitoring")
        sent = len(acct.orders())
        refused = live_position(db_url, erin, quantity=Decimal("1"), **columns)
        await wait_status(db_url, refused, "failed")
        assert reason in position(db_url, refused)["failure_reason"]
        assert len(acct.orders()) == sent  # nothing sent for the refused one


async def test_a_rotated_secrets_key_reseals_every_secret(
    db_url: str, redis_url: str, fake: FakeBinance, db_shape: str
) -> None:
    if db_shape == "supabase":
        pytest.skip("Vault holds the secrets on this shape: nothing is sealed by the worker")
    acct = fake.add_account("frank", key_type="rsa")
    frank = new_user(db_url)
    assert acct.private_key_pem is not None
    account_id = add_account(
        db_url, frank.user_id, "main", acct.api_key, acct.private_key_pem, "rsa"
    )
    s = settings(db_url, redis_url, fake)
    old, new = new_key(), new_key()

    async def registry_with(keys: str) -> AccountRegistry:
        pool = AsyncConnectionPool(s.database.url, open=False)
        await pool.open()

        async def notify(fields: Any) -> None:
            return None

        return AccountRegistry(pool, s, Keyring.parse(keys), notify, structlog.get_logger())

    def sealed_with() -> str:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT key_id FROM exchange_account_secrets WHERE account_id = %s", (account_id,)
            ).fetchone()
        return str(row[0]) if row else ""

    first = await registry_with(old)
    assert await first.seal_pending() == 1
    assert sealed_with() == Keyring.parse(old).ids[0]
    rotating = await registry_with(f"{new},{old}")
    assert await rotating.reseal_stale() == 1
    assert sealed_with() == Keyring.parse(new).ids[0]
    only_new = await registry_with(new)  # the old key is gone from the worker's environment
    balances = await only_new.free_balances(account_id)
    assert isinstance(balances, dict)
    for registry in (first, rotating, only_new):
        await registry.aclose()
        await registry.pool.close()


async def test_a_client_opened_while_its_pass_reads_the_key_versions_is_kept(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """The maintenance pass reads the key versions of the clients it holds. A client opened
    during that read (an entry's first use of its account) is not in the answer, and must
    not be taken for a deleted account: retiring it closes its user data stream, and that
    account's fills would then wait for the reconcile pass."""
    ids = []
    for name in ("erin", "gus"):
        acct = fake.add_account(name, key_type="ed25519")
        user = new_user(db_url)
        assert acct.private_key_pem is not None
        ids.append(
            add_account(db_url, user.user_id, "main", acct.api_key, acct.private_key_pem, "ed25519")
        )
    s = settings(db_url, redis_url, fake)

    async def notify(fields: Any) -> None:
        return None

    async with AsyncConnectionPool(s.database.url, open=False) as pool:
        await pool.open()
        registry = AccountRegistry(pool, s, Keyring.parse(KEY), notify, structlog.get_logger())
        await registry.free_balances(ids[0])  # the first account's client is held
        opened = await registry._open(ids[1])  # the second's, about to be handed out
        with psycopg.connect(db_url) as blocker:
            blocker.execute("LOCK TABLE exchange_accounts IN ACCESS EXCLUSIVE MODE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(registry._follow_changes)  # maintain()'s step that reads them
                await eventually(lambda: waiting_on_a_lock(db_url, READ_VERSIONS), 10)
                registry._clients[ids[1]] = opened  # as _client() does, meanwhile
                blocker.commit()
        assert registry.open_clients == 2
        await registry.aclose()


READ_VERSIONS = "checked_at FROM exchange_accounts WHERE"  # worker/db/accounts.sql: acct_versions
