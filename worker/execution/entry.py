"""What happens when a position opens: the new position (``created``) is checked (symbol,
exchange filters, stop-loss / take-profit on the right side of the price) and sized; a
refusal is ``created -> failed`` with the reason and nothing is sent. Otherwise the entry
order is recorded and the position moves to ``submitting``, in one transaction; the order
is then sent and driven like any other (``orders.py``)."""

from __future__ import annotations

from decimal import Decimal

from worker.exchanges.base import OrderRejected
from worker.exchanges.filters import check_order, round_quantity
from worker.execution.context import Context
from worker.execution.orders import new_order
from worker.execution.routing import NotConfigured
from worker.execution.rows import Conn, Position
from worker.execution.transitions import set_position_status


class Entry:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def start(self, conn: Conn, position: Position) -> Position:
        """Validate a ``created`` position and record its entry order (or refuse it)."""
        problem, quantity = await self._check(position)
        if problem is not None:
            async with conn.transaction():
                position = await set_position_status(conn, position, "failed", reason=problem)
            self.ctx.log.warning("entry_refused", position_id=str(position.id), reason=problem)
            return position
        async with conn.transaction():
            await new_order(
                conn,
                position,
                "entry",
                position.entry_side,
                "limit" if position.limit_price else "market",
                quantity,
                quote=position.requested_quote,
                price=position.limit_price,
            )
            position = await set_position_status(conn, position, "submitting")
        return position

    async def _check(self, position: Position) -> tuple[str | None, Decimal]:
        """Why the entry is refused (None: it is not), and the quantity to send."""
        try:
            exchange = self.ctx.router.for_position(position)
            rules = await exchange.symbol_rules(position.symbol)
            price = position.limit_price or await exchange.price(position.symbol)
        except NotConfigured as exc:
            return str(exc), Decimal(0)
        except OrderRejected as exc:
            return f"{position.symbol}: {exc}", Decimal(0)
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
            return problem, Decimal(0)
        wanted = position.requested_quantity
        if wanted is None:
            assert quote is not None  # entry_problem: exactly one of the two is given
            wanted = quote / price
        qty = round_quantity(rules, wanted)
        try:
            check_order(rules, qty, price, quote_quantity=quote)
        except OrderRejected as exc:
            return str(exc), Decimal(0)
        return None, qty


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
