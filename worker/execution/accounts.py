"""Users' exchange accounts: one Binance client per account, its secret, its key checks.

* **One client per account**, made on first use from the account's row and its secret, with
  its own clock offset; closed once idle for ``accounts.idle_close_seconds``, or when the
  user rotates its key (a new ``key_version``). Every client of this worker shares one
  :class:`~worker.exchanges.binance_http.RateLimitGate`: Binance limits request weight per
  IP, whatever the account.
* **Secrets** are read only here: from Supabase Vault (``vault.decrypted_secrets``), or
  sealed with ``POSITION_WORKER_SECRETS_KEY`` (:mod:`worker.sealing`). A secret waiting in
  the inbox is sealed by :meth:`AccountRegistry.maintain` (or at once, when a position
  needs it), and the plaintext row deleted in the same transaction.
* **Key checks** (``GET /api/v3/account``) when an account is added, rotated or enabled,
  when this worker first uses it (at start-up, or after its client was closed as idle), and
  again every ``accounts.recheck_invalid_seconds`` for an invalid one. A key Binance refuses
  (-1022, -2014, -2015) marks the account ``invalid`` with the reason, and its user gets a
  critical notification on the notifications stream (``notified_at`` makes that at least
  once). Any call of the account's client that meets such a refusal does the same; an
  invalid account's client then refuses locally, without a request, until the account is
  checked again.
* **New entries** need an ``active`` account whose key passed its check
  (:meth:`AccountRegistry.entry_problem`); positions already open keep their exits and
  protection on a ``disabled`` account, and on an ``invalid`` one as soon as its key works.

Over 300 lines on purpose: the account's life in the worker (secret, client, checks) in one
place.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Protocol

import anyio
import httpx
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.errors import WorkerError
from worker.exchanges.base import (
    CredentialsRejected,
    ExchangeError,
    ExchangeFill,
    OcoRequest,
    OrderRequest,
    OrderState,
    SymbolRules,
)
from worker.exchanges.binance import BinanceClient
from worker.exchanges.binance_http import RateLimitGate
from worker.exchanges.signing import BadKey, Credentials
from worker.sealing import Keyring, SealingError, associated_data
from worker.settings import Settings

Notify = Callable[[Mapping[str, str]], Awaitable[None]]
BATCH: Final = 100  # accounts handled per query in one maintenance pass
RETIRED_GRACE_S: Final = 120.0  # a replaced client outlives any call it may have in flight


class Streams(Protocol):
    """Who follows an account's user data stream (``live_fills.UserStreams``)."""

    def open(self, account_id: uuid.UUID | None, client: BinanceClient) -> None: ...

    def close(self, account_id: uuid.UUID | None) -> None: ...


class AccountUnusable(WorkerError):
    """The account cannot trade a new entry; the message says why and what to do."""


@dataclass(slots=True)
class _Client:
    """A live client of one account, for one key version."""

    account_id: uuid.UUID
    user_id: uuid.UUID
    label: str
    key_version: int
    status: str
    status_reason: str | None
    checked: bool
    client: BinanceClient
    last_used: float = field(default=0.0)


