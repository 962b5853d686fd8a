-- Queries of the execution engine (worker/execution/). Named blocks, %(name)s parameters.
-- A query that loads a row of worker/execution/rows.py (Position, Order, Request, Trade)
-- selects exactly that dataclass's fields, by name.
--
-- Every query that looks orders up reads only the worker's own, through the view
-- `worker_orders` (schema/0012): rows whose client order id is exactly the one the worker
-- gives a row of that id and purpose (worker/execution/client_ids.py: client_order_id,
-- is_worker_order). Rows written by anyone else are never sent, cancelled, driven, counted
-- in a position's figures, nor waited for; only exec_foreign_orders_of_position lists them,
-- for the log. The view is inlined, so conditions on position_id, request_id and status
-- still use the indexes of orders.

-- name: exec_try_lock_position
-- One actor per position at a time, across every worker process: held on one connection
-- for the whole drive (exchange calls included); released when the connection ends.
SELECT pg_try_advisory_lock(hashtextextended(%(position_id)s::text, 7365))

-- name: exec_unlock_position
SELECT pg_advisory_unlock(hashtextextended(%(position_id)s::text, 7365))

-- name: exec_try_lock_positions
-- exec_try_lock_position for many positions at once (a batch of entries): the ids locked
-- now; the others are held elsewhere.
SELECT id FROM unnest(%(position_ids)s::text[]) AS id
WHERE pg_try_advisory_lock(hashtextextended(id, 7365))

-- name: exec_unlock_positions
SELECT pg_advisory_unlock(hashtextextended(id, 7365)) FROM unnest(%(position_ids)s::text[]) AS id

-- name: exec_positions
-- Positions (worker/execution/rows.py), in the order of the ids given.
SELECT p.id, p.user_id, p.symbol, p.side, p.status, p.requested_quantity, p.requested_quote,
       p.limit_price, p.stop_loss_price, p.take_profit_price, p.max_loss_usdt,
       coalesce(p.is_paper_trade, false) AS is_paper_trade, p.held_quantity, p.entry_quantity,
       p.entry_value, p.account_id, p.protection
FROM unnest(%(position_ids)s::uuid[]) WITH ORDINALITY AS x(id, n)
JOIN positions p ON p.id = x.id
ORDER BY x.n

-- name: exec_position
-- A Position (worker/execution/rows.py).
SELECT id, user_id, symbol, side, status, requested_quantity, requested_quote, limit_price,
       stop_loss_price, take_profit_price, max_loss_usdt,
       coalesce(is_paper_trade, false) AS is_paper_trade, held_quantity, entry_quantity,
       entry_value, account_id, protection
FROM positions WHERE id = %(position_id)s

-- name: exec_set_position_status
UPDATE positions
SET status = %(new)s,
    failure_reason = coalesce(%(reason)s, failure_reason),
    close_reason = coalesce(%(close_reason)s, close_reason)
WHERE id = %(position_id)s AND status = %(old)s
RETURNING id

-- name: exec_orders_of_position
-- Orders (worker/execution/rows.py).
SELECT id, position_id, client_order_id, binance_order_id, symbol, side, type, quantity,
       quote_quantity, price, stop_price, status, exchange_status, filled_quantity, purpose,
       is_paper_trade, request_id, send_attempts, missing_lookups, created_at
FROM worker_orders WHERE position_id = %(position_id)s
ORDER BY created_at, client_order_id, id  -- the legs of an OCO pair share created_at

-- name: exec_foreign_orders_of_position
-- The position's order rows the worker did not write (only logged).
SELECT o.id FROM orders o
WHERE o.position_id = %(position_id)s
  AND NOT EXISTS (SELECT 1 FROM worker_orders w WHERE w.id = o.id)
ORDER BY o.created_at, o.id

-- name: exec_foreign_orders_of_positions
-- exec_foreign_orders_of_position for many positions at once.
SELECT o.position_id, o.id FROM orders o
WHERE o.position_id = ANY(%(position_ids)s::uuid[])
  AND NOT EXISTS (SELECT 1 FROM worker_orders w WHERE w.id = o.id)
ORDER BY o.position_id, o.created_at, o.id

