-- Queries of the user data stream (worker/execution/live_fills.py): an account's orders, as
-- Binance pushes their updates. %(account_id)s NULL is the operator's account.

-- name: stream_order_of_account
-- The worker's live order with this client order id, on this account (a client id another
-- account reports is never taken for one of ours).
SELECT o.position_id, o.id FROM worker_orders o
JOIN positions p ON p.id = o.position_id
WHERE o.client_order_id = %(client_order_id)s
  AND NOT coalesce(p.is_paper_trade, false)
  AND p.account_id IS NOT DISTINCT FROM %(account_id)s

-- name: stream_orders_in_flight
-- The account's orders the exchange has (sent, not final): what a catch-up compares with
-- the exchange's open orders. A 'created' order is left to the actor sending it.
SELECT o.position_id, o.client_order_id, o.symbol, o.filled_quantity FROM worker_orders o
JOIN positions p ON p.id = o.position_id
WHERE o.status IN ('submitted', 'partially_filled')
  AND NOT coalesce(p.is_paper_trade, false)
  AND p.account_id IS NOT DISTINCT FROM %(account_id)s
ORDER BY o.created_at
LIMIT 1000
