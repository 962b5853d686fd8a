"""What happens when a position opens: the new position (``created``) is checked (its
exchange account usable, symbol, exchange filters, stop-loss / take-profit on the right side
of the price, the user's risk limits) and sized; a refusal is ``created -> failed`` with the
reason and nothing is sent. Otherwise the entry order is recorded and the position moves to
``submitting``, in one transaction; the order is then sent and driven like any other
(``orders.py``).

The risk limits are checked inside that transaction, under a per-user advisory lock, so two
entries of one user (on any worker) never both take the last place under a limit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from psycopg.rows import dict_row

from worker.db.queries import q
from worker.exchanges.base import Exchange, ExchangeError, OrderRejected, SymbolRules
from worker.exchanges.filters import check_order, round_quantity
from worker.execution.context import Context
from worker.execution.orders import new_order
from worker.execution.routing import NotConfigured
from worker.execution.rows import Conn, Position
from worker.execution.transitions import set_position_status
from worker.risk import Exposure, RiskLimits, risk_problem


@runtime_checkable
class HasBalances(Protocol):
    """An exchange that can say what the account holds (live Binance; paper cannot)."""

    async def free_balances(self) -> dict[str, Decimal]: ...


class Checked:
    """A position that passed the checks before the transaction: what the risk check needs."""

    def __init__(self, exchange: Exchange, rules: SymbolRules, price: Decimal, qty: Decimal):
        self.exchange, self.rules, self.price, self.quantity = exchange, rules, price, qty


class Entry:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def start(self, conn: Conn, position: Position) -> Position:
        """Validate a ``created`` position and record its entry order (or refuse it)."""
        problem, checked = await self.check(position)
        async with conn.transaction():
            if checked is not None:
                problem = await self._risk(conn, position, checked)
            if problem is not None or checked is None:
                position = await set_position_status(conn, position, "failed", reason=problem)
            else:
                await new_order(
                    conn,
                    position,
                    "entry",
                    position.entry_side,
                    "limit" if position.limit_price else "market",
                    checked.quantity,
                    quote=position.requested_quote,
                    price=position.limit_price,
                )
                position = await set_position_status(conn, position, "submitting")
        if problem is not None:
            self.ctx.log.warning("entry_refused", position_id=str(position.id), reason=problem)
        return position

    async def check(
        self, position: Position, prices: dict[str, Decimal] | None = None
    ) -> tuple[str | None, Checked | None]:
        """Why the entry is refused (None: it is not), and what the risk check needs.
        ``prices``: the market prices read so far, by symbol (a batch of entries reads each
        symbol's once; the price only sizes and checks the entry)."""
        problem = await self.ctx.router.entry_problem(position)
        if problem is not None:
            return problem, None
        try:
            exchange = await self.ctx.router.for_position(position)
            rules = await exchange.symbol_rules(position.symbol)
            price = position.limit_price or await read_price(exchange, position.symbol, prices)
        except NotConfigured as exc:
            return str(exc), None
        except OrderRejected as exc:
            return f"{position.symbol}: {exc}", None
        quote = position.requested_quote
        problem = entry_problem(
            position.side,
            price,
            quantity=position.requested_quantity,
            quote=quote,
            stop_loss=position.stop_loss_price,
            take_profit=position.take_profit_price,
        )
        if problem is not None:
            return problem, None
        wanted = position.requested_quantity
        if wanted is None:
            assert quote is not None  # entry_problem: exactly one of the two is given
            wanted = quote / price
        qty = round_quantity(rules, wanted)
        try:
            check_order(rules, qty, price, quote_quantity=quote)
        except OrderRejected as exc:
            return str(exc), None
        return None, Checked(exchange, rules, price, qty)

    async def _risk(self, conn: Conn, position: Position, checked: Checked) -> str | None:
        """The user's risk limits (``worker/risk.py``), under the user's lock until commit."""
        user = {"user_id": position.user_id}
        await conn.execute(q("risk_lock_user"), user)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("risk_override"), user)
            limits = RiskLimits.of(self.ctx.risk, await cur.fetchone())
            others: list[dict[str, Any]] = []
            if exposure_rows(limits):
                await cur.execute(
                    q("risk_exposure"),
                    {
                        **user,
                        "position_id": position.id,
                        "live": not position.is_paper_trade,
                        "limit": exposure_rows(limits),
                    },
                )
                others = await cur.fetchall()
        return await self.judge(position, checked, limits, others)

    async def judge(
        self,
        position: Position,
        checked: Checked,
        limits: RiskLimits,
        others: list[dict[str, Any]],
        prices: dict[str, Decimal] | None = None,
    ) -> str | None:
        """Why the user's risk limits refuse the entry, given ``others`` (their positions
        not final, this one apart: risk_exposure's rows); None: they do not."""
        price = checked.price
        notional = position.requested_quote or checked.quantity * price
        try:
            exposure = Exposure(len(others), await self._notional(others, checked.exchange, prices))
            base_free = await self._base_free(position, checked, limits)
        except ExchangeError as exc:
            return f"risk limits could not be checked: {exc}"
        return risk_problem(
            limits,
            symbol=position.symbol,
            side=position.side,
            quantity=checked.quantity,
            notional=notional,
            quote_asset=checked.rules.quote_asset,
            base_asset=checked.rules.base_asset,
            exposure=exposure,
            base_free=base_free,
        )

    async def _notional(
        self,
        rows: list[dict[str, Any]],
        exchange: Exchange,
        prices: dict[str, Decimal] | None = None,
    ) -> Decimal:
        """What the user's other open positions are worth: filled value, else requested."""
        total, known = Decimal(0), prices if prices is not None else {}
        for row in rows:
            value = row["entry_value"] or row["requested_quote"]
            if value is None and row["requested_quantity"] is not None:
                price = row["limit_price"] or await read_price(exchange, row["symbol"], known)
                value = row["requested_quantity"] * price
            total += value or 0
        return total

    async def _base_free(
        self, position: Position, checked: Checked, limits: RiskLimits
    ) -> Decimal | None:
        """For a live short: the account's free balance of the base asset."""
        if position.side != "short" or position.is_paper_trade:
            return None
        if limits.short_selling != "holdings":
            return None
        if not isinstance(checked.exchange, HasBalances):
            return None
        balances = await checked.exchange.free_balances()
        return balances.get(checked.rules.base_asset, Decimal(0))