-- name: exec_insert_order
-- The id is drawn by the worker: the client order id is made from it (client_order_id).
INSERT INTO orders (id, position_id, user_id, client_order_id, symbol, side, type, quantity,
                    quote_quantity, price, stop_price, status, purpose, is_paper_trade,
                    request_id)
VALUES (%(id)s, %(position_id)s, %(user_id)s, %(client_order_id)s, %(symbol)s, %(side)s,
        %(type)s, %(quantity)s, %(quote_quantity)s, %(price)s, %(stop_price)s, 'created',
        %(purpose)s, %(is_paper_trade)s, %(request_id)s)
RETURNING id, position_id, client_order_id, binance_order_id, symbol, side, type, quantity,
          quote_quantity, price, stop_price, status, exchange_status, filled_quantity, purpose,
          is_paper_trade, request_id, send_attempts, missing_lookups, created_at

-- name: exec_insert_entry_orders
-- exec_insert_order for many new positions' entry orders, one row per array element (the
-- ids drawn by the worker); then exec_positions_submitting moves their positions on.
INSERT INTO orders (id, position_id, user_id, client_order_id, symbol, side, type, quantity,
                    quote_quantity, price, status, purpose, is_paper_trade)
SELECT id, position_id, user_id, client_order_id, symbol, side, type, quantity,
       quote_quantity, price, 'created', 'entry', is_paper_trade
FROM unnest(%(id)s::uuid[], %(position_id)s::uuid[], %(user_id)s::uuid[],
            %(client_order_id)s::text[], %(symbol)s::text[], %(side)s::text[],
            %(type)s::text[], %(quantity)s::numeric[], %(quote_quantity)s::numeric[],
            %(price)s::numeric[], %(is_paper_trade)s::boolean[])
     WITH ORDINALITY AS x(id, position_id, user_id, client_order_id, symbol, side, type,
                          quantity, quote_quantity, price, is_paper_trade, n)
ORDER BY n
RETURNING id, position_id, client_order_id, binance_order_id, symbol, side, type, quantity,
          quote_quantity, price, stop_price, status, exchange_status, filled_quantity, purpose,
          is_paper_trade, request_id, send_attempts, missing_lookups, created_at

-- name: exec_positions_submitting
-- created -> submitting by compare-and-set, for many positions: the ids that moved.
UPDATE positions SET status = 'submitting'
WHERE id = ANY(%(position_ids)s::uuid[]) AND status = 'created'
RETURNING id

-- name: exec_bump_sends
-- exec_bump_send for many orders at once.
UPDATE orders SET send_attempts = send_attempts + 1, submitted_at = coalesce(submitted_at, now())
WHERE id = ANY(%(order_ids)s::uuid[])

-- name: exec_bump_send
-- Committed before every send: from now on the order may exist on the exchange.
UPDATE orders SET send_attempts = send_attempts + 1, submitted_at = coalesce(submitted_at, now())
WHERE id = %(order_id)s

-- name: exec_bump_missing
-- One more lookup that did not find the order: how many in a row, and for how many seconds.
UPDATE orders SET missing_lookups = missing_lookups + 1,
                  missing_since = coalesce(missing_since, now())
WHERE id = %(order_id)s
RETURNING missing_lookups, extract(epoch FROM now() - missing_since)::float8 AS missing_for

-- name: exec_set_order_status
UPDATE orders SET status = %(status)s WHERE id = %(order_id)s AND status = %(old)s

-- name: exec_set_order_error
UPDATE orders SET error_message = %(error)s WHERE id = %(order_id)s

-- name: exec_update_order_fills
UPDATE orders
SET binance_order_id = coalesce(%(exchange_order_id)s, binance_order_id),
    exchange_status = %(exchange_status)s,
    filled_quantity = %(filled_quantity)s,
    avg_fill_price = %(avg_fill_price)s,
    total_value = %(total_value)s,
    fees = %(fees)s,
    raw_response = %(raw)s,
    error_message = coalesce(%(error)s, error_message),
    filled_at = CASE WHEN %(filled)s THEN coalesce(filled_at, now()) ELSE filled_at END,
    missing_lookups = 0, missing_since = NULL
WHERE id = %(order_id)s