class AccountRegistry:
    """The accounts this worker trades, each through its own client (see the module doc)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        settings: Settings,
        keyring: Keyring,
        notify: Notify,
        log: Any,
        *,
        gate: RateLimitGate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool, self.settings, self.keyring = pool, settings, keyring
        self.notify, self.log = notify, log
        self.gate = gate or RateLimitGate()
        self._transport = transport
        self._clock = clock
        self._clients: dict[uuid.UUID, _Client] = {}
        self._opening: dict[uuid.UUID, anyio.Lock] = {}  # one opening per account at a time
        self._retired: list[tuple[float, BinanceClient]] = []
        self._unreadable: set[uuid.UUID] = set()  # reported: sealed with a key we lack
        self.streams: Streams | None = None  # each open client's user data stream

    # -- what the engine asks --------------------------------------------------------------------

    async def exchange(self, account_id: uuid.UUID) -> AccountExchange:
        """The account's exchange, whatever its status (exits and protection of positions
        already open go on while the exchange accepts the key)."""
        return AccountExchange(self, await self._client(account_id))

    async def entry_problem(self, account_id: uuid.UUID) -> str | None:
        """Why a new entry on this account is refused (None: it is not). A key never
        checked yet is checked now."""
        try:
            entry = await self._client(account_id)
        except AccountUnusable as exc:
            return str(exc)
        if entry.status == "active" and not entry.checked:
            await self._check(entry)
        if entry.status == "disabled":
            return (
                f"exchange account {entry.label!r} is disabled: enable it with"
                " enable_exchange_account(...) or choose another account"
            )
        if entry.status == "invalid":
            return (
                f"exchange account {entry.label!r} is invalid: {entry.status_reason}; fix the"
                " key (rotate_exchange_account_key(...) or enable_exchange_account(...))"
            )
        if not entry.checked:
            return f"exchange account {entry.label!r}: its key could not be checked yet"
        return None

    async def free_balances(self, account_id: uuid.UUID) -> dict[str, Decimal]:
        entry = await self._client(account_id)
        return await AccountExchange(self, entry).free_balances()

    # -- the clients -----------------------------------------------------------------------------

    async def _client(self, account_id: uuid.UUID) -> _Client:
        entry = self._clients.get(account_id)
        if entry is None:
            async with self._opening.setdefault(account_id, anyio.Lock()):
                entry = self._clients.get(account_id)  # opened while this call waited
                if entry is None:
                    entry = await self._open(account_id)
                    self._clients[account_id] = entry
                    if self.streams is not None:
                        self.streams.open(account_id, entry.client)
                    if entry.status == "active":
                        await self._check(entry)  # first use since start-up, rotation, idle
            self._opening.pop(account_id, None)
        entry.last_used = self._clock()
        return entry

    async def _open(self, account_id: uuid.UUID) -> _Client:
        row = await self._row(account_id)
        if row is None:
            raise AccountUnusable(f"exchange account {account_id} does not exist")
        if row["secret_state"] == "pending":
            await self.seal_pending()
            row = await self._row(account_id)
            if row is None or row["secret_state"] == "pending":
                raise AccountUnusable(self._cannot_seal())
        secret = await self._secret(row)
        try:
            credentials = Credentials.of(row["api_key"], secret, row["key_type"])
        except BadKey as exc:
            await self._mark(row["id"], row["key_version"], "invalid", str(exc))
            raise AccountUnusable(f"exchange account {row['label']!r}: {exc}") from None
        b = self.settings.binance
        testnet = row["exchange"] == "binance_testnet"
        base_url = b.testnet_base_url if testnet else b.base_url
        client = BinanceClient(
            credentials,
            base_url=base_url,
            recv_window_ms=b.recv_window_ms,
            timeout_s=b.timeout_seconds,
            gate=self.gate,
            transport=self._transport,
            ws_api_url=b.testnet_ws_api_url if testnet else b.ws_api_url,
        )
        self.log.info("account_client_opened", account_id=str(account_id), exchange=row["exchange"])
        return _Client(
            account_id=row["id"],
            user_id=row["user_id"],
            label=row["label"],
            key_version=row["key_version"],
            status=row["status"],
            status_reason=row["status_reason"],
            checked=row["checked_at"] is not None,
            client=client,
        )

    async def _row(self, account_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("acct_load"), {"account_id": account_id})
            row: dict[str, Any] | None = await cur.fetchone()
            return row

    async def _secret(self, row: Mapping[str, Any]) -> str:
        label = row["label"]
        if row["secret_state"] == "vault":
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    q("acct_secret_vault"), {"vault_secret_id": row["vault_secret_id"]}
                )
                found = await cur.fetchone()
            if found is None or found[0] is None:
                raise AccountUnusable(f"exchange account {label!r}: its secret is not in Vault")
            return str(found[0])
        if row["ciphertext"] is None:
            raise AccountUnusable(f"exchange account {label!r} has no secret: rotate its key")
        try:
            aad = associated_data(str(row["id"]), row["key_version"])
            return self.keyring.open(bytes(row["ciphertext"]), row["key_id"], aad)
        except SealingError as exc:
            self.log.error("account_secret_unreadable", account_id=str(row["id"]), error=str(exc))
            raise AccountUnusable(
                f"exchange account {label!r}: the worker cannot read its secret ({exc});"
                " an operator must fix the worker's secrets key"
            ) from None

    def _cannot_seal(self) -> str:
        if not self.keyring:
            return (
                "the exchange account's secret cannot be stored yet: this worker has no"
                " POSITION_WORKER_SECRETS_KEY (an operator must set it)"
            )
        return "the exchange account's secret is being stored: try again in a moment"

    def _retire(self, account_id: uuid.UUID) -> None:
        """Stop handing out the account's client; close it once calls in flight are over."""
        entry = self._clients.pop(account_id, None)
        if entry is not None:
            self._retired.append((self._clock(), entry.client))
            if self.streams is not None:
                self.streams.close(account_id)

    async def _close_retired(self, *, all_of_them: bool = False) -> None:
        horizon = self._clock() - RETIRED_GRACE_S
        keep = []
        for since, client in self._retired:
            if all_of_them or since < horizon:
                await client.aclose()
            else:
                keep.append((since, client))
        self._retired = keep

    async def aclose(self) -> None:
        for account_id in list(self._clients):
            self._retire(account_id)
        await self._close_retired(all_of_them=True)

    # -- status ----------------------------------------------------------------------------------

    async def _check(self, entry: _Client) -> None:
        """Prove the key with ``GET /api/v3/account``; record the outcome."""
        try:
            await entry.client.free_balances()
        except CredentialsRejected as exc:
            await self.refused(entry, exc)
            return
        except ExchangeError as exc:  # outage, rate limit: check again on the next pass
            self.log.warning(
                "account_check_deferred", account_id=str(entry.account_id), error=str(exc)
            )
            return
        status = await self._mark(entry.account_id, entry.key_version, "active", None)
        entry.status, entry.status_reason, entry.checked = status or entry.status, None, True
        self.log.info("account_checked", account_id=str(entry.account_id), status=entry.status)

    async def refused(self, entry: _Client, exc: CredentialsRejected) -> None:
        """The exchange refused the account's key: the account is invalid until fixed."""
        reason = f"Binance refused the API key ({exc.code}: {exc.msg})"
        status = await self._mark(entry.account_id, entry.key_version, "invalid", reason)
        entry.status, entry.status_reason, entry.checked = status or "invalid", reason, True
        self.log.warning(
            "account_invalid", account_id=str(entry.account_id), code=exc.code, status=status
        )
        await self.notify_invalid()

    async def _mark(
        self, account_id: uuid.UUID, key_version: int, status: str, reason: str | None
    ) -> str | None:
        """Record a check's outcome for that key version; the status now (None: the key was
        rotated meanwhile, and the outcome is moot)."""
        params = {
            "account_id": account_id,
            "key_version": key_version,
            "status": status,
            "reason": reason,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("acct_mark_checked"), params)
            found = await cur.fetchone()
        return None if found is None else str(found[0])

    # -- maintenance -----------------------------------------------------------------------------

    async def maintain(self) -> None:
        """One pass: seal new secrets, note lost ones, check new keys, tell users of invalid
        accounts, follow rotations, close idle clients."""
        await self.seal_pending()
        await self.reseal_stale()
        await self._lost_secrets()
        await self._follow_changes()
        for account_id in await self._ids("acct_to_check", recheck_s=self._recheck_s()):
            try:
                entry = await self._client(account_id)  # an active key is checked on opening
                if entry.status == "invalid" or not entry.checked:
                    await self._check(entry)
            except AccountUnusable as exc:
                self.log.warning("account_unusable", account_id=str(account_id), error=str(exc))
        await self.notify_invalid()
        await self._close_idle()

    def _recheck_s(self) -> float:
        return self.settings.accounts.recheck_invalid_seconds

    async def seal_pending(self) -> int:
        """Seal the secrets waiting in the inbox; the plaintext row goes in the same
        transaction (compare-and-set: a rotation meanwhile is sealed on the next pass)."""
        if not self.keyring:
            return 0
        sealed = 0
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("acct_pending_inbox"), {"limit": BATCH})
            for account_id, plaintext, submitted_at, key_version in await cur.fetchall():
                ciphertext, key_id = self.keyring.seal(
                    plaintext, associated_data(str(account_id), key_version)
                )
                params = {
                    "account_id": account_id,
                    "submitted_at": submitted_at,
                    "ciphertext": ciphertext,
                    "key_id": key_id,
                }
                done = await conn.execute(q("acct_seal"), params)
                row = await done.fetchone()
                sealed += bool(row and row[0])
        if sealed:
            self.log.info("account_secrets_sealed", count=sealed)
        return sealed

    async def reseal_stale(self) -> int:
        """Seal again, with the newest key, what an older key of the keyring sealed."""
        if not self.keyring:
            return 0
        newest, resealed = self.keyring.ids[0], 0
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("acct_stale_seals"), {"newest": newest, "limit": BATCH})
            for account_id, old, key_id, key_version in await cur.fetchall():
                aad = associated_data(str(account_id), key_version)
                try:
                    plaintext = self.keyring.open(bytes(old), key_id, aad)
                except SealingError as exc:  # a key the keyring lost: reported once, left as is
                    if account_id not in self._unreadable:
                        self._unreadable.add(account_id)
                        self.log.error(
                            "account_secret_unreadable", account_id=str(account_id), error=str(exc)
                        )
                    continue
                ciphertext, new_id = self.keyring.seal(plaintext, aad)
                params = {"account_id": account_id, "ciphertext": ciphertext, "key_id": new_id,
                          "old": old}  # fmt: skip
                done = await conn.execute(q("acct_reseal"), params)
                resealed += done.rowcount
        if resealed:
            self.log.info("account_secrets_resealed", count=resealed, key_id=newest)
        return resealed

    async def _lost_secrets(self) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("acct_mark_lost"))
            for (account_id,) in await cur.fetchall():
                self.log.warning("account_secret_lost", account_id=str(account_id))

    async def _ids(self, query: str, **params: Any) -> list[uuid.UUID]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(q(query), {"limit": BATCH, **params})
            return [row[0] for row in await cur.fetchall()]

    async def _follow_changes(self) -> None:
        """Retire clients whose key was rotated (or account deleted); take up what users
        changed in the database (disabled, enabled: to be checked again). Only the clients
        held when the rows were read are judged: one opened during the read is not in them,
        and is not a deleted account."""
        held = dict(self._clients)
        if not held:
            return
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("acct_versions"), {"ids": list(held)})
            rows = {row[0]: row[1:] for row in await cur.fetchall()}
        for account_id, entry in held.items():
            if self._clients.get(account_id) is not entry:
                continue  # retired or opened afresh during the read
            found = rows.get(account_id)
            if found is None or found[0] != entry.key_version:
                self._retire(account_id)
            else:
                entry.status, entry.checked = found[1], found[2] is not None

    async def notify_invalid(self) -> None:
        """Tell each user whose account turned invalid (at least once)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("acct_unnotified"), {"limit": BATCH})
            rows = await cur.fetchall()
        for row in rows:
            await self.notify(_invalid_notification(row))
            async with self.pool.connection() as conn:
                await conn.execute(q("acct_mark_notified"), {"account_id": row["id"]})

    async def _close_idle(self) -> None:
        horizon = self._clock() - self.settings.accounts.idle_close_seconds
        for account_id, entry in list(self._clients.items()):
            if entry.last_used < horizon:
                self._retire(account_id)
                self.log.info("account_client_closed", account_id=str(account_id))
        await self._close_retired()

    @property
    def open_clients(self) -> int:
        return len(self._clients)


def _invalid_notification(row: Mapping[str, Any]) -> dict[str, str]:
    """The notifications-stream entry telling a user their account's key was refused."""
    when = row["checked_at"] or datetime.now(UTC)
    return {
        "type": "account.invalid",
        "account_id": str(row["id"]),
        "user_id": str(row["user_id"]),
        "severity": "critical",
        "title": "Exchange account needs attention",
        "message": (
            f"{row['label']} ({row['exchange']}): {row['status_reason']}. New positions on it"
            " fail until the key is fixed; open positions are exited and protected as soon as"
            " the exchange accepts the key again."
        ),
        "occurred_at": when.isoformat(),
    }