def exposure_rows(limits: RiskLimits) -> int:
    """How many of a user's other positions the exposure reads: enough to tell whether
    ``max_open_positions`` is reached, bounded for a user with very many; none when neither
    that nor ``max_open_notional`` is set (nothing would look at them)."""
    if not (limits.max_open_positions or limits.max_open_notional):
        return 0
    return max(limits.max_open_positions, 1000) + 1


async def read_price(exchange: Exchange, symbol: str, prices: dict[str, Decimal] | None) -> Decimal:
    """``symbol``'s market price, read once per ``prices`` (None: read now)."""
    if prices is None:
        return await exchange.price(symbol)
    if symbol not in prices:
        prices[symbol] = await exchange.price(symbol)
    return prices[symbol]


def entry_problem(
    side: str,
    price: Decimal,
    *,
    quantity: Decimal | None,
    quote: Decimal | None,
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
) -> str | None:
    """Why an entry must be refused before it reaches the exchange, or None. Pure."""
    if (quantity is None) == (quote is None):
        return "give exactly one of requested_quantity or requested_quote"
    below, above = ("stop-loss", "take-profit") if side == "long" else ("take-profit", "stop-loss")
    low = stop_loss if side == "long" else take_profit
    high = take_profit if side == "long" else stop_loss
    if low is not None and low >= price:
        return f"{below} {low} is not below the current price {price} for a {side}"
    if high is not None and high <= price:
        return f"{above} {high} is not above the current price {price} for a {side}"
    return None