-- name: exec_insert_trade
INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side, price, quantity,
                    value, fee, fee_asset, fee_quote, is_paper_trade, executed_at)
VALUES (%(order_id)s, %(position_id)s, %(trade_id)s, %(symbol)s, %(side)s, %(price)s,
        %(quantity)s, %(value)s, %(fee)s, %(fee_asset)s, %(fee_quote)s, %(is_paper_trade)s,
        %(executed_at)s)
ON CONFLICT (order_id, binance_trade_id) DO NOTHING

-- name: exec_order_fill_totals
SELECT coalesce(sum(quantity), 0) AS quantity, coalesce(sum(value), 0) AS value,
       coalesce(sum(fee_quote), 0) AS fees
FROM trades WHERE order_id = %(order_id)s

-- name: exec_trades_of_order
SELECT binance_trade_id, quantity FROM trades
WHERE order_id = %(order_id)s AND binance_trade_id IS NOT NULL

-- name: exec_fills_of_position
-- Trades (worker/execution/rows.py), in the order they are folded.
SELECT t.side, t.price, t.quantity, t.fee, t.fee_asset, t.fee_quote, t.binance_trade_id,
       t.executed_at, o.purpose AS order_purpose, o.binance_order_id AS exchange_order_id
FROM trades t JOIN worker_orders o ON o.id = t.order_id AND o.position_id = t.position_id
WHERE t.position_id = %(position_id)s
ORDER BY t.executed_at, o.created_at, t.binance_trade_id

-- name: exec_update_figures
UPDATE positions
SET entry_price = %(entry_price)s, entry_quantity = %(entry_quantity)s,
    entry_value = %(entry_value)s, entry_time = %(entry_time)s,
    entry_order_id = coalesce(%(entry_order_id)s, entry_order_id),
    exit_price = %(exit_price)s, exit_quantity = %(exit_quantity)s,
    exit_value = %(exit_value)s, exit_time = %(exit_time)s,
    exit_order_id = coalesce(%(exit_order_id)s, exit_order_id),
    realized_pnl = %(realized_pnl)s, realized_pnl_percent = %(realized_pnl_percent)s,
    fees_paid = %(fees_paid)s, held_quantity = %(held_quantity)s, entry_cost = %(entry_cost)s
WHERE id = %(position_id)s

-- name: exec_set_orders_status
-- exec_set_order_status for many orders making the same move: the ids that moved.
UPDATE orders SET status = %(status)s
WHERE id = ANY(%(order_ids)s::uuid[]) AND status = %(old)s
RETURNING id

-- name: exec_set_positions_status
-- exec_set_position_status for many positions making the same move: the ids that moved.
UPDATE positions
SET status = %(new)s,
    failure_reason = coalesce(%(reason)s, failure_reason),
    close_reason = coalesce(%(close_reason)s, close_reason)
WHERE id = ANY(%(position_ids)s::uuid[]) AND status = %(old)s
RETURNING id

-- name: exec_insert_trades
-- exec_insert_trade for many fills, one per array element.
INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side, price, quantity,
                    value, fee, fee_asset, fee_quote, is_paper_trade, executed_at)
SELECT * FROM unnest(%(order_id)s::uuid[], %(position_id)s::uuid[], %(trade_id)s::text[],
                     %(symbol)s::text[], %(side)s::text[], %(price)s::numeric[],
                     %(quantity)s::numeric[], %(value)s::numeric[], %(fee)s::numeric[],
                     %(fee_asset)s::text[], %(fee_quote)s::numeric[],
                     %(is_paper_trade)s::boolean[], %(executed_at)s::timestamptz[])
ON CONFLICT (order_id, binance_trade_id) DO NOTHING

-- name: exec_orders_fill_totals
-- exec_order_fill_totals for many orders (those with no trade have no row).
SELECT order_id, coalesce(sum(quantity), 0) AS quantity, coalesce(sum(value), 0) AS value,
       coalesce(sum(fee_quote), 0) AS fees
FROM trades WHERE order_id = ANY(%(order_ids)s::uuid[])
GROUP BY order_id