class AccountExchange:
    """The Exchange port on one account's client: a refused key marks the account invalid;
    an invalid account refuses locally (no request) until its key is checked again."""

    def __init__(self, registry: AccountRegistry, entry: _Client) -> None:
        self._registry, self._entry = registry, entry

    def __repr__(self) -> str:
        return f"AccountExchange({self._entry.account_id})"

    @property
    def account_id(self) -> uuid.UUID:
        return self._entry.account_id

    async def _call(self, call: Callable[[BinanceClient], Awaitable[Any]]) -> Any:
        entry = self._entry
        if entry.status == "invalid" and entry.checked:
            raise CredentialsRejected(None, entry.status_reason or "the account is invalid")
        try:
            return await call(entry.client)
        except CredentialsRejected as exc:
            await self._registry.refused(entry, exc)
            raise

    async def place_order(self, req: OrderRequest) -> OrderState:
        result: OrderState = await self._call(lambda c: c.place_order(req))
        return result

    async def place_oco(self, req: OcoRequest) -> tuple[OrderState, ...]:
        result: tuple[OrderState, ...] = await self._call(lambda c: c.place_oco(req))
        return result

    async def get_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        result: OrderState | None = await self._call(lambda c: c.get_order(symbol, client_order_id))
        return result

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        result: OrderState = await self._call(lambda c: c.cancel_order(symbol, client_order_id))
        return result

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        result: list[OrderState] = await self._call(lambda c: c.open_orders(symbol))
        return result

    async def get_fills(
        self, symbol: str, exchange_order_id: str, *, after: str | None = None
    ) -> list[ExchangeFill]:
        result: list[ExchangeFill] = await self._call(
            lambda c: c.get_fills(symbol, exchange_order_id, after=after)
        )
        return result

    async def symbol_rules(self, symbol: str) -> SymbolRules:
        return await self._entry.client.symbol_rules(symbol)  # public: no key involved

    async def price(self, symbol: str) -> Decimal:
        return await self._entry.client.price(symbol)

    async def free_balances(self) -> dict[str, Decimal]:
        result: dict[str, Decimal] = await self._call(lambda c: c.free_balances())
        return result
