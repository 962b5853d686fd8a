"""Which exchange a position trades on: the paper exchange, the user's own exchange account,
or, where a single-tenant deployment opts in, the operator's account (the environment's
keys) for live positions that name no account."""

from __future__ import annotations

import uuid
from typing import Protocol, runtime_checkable

from worker.errors import WorkerError
from worker.exchanges.base import Exchange
from worker.execution.accounts import AccountRegistry
from worker.execution.rows import Position

NO_ACCOUNT = (
    "no exchange account: connect one with add_exchange_account(...) (it becomes your"
    " default), or trade on paper (is_paper_trade = true)"
)


@runtime_checkable
class PaperAccounts(Protocol):
    """A paper exchange that keeps balances per account (``PaperExchange``)."""

    def for_account(self, account: str) -> Exchange: ...


class NotConfigured(WorkerError):
    """The position needs an exchange this worker has not been given."""


class ExchangeRouter:
    """``paper``: the paper exchange; a position trades on its user's paper account (the
    user id) where it keeps accounts. ``operator``: the operator account's exchange, for live
    positions with no account (None: such positions are refused). ``accounts``: users'
    accounts (None: this worker trades no user account)."""

    def __init__(
        self,
        paper: Exchange | None,
        operator: Exchange | None = None,
        accounts: AccountRegistry | None = None,
    ) -> None:
        self.paper, self.operator, self.accounts = paper, operator, accounts

    @property
    def trades_live(self) -> bool:
        """Whether any live exchange is configured (exchange-side protection to keep)."""
        return self.operator is not None or self.accounts is not None

    async def for_position(self, position: Position) -> Exchange:
        """The exchange of ``position``: its user's paper account, or its live account."""
        if position.is_paper_trade:
            if self.paper is None:
                raise NotConfigured("paper trading is not configured in this worker")
            if isinstance(self.paper, PaperAccounts):
                return self.paper.for_account(str(position.user_id))
            return self.paper
        return await self.for_account(position.account_id)

    async def for_account(self, account_id: uuid.UUID | None) -> Exchange:
        """The exchange of live account ``account_id`` (None: the operator's)."""
        if account_id is None:
            if self.operator is None:
                raise NotConfigured(NO_ACCOUNT)
            return self.operator
        if self.accounts is None:
            raise NotConfigured("this worker does not trade users' exchange accounts")
        return await self.accounts.exchange(account_id)

    async def entry_problem(self, position: Position) -> str | None:
        """Why a new entry of ``position`` cannot go to its exchange (None: it can)."""
        if position.is_paper_trade or position.account_id is None:
            try:
                await self.for_position(position)
            except NotConfigured as exc:
                return str(exc)
            return None
        if self.accounts is None:
            return "this worker does not trade users' exchange accounts"
        return await self.accounts.entry_problem(position.account_id)