-- name: exec_update_orders_fills
-- exec_update_order_fills for many orders, one per array element; an order whose status
-- takes one legal step to its target moves in the same update (status: the target, NULL
-- to leave it), so it gets one new row version, not two.
UPDATE orders o
SET status = coalesce(x.status, o.status),
    binance_order_id = coalesce(x.exchange_order_id, o.binance_order_id),
    exchange_status = x.exchange_status,
    filled_quantity = x.filled_quantity,
    avg_fill_price = x.avg_fill_price,
    total_value = x.total_value,
    fees = x.fees,
    raw_response = x.raw,
    filled_at = CASE WHEN x.filled THEN coalesce(o.filled_at, now()) ELSE o.filled_at END,
    missing_lookups = 0, missing_since = NULL
FROM unnest(%(order_id)s::uuid[], %(exchange_order_id)s::text[], %(exchange_status)s::text[],
            %(filled_quantity)s::numeric[], %(avg_fill_price)s::numeric[],
            %(total_value)s::numeric[], %(fees)s::numeric[], %(raw)s::jsonb[],
            %(filled)s::boolean[], %(status)s::text[])
     AS x(order_id, exchange_order_id, exchange_status, filled_quantity, avg_fill_price,
          total_value, fees, raw, filled, status)
WHERE o.id = x.order_id

-- name: exec_fills_of_positions
-- exec_fills_of_position for many positions: each one's in the order they are folded.
SELECT t.position_id, t.side, t.price, t.quantity, t.fee, t.fee_asset, t.fee_quote,
       t.binance_trade_id, t.executed_at, o.purpose AS order_purpose,
       o.binance_order_id AS exchange_order_id
FROM trades t JOIN worker_orders o ON o.id = t.order_id AND o.position_id = t.position_id
WHERE t.position_id = ANY(%(position_ids)s::uuid[])
ORDER BY t.position_id, t.executed_at, o.created_at, t.binance_trade_id

-- name: exec_update_figures_many
-- exec_update_figures for many positions, one per array element.
UPDATE positions p
SET entry_price = x.entry_price, entry_quantity = x.entry_quantity,
    entry_value = x.entry_value, entry_time = x.entry_time,
    entry_order_id = coalesce(x.entry_order_id, p.entry_order_id),
    exit_price = x.exit_price, exit_quantity = x.exit_quantity,
    exit_value = x.exit_value, exit_time = x.exit_time,
    exit_order_id = coalesce(x.exit_order_id, p.exit_order_id),
    realized_pnl = x.realized_pnl, realized_pnl_percent = x.realized_pnl_percent,
    fees_paid = x.fees_paid, held_quantity = x.held_quantity, entry_cost = x.entry_cost
FROM unnest(%(position_id)s::uuid[], %(entry_price)s::numeric[], %(entry_quantity)s::numeric[],
            %(entry_value)s::numeric[], %(entry_time)s::timestamptz[],
            %(entry_order_id)s::text[], %(exit_price)s::numeric[],
            %(exit_quantity)s::numeric[], %(exit_value)s::numeric[],
            %(exit_time)s::timestamptz[], %(exit_order_id)s::text[],
            %(realized_pnl)s::numeric[], %(realized_pnl_percent)s::numeric[],
            %(fees_paid)s::numeric[], %(held_quantity)s::numeric[], %(entry_cost)s::numeric[])
     AS x(position_id, entry_price, entry_quantity, entry_value, entry_time, entry_order_id,
          exit_price, exit_quantity, exit_value, exit_time, exit_order_id, realized_pnl,
          realized_pnl_percent, fees_paid, held_quantity, entry_cost)
WHERE p.id = x.position_id

-- name: exec_request
-- A Request (worker/execution/rows.py).
SELECT id, position_id, kind, quantity, quote_quantity, reason, status FROM position_requests WHERE id = %(request_id)s

-- name: exec_finish_request
UPDATE position_requests SET status = %(status)s, error = %(error)s,
       order_id = coalesce(%(order_id)s, order_id)
WHERE id = %(request_id)s AND status = 'pending'

-- name: exec_requests
-- exec_request for many requests at once (a batch of them: worker/execution/request_batch.py).
SELECT id, position_id, kind, quantity, quote_quantity, reason, status FROM position_requests
WHERE id = ANY(%(request_ids)s::uuid[])

