"""Order lists (OCO), cancel-replace and amend-keep-priority routes (rest-api.md)."""

from __future__ import annotations

from typing import Any

from worker.testing.fake_binance.orders import ApiError, Order
from worker.testing.fake_binance.routes import Call, _cancel, _existing, new_order


def list_json(call: Call, list_id: int, legs: list[Order], list_client_id: str) -> Any:
    """rest-api.md "New Order list - OCO" / "Query Order list" shape."""
    done = all(not o.is_open for o in legs)
    return {
        "orderListId": list_id,
        "contingencyType": "OCO",
        "listStatusType": "ALL_DONE" if done else "EXEC_STARTED",
        "listOrderStatus": "ALL_DONE" if done else "EXECUTING",
        "listClientOrderId": list_client_id,
        "transactionTime": call.fake.now_ms(),
        "symbol": legs[0].symbol,
        "orders": [
            {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_id} for o in legs
        ],
    }


def new_oco(call: Call) -> Any:
    list_id, legs = call.me.book.place_oco(call.params)
    for leg in legs:
        leg.hidden_lookups = call.fault.lookups if call.fault else 0
    list_client_id = call.params.get("listClientOrderId") or f"list{list_id}"
    call.me.book.list_client_ids[list_id] = list_client_id
    body = list_json(call, list_id, legs, list_client_id)
    body["orderReports"] = [
        o.ack_json() if call.params.get("newOrderRespType") == "ACK" else o.report_json()
        for o in legs
    ]
    return body


def _list(call: Call) -> tuple[int, list[Order]]:
    book = call.me.book
    wanted = call.params.get("orderListId")
    client = call.params.get("listClientOrderId") or call.params.get("origClientOrderId")
    if not wanted and not client:
        raise ApiError(
            400, -1102,
            "Param 'origClientOrderId' or 'orderListId' must be sent, but both were empty/null!",
        )  # fmt: skip
    for list_id, list_client_id in book.list_client_ids.items():
        if str(list_id) == wanted or list_client_id == client:
            return list_id, [o for o in book.orders if o.order_list_id == list_id]
    raise ApiError(
        400, -2011 if call.params.get("_cancel") else -2013, "Order list does not exist."
    )


def query_list(call: Call) -> Any:
    list_id, legs = _list(call)
    return list_json(call, list_id, legs, call.me.book.list_client_ids[list_id])


def cancel_list(call: Call) -> Any:
    """rest-api.md "Cancel Order list": both legs end CANCELED."""
    call.me.book.spec(call.params.get("symbol"))
    list_id, legs = _list(Call(call.fake, call.account, {**call.params, "_cancel": "1"}, None))
    live = [o for o in legs if o.is_open]
    if not live:
        raise ApiError(400, -2011, "Unknown order sent.")
    reports = [_cancel(call, live[0], None)]
    body = list_json(call, list_id, legs, call.me.book.list_client_ids[list_id])
    body.update(listStatusType="ALL_DONE", listOrderStatus="ALL_DONE")
    body["orderReports"] = reports + [o.cancel_json(o.client_id, o.update_ms) for o in live[1:]]
    return body


def open_lists(call: Call) -> Any:
    book = call.me.book
    lists = {i: [o for o in book.orders if o.order_list_id == i] for i in book.list_client_ids}
    return [
        list_json(call, i, legs, book.list_client_ids[i])
        for i, legs in lists.items()
        if any(o.is_open for o in legs)
    ]


def cancel_replace(call: Call) -> Any:
    """rest-api.md "Cancel an Existing Order and Send a New Order": ``cancelReplaceMode``
    STOP_ON_FAILURE (no new order when the cancel fails) or ALLOW_FAILURE; -2022 when
    nothing worked (HTTP 400), -2021 when one half did (HTTP 409, "HTTP Return Codes")."""
    p = call.params
    mode = p.get("cancelReplaceMode")
    if mode not in ("STOP_ON_FAILURE", "ALLOW_FAILURE"):
        raise ApiError(
            400, -1102,
            "Mandatory parameter 'cancelReplaceMode' was not sent, was empty/null, or malformed.",
        )  # fmt: skip
    call.me.book.spec(p.get("symbol"))
    if not call.fake.market.symbols[p["symbol"]].get("cancelReplaceAllowed", True):
        raise ApiError(400, -2010, "Order cancel-replace is not supported for this symbol.")
    cancel_params = {"symbol": p["symbol"], "orderId": p.get("cancelOrderId", ""),
                     "origClientOrderId": p.get("cancelOrigClientOrderId", "")}  # fmt: skip
    cancel: Any
    order = call.me.book.find(cancel_params, lookup=False)
    if order is not None and order.is_open:
        cancel, cancelled = _cancel(call, order, p.get("cancelNewClientOrderId")), True
    else:
        cancel, cancelled = {"code": -2011, "msg": "Unknown order sent."}, False
    new: Any = None
    if cancelled or mode == "ALLOW_FAILURE":
        order_params = {k: v for k, v in p.items() if not k.startswith("cancel")}
        try:
            new = new_order(Call(call.fake, call.account, order_params, None))
        except ApiError as exc:
            new = {"code": exc.code, "msg": exc.msg}
    placed = new is not None and "code" not in new
    data = {
        "cancelResult": "SUCCESS" if cancelled else "FAILURE",
        "newOrderResult": "SUCCESS" if placed else ("NOT_ATTEMPTED" if new is None else "FAILURE"),
        "cancelResponse": cancel,
        "newOrderResponse": new,
    }
    if cancelled and placed:
        return data
    if cancelled or placed:
        raise ApiError(409, -2021, "Order cancel-replace partially failed.", data)
    raise ApiError(400, -2022, "Order cancel-replace failed.", data)


def amend_keep_priority(call: Call) -> Any:
    """rest-api.md "Order Amend Keep Priority": reduce an open order's quantity."""
    order = _existing(call, lookup=False)
    try:
        new_qty = order.orig_qty.__class__(call.params["newQty"])
    except (KeyError, ArithmeticError):
        raise ApiError(
            400, -1102, "Mandatory parameter 'newQty' was not sent, was empty/null, or malformed."
        ) from None
    if not order.is_open:
        raise ApiError(400, -2038, "Unknown order sent.")
    if new_qty >= order.orig_qty:
        raise ApiError(400, -2038, "Order amend (quantity increase) is not supported.")
    orig_client_id = order.client_id
    order.orig_qty = max(new_qty, order.executed)
    order.client_id = call.params.get("newClientOrderId") or f"amend{order.order_id}"
    if order.remaining == 0:
        order.status = "FILLED"
    body = order.json()
    return {
        "transactTime": call.fake.now_ms(),
        "executionId": order.order_id,
        "amendedOrder": {
            "symbol": order.symbol, "orderId": order.order_id,
            "orderListId": order.order_list_id, "origClientOrderId": orig_client_id,
            "clientOrderId": order.client_id, "price": body["price"], "qty": body["origQty"],
            "executedQty": body["executedQty"], "preventedQty": "0.00000000",
            "quoteOrderQty": body["origQuoteOrderQty"],
            "cumulativeQuoteQty": body["cummulativeQuoteQty"], "status": order.status,
            "timeInForce": order.time_in_force, "type": order.type, "side": order.side,
            "workingTime": body["workingTime"], "selfTradePreventionMode": order.stp_mode,
        },
    }  # fmt: skip