-- name: exec_requests_started
-- Which of the requests an order has been made for already (exec_order_of_request).
SELECT DISTINCT request_id FROM worker_orders WHERE request_id = ANY(%(request_ids)s::uuid[])

-- name: exec_positions_with_orders_in_flight
-- Which of the positions have one of the worker's orders not final yet.
SELECT DISTINCT position_id FROM worker_orders
WHERE position_id = ANY(%(position_ids)s::uuid[])
  AND status NOT IN ('filled', 'cancelled', 'failed')

-- name: exec_insert_request_orders
-- exec_insert_order for many requests' market orders, one row per array element (the ids
-- drawn by the worker), in the order given.
INSERT INTO orders (id, position_id, user_id, client_order_id, symbol, side, type, quantity,
                    quote_quantity, status, purpose, is_paper_trade, request_id)
SELECT id, position_id, user_id, client_order_id, symbol, side, 'market', quantity,
       quote_quantity, 'created', purpose, is_paper_trade, request_id
FROM unnest(%(id)s::uuid[], %(position_id)s::uuid[], %(user_id)s::uuid[],
            %(client_order_id)s::text[], %(symbol)s::text[], %(side)s::text[],
            %(quantity)s::numeric[], %(quote_quantity)s::numeric[], %(purpose)s::text[],
            %(is_paper_trade)s::boolean[], %(request_id)s::uuid[])
     WITH ORDINALITY AS x(id, position_id, user_id, client_order_id, symbol, side, quantity,
                          quote_quantity, purpose, is_paper_trade, request_id, n)
ORDER BY n
RETURNING id, position_id, client_order_id, binance_order_id, symbol, side, type, quantity,
          quote_quantity, price, stop_price, status, exchange_status, filled_quantity, purpose,
          is_paper_trade, request_id, send_attempts, missing_lookups, created_at

-- name: exec_finish_requests
-- exec_finish_request for many requests, one per array element.
UPDATE position_requests r
SET status = x.status, error = x.error, order_id = coalesce(x.order_id, r.order_id)
FROM unnest(%(request_id)s::uuid[], %(status)s::text[], %(error)s::text[],
            %(order_id)s::uuid[]) AS x(request_id, status, error, order_id)
WHERE r.id = x.request_id AND r.status = 'pending'

-- name: exec_pending_requests_of_position
SELECT id, position_id, kind, quantity, quote_quantity, reason, status FROM position_requests
WHERE position_id = %(position_id)s AND status = 'pending'
ORDER BY created_at

-- name: exec_order_of_request
SELECT id FROM worker_orders WHERE request_id = %(request_id)s LIMIT 1

-- name: exec_pending_requests
-- Requests no order has been made for yet (their event may be waiting out a ban, or dead).
SELECT position_id, id FROM position_requests r
WHERE status = 'pending' AND created_at < now() - make_interval(secs => %(grace)s)
  AND NOT EXISTS (SELECT 1 FROM worker_orders o WHERE o.request_id = r.id)
ORDER BY created_at
LIMIT 200

-- name: exec_orders_in_flight
-- Every one of the worker's own orders not final, with the account they trade on (the
-- REST safety net lists each account's open orders once and looks up only what left that
-- list): no limit, so no order is left out of a pass however many another user has. A
-- fresh 'created' order is left to the actor that is sending it right now. ``moved`` is
-- exec_orders_to_send's (every order not final is read here already).
SELECT o.position_id::text AS position_id, o.user_id::text AS user_id, o.client_order_id,
       o.symbol, o.status, o.exchange_status, coalesce(o.filled_quantity, 0) AS filled_quantity,
       o.missing_lookups, o.is_paper_trade, p.account_id
FROM worker_orders o JOIN positions p ON p.id = o.position_id
WHERE o.status IN ('created', 'submitted', 'partially_filled')
  AND (o.status <> 'created' OR o.created_at < now() - make_interval(secs => %(grace)s))
ORDER BY o.created_at

-- name: exec_orders_to_send
-- exec_orders_in_flight's rows of the orders still to be sent (or to be found after a send
-- whose outcome is unknown), and of the paper orders that the paper book's matching moved
-- (client order ids): a reconcile pass between two listings drives these alone.
SELECT o.position_id::text AS position_id, o.user_id::text AS user_id, o.client_order_id,
       o.symbol, o.status, o.exchange_status, coalesce(o.filled_quantity, 0) AS filled_quantity,
       o.missing_lookups, o.is_paper_trade, p.account_id
FROM worker_orders o JOIN positions p ON p.id = o.position_id
WHERE (o.status = 'created' AND o.created_at < now() - make_interval(secs => %(grace)s))
   OR (o.client_order_id = ANY(%(moved)s::text[])
       AND o.status IN ('submitted', 'partially_filled'))
ORDER BY o.created_at

-- name: exec_stuck_positions
-- Positions waiting for the worker with no order in flight (e.g. a crash right after the
-- position was created but before its entry order was recorded).
--
-- One probe of each waiting position's own orders (idx_orders_position_id), whatever the
-- planner thinks of the tables' sizes. The OFFSET 0 keeps the NOT EXISTS a subplan run per
-- position: as an anti-join planned on stale statistics (right after a burst of entries,
-- before autovacuum analyzes), it read every order for every waiting position, 1.5-2 s a
-- pass over 10,000 resting paper entries. "In flight" is written "not final" (the same
-- under orders' CHECK) wherever a query probes one position's orders: no index serves a
-- NOT IN, so idx_orders_status's bitmap of every order in flight is not ANDed into each
-- probe (written as IN, a pass over 10,000 resting entries took 5 s).
SELECT p.id FROM positions p
WHERE p.status IN ('created', 'submitting', 'closing')
  AND p.updated_at < now() - make_interval(secs => %(grace)s)
  AND NOT EXISTS (SELECT 1 FROM worker_orders o WHERE o.position_id = p.id
                  AND o.status NOT IN ('filled', 'cancelled', 'failed') OFFSET 0)
LIMIT 200

-- name: exec_paper_watch
-- Paper positions (Position rows) with protection to enforce: the simulated exchange
-- watches its feed.
SELECT id, user_id, symbol, side, status, requested_quantity, requested_quote, limit_price,
       stop_loss_price, take_profit_price, max_loss_usdt,
       coalesce(is_paper_trade, false) AS is_paper_trade, held_quantity, entry_quantity,
       entry_value, account_id, protection
FROM positions
WHERE is_paper_trade AND status IN ('open', 'monitoring') AND held_quantity > 0
  AND (stop_loss_price IS NOT NULL OR take_profit_price IS NOT NULL
       OR max_loss_usdt IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM position_requests r WHERE r.position_id = positions.id
                  AND r.kind = 'exit' AND r.status = 'pending')

-- name: exec_worker_watch
-- Live positions protected from the worker's side (Position rows): the exchange had no room
-- for their stop-loss / take-profit orders, or refused them; the watcher checks the price.
SELECT id, user_id, symbol, side, status, requested_quantity, requested_quote, limit_price,
       stop_loss_price, take_profit_price, max_loss_usdt,
       coalesce(is_paper_trade, false) AS is_paper_trade, held_quantity, entry_quantity,
       entry_value, account_id, protection
FROM positions
WHERE protection = 'worker' AND NOT is_paper_trade AND status IN ('open', 'monitoring')
  AND held_quantity > 0
  AND (stop_loss_price IS NOT NULL OR take_profit_price IS NOT NULL
       OR max_loss_usdt IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM position_requests r WHERE r.position_id = positions.id
                  AND r.kind = 'exit' AND r.status = 'pending')

-- name: exec_set_protection
-- Where the position's protection is enforced ('exchange' | 'worker'), and why; the
-- trigger of schema/0015 makes a change an event. Nothing is written when it is unchanged.
UPDATE positions SET protection = %(mode)s, protection_reason = %(reason)s
WHERE id = %(position_id)s
  AND (protection IS DISTINCT FROM %(mode)s OR protection_reason IS DISTINCT FROM %(reason)s)

-- name: exec_protection_slots
-- The worker's own open algo orders and order lists on one symbol of one exchange account
-- (account_id NULL: the operator's): live stop-loss / take-profit rows, but a take-profit
-- with a limit price (it rests as LIMIT_MAKER, not an algo order: filters.md
-- MAX_NUM_ALGO_ORDERS), and OCO pairs (a take-profit whose stop-loss sibling of the same
-- position was created with it and is live).
SELECT count(*) FILTER (WHERE o.price IS NULL) AS algo,
       count(*) FILTER (WHERE o.purpose = 'take_profit' AND EXISTS (
         SELECT 1 FROM worker_orders s WHERE s.position_id = o.position_id
           AND s.purpose = 'stop_loss' AND s.created_at = o.created_at
           AND s.status NOT IN ('filled', 'cancelled', 'failed'))) AS lists
FROM worker_orders o JOIN positions p ON p.id = o.position_id
WHERE o.symbol = %(symbol)s AND NOT o.is_paper_trade
  AND p.account_id IS NOT DISTINCT FROM %(account_id)s
  AND o.purpose IN ('stop_loss', 'take_profit')
  AND o.status IN ('created', 'submitted', 'partially_filled')

-- name: exec_request_exit
SELECT request_position_exit(%(position_id)s, NULL, %(reason)s)

-- name: exec_unprotected_positions
-- Live positions whose exchange-side protection needs work (the engine decides again under
-- the position's lock: protection_plan.protection_plan). For a kind with a price set: a working order
-- placed before the latest entry, scale or exit order (stale: the holding changed), or no
-- working order placed since (never placed after a crash, cancelled for an exit that then
-- failed, cancelled or expired on the exchange), unless the latest one since was rejected
-- at the price set now (it would be rejected again on every pass). Nothing else in flight:
-- no other order working, no request pending; the holding settled at least `grace` ago
-- (measured from the holding orders, not from the position's updated_at).
SELECT p.id FROM positions p
CROSS JOIN LATERAL (
    SELECT max(o.created_at) AS made, max(o.updated_at) AS settled FROM worker_orders o
    WHERE o.position_id = p.id AND o.purpose IN ('entry', 'scale_in', 'scale_out', 'exit')
) AS changed
WHERE NOT p.is_paper_trade AND p.status IN ('open', 'monitoring') AND p.held_quantity > 0
  AND (p.stop_loss_price IS NOT NULL OR p.take_profit_price IS NOT NULL
       OR p.max_loss_usdt IS NOT NULL)
  AND changed.settled < now() - make_interval(secs => %(grace)s)
  AND NOT EXISTS (SELECT 1 FROM worker_orders o WHERE o.position_id = p.id
                  AND o.purpose NOT IN ('stop_loss', 'take_profit')
                  AND o.status NOT IN ('filled', 'cancelled', 'failed')
                  OFFSET 0)  -- a probe per position (exec_stuck_positions)
  AND NOT EXISTS (SELECT 1 FROM position_requests r WHERE r.position_id = p.id
                  AND r.status = 'pending')
  AND EXISTS (
    -- (a stop from max_loss_usdt alone has no price here: never matches a rejected one)
    SELECT 1 FROM (VALUES ('stop_loss', coalesce(p.stop_loss_price, p.max_loss_usdt)),
                          ('take_profit', p.take_profit_price)) AS k (purpose, price)
    WHERE k.price IS NOT NULL AND (
      EXISTS (SELECT 1 FROM worker_orders o WHERE o.position_id = p.id AND o.purpose = k.purpose
              AND o.status NOT IN ('filled', 'cancelled', 'failed')
              AND o.created_at < changed.made)
      OR (NOT EXISTS (SELECT 1 FROM worker_orders o WHERE o.position_id = p.id
                      AND o.purpose = k.purpose AND o.created_at > changed.made
                      AND o.status NOT IN ('filled', 'cancelled', 'failed'))
          AND NOT EXISTS (SELECT 1 FROM (SELECT o.status, o.stop_price FROM worker_orders o
                                         WHERE o.position_id = p.id AND o.purpose = k.purpose
                                           AND o.created_at > changed.made
                                         ORDER BY o.created_at DESC, o.id DESC LIMIT 1) AS last
                          WHERE last.status = 'failed' AND last.stop_price = k.price))))
ORDER BY p.id
LIMIT 200

