-- The paper exchange's state (worker/db/paper_store.py; tables in schema/0014_paper_state.sql).

-- name: paper_seed_balances
-- An account's first balances, once: only while it has no balance row at all.
INSERT INTO paper_balances (user_id, asset, free)
SELECT %(user_id)s, s.asset, s.amount
FROM unnest(%(assets)s::text[], %(amounts)s::numeric[]) AS s (asset, amount)
WHERE NOT EXISTS (SELECT 1 FROM paper_balances WHERE user_id = %(user_id)s)
ON CONFLICT DO NOTHING

-- name: paper_lock_balances_of
-- A matching pass's owners' rows, locked before it saves any order (one owner's, then the
-- next's), by account then asset as paper_change_balances locks them.
SELECT 1 FROM paper_balances
WHERE user_id = ANY(%(user_ids)s::uuid[])
ORDER BY user_id, asset
FOR NO KEY UPDATE

-- name: paper_balances_of
SELECT asset, free, locked FROM paper_balances WHERE user_id = %(user_id)s ORDER BY asset

-- name: paper_insert_order
INSERT INTO paper_orders (id, user_id, symbol, client_order_id, side, type, quote_quantity,
  quantity, price, stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms)
VALUES (%(id)s, %(user_id)s, %(symbol)s, %(client_order_id)s, %(side)s, %(type)s,
  %(quote_quantity)s, %(quantity)s, %(price)s, %(stop_price)s, %(status)s, %(triggered)s,
  %(hold_asset)s, %(locked)s, %(fills)s, %(time_ms)s, %(update_ms)s)

-- name: paper_update_order
UPDATE paper_orders
SET status = %(status)s, triggered = %(triggered)s, locked = %(locked)s, fills = %(fills)s,
    update_ms = %(update_ms)s
WHERE id = %(id)s

-- name: paper_any_open
-- Whether a claim would find anything (no lock): most passes find nothing to match.
SELECT 1 FROM paper_orders
WHERE symbol = %(symbol)s AND status IN ('NEW', 'PARTIALLY_FILLED')
  AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
  AND (%(client_order_id)s::text IS NULL OR client_order_id = %(client_order_id)s::text)
  -- only what the quote (bid, ask, last) may change, when given: paper_book.moved_by
  AND (%(last)s::numeric IS NULL OR CASE
    WHEN NOT triggered THEN stop_price IS NULL OR CASE
      WHEN (side = 'sell') = (type = 'stop_loss') THEN %(last)s::numeric <= stop_price
      ELSE %(last)s::numeric >= stop_price END
    ELSE price IS NULL OR CASE
      WHEN side = 'buy' THEN %(ask)s::numeric <= price
      ELSE %(bid)s::numeric >= price END
  END)
LIMIT 1

-- name: paper_claim_orders
-- The open orders of a symbol (one account's, or every account's when user_id is NULL) that
-- no other transaction holds, oldest first: the claim of a matching pass. Given a quote,
-- only the orders it may change are claimed (and locked): a pass over a book of many
-- resting orders costs what the price moves, not what rests.
SELECT id, user_id, symbol, client_order_id, side, type, quote_quantity, quantity, price,
       stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms
FROM paper_orders
WHERE symbol = %(symbol)s AND status IN ('NEW', 'PARTIALLY_FILLED')
  AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
  -- only what the quote (bid, ask, last) may change, when given: paper_book.moved_by
  AND (%(last)s::numeric IS NULL OR CASE
    WHEN NOT triggered THEN stop_price IS NULL OR CASE
      WHEN (side = 'sell') = (type = 'stop_loss') THEN %(last)s::numeric <= stop_price
      ELSE %(last)s::numeric >= stop_price END
    ELSE price IS NULL OR CASE
      WHEN side = 'buy' THEN %(ask)s::numeric <= price
      ELSE %(bid)s::numeric >= price END
  END)
ORDER BY seq
FOR UPDATE SKIP LOCKED

-- name: paper_claim_client_order
-- One client order id's open order, waiting for another transaction that holds it.
SELECT id, user_id, symbol, client_order_id, side, type, quote_quantity, quantity, price,
       stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms
FROM paper_orders
WHERE symbol = %(symbol)s AND client_order_id = %(client_order_id)s
  AND status IN ('NEW', 'PARTIALLY_FILLED')
  AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
ORDER BY seq
FOR UPDATE

-- name: paper_latest_order
SELECT id, user_id, symbol, client_order_id, side, type, quote_quantity, quantity, price,
       stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms
FROM paper_orders
WHERE symbol = %(symbol)s AND client_order_id = %(client_order_id)s
  AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
ORDER BY seq DESC
LIMIT 1

-- name: paper_order_by_id
SELECT id, user_id, symbol, client_order_id, side, type, quote_quantity, quantity, price,
       stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms
FROM paper_orders
WHERE id = %(id)s AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)

-- name: paper_open_orders
SELECT id, user_id, symbol, client_order_id, side, type, quote_quantity, quantity, price,
       stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms
FROM paper_orders
WHERE status IN ('NEW', 'PARTIALLY_FILLED')
  AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s::text)
  AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
ORDER BY seq

-- name: paper_open_symbols
-- The symbols with an order still resting, one probe of paper_orders_open_by_symbol each
-- (a skip scan): what a matching pass reads, however many orders rest.
WITH RECURSIVE s AS (
  (SELECT symbol FROM paper_orders WHERE status IN ('NEW', 'PARTIALLY_FILLED')
   ORDER BY symbol LIMIT 1)
  UNION ALL
  SELECT (SELECT o.symbol FROM paper_orders o
          WHERE o.status IN ('NEW', 'PARTIALLY_FILLED') AND o.symbol > s.symbol
          ORDER BY o.symbol LIMIT 1)
  FROM s WHERE s.symbol IS NOT NULL
)
SELECT symbol FROM s WHERE symbol IS NOT NULL

-- name: paper_accounts_with_open
-- Which of the accounts have an order of the symbol still resting (a batch's placing
-- matches only theirs against the book first).
SELECT DISTINCT user_id::text FROM paper_orders
WHERE symbol = %(symbol)s AND status IN ('NEW', 'PARTIALLY_FILLED')
  AND user_id = ANY(%(user_ids)s::uuid[])

-- name: paper_seed_balances_many
-- paper_seed_balances for many accounts at once.
INSERT INTO paper_balances (user_id, asset, free)
SELECT u.user_id, s.asset, s.amount
FROM unnest(%(user_ids)s::uuid[]) AS u (user_id)
CROSS JOIN unnest(%(assets)s::text[], %(amounts)s::numeric[]) AS s (asset, amount)
WHERE NOT EXISTS (SELECT 1 FROM paper_balances b WHERE b.user_id = u.user_id)
ON CONFLICT DO NOTHING

-- name: paper_touch_balances
-- A balance row for each (account, asset) element that has none yet.
INSERT INTO paper_balances (user_id, asset)
SELECT * FROM unnest(%(user_ids)s::uuid[], %(assets)s::text[])
ON CONFLICT DO NOTHING

-- name: paper_change_balances
-- Balance changes, one element per (account, asset), of one account or many: the rows are
-- locked first, by account then asset (as every transaction that changes balances locks
-- them), then changed. A change that overdraws fails the table's CHECK, and with it the
-- whole statement.
--
-- An UPDATE ... FROM locks rows in the order its plan reads them: under a sequential scan,
-- where their latest versions lie in the table, which every update moves. Two transactions
-- could then each hold one row and wait for the other's (a deadlock, broken only after
-- deadlock_timeout). A SELECT ... ORDER BY ... FOR NO KEY UPDATE locks in its sort order
-- (the PostgreSQL manual, SELECT, "The Locking Clause": the rows are sorted first, then
-- locked); MATERIALIZED keeps that subquery whole, and the UPDATE reaches a row only
-- through it, so after it has locked the row (tests/integration/test_paper_lock_order.py).
WITH c AS (
  SELECT * FROM unnest(%(user_ids)s::uuid[], %(assets)s::text[], %(free)s::numeric[],
                       %(locked)s::numeric[]) AS c (user_id, asset, free, locked)
), held AS MATERIALIZED (
  SELECT h.user_id, h.asset FROM paper_balances h
  WHERE (h.user_id, h.asset) IN (SELECT c.user_id, c.asset FROM c)
  ORDER BY h.user_id, h.asset
  FOR NO KEY UPDATE OF h
)
UPDATE paper_balances b
SET free = b.free + c.free, locked = b.locked + c.locked, updated_at = now()
FROM held JOIN c USING (user_id, asset)
WHERE b.user_id = held.user_id AND b.asset = held.asset

-- name: paper_insert_orders
-- paper_insert_order for many orders, one per array element.
INSERT INTO paper_orders (id, user_id, symbol, client_order_id, side, type, quote_quantity,
  quantity, price, stop_price, status, triggered, hold_asset, locked, fills, time_ms, update_ms)
SELECT * FROM unnest(%(id)s::text[], %(user_id)s::uuid[], %(symbol)s::text[],
  %(client_order_id)s::text[], %(side)s::text[], %(type)s::text[],
  %(quote_quantity)s::numeric[], %(quantity)s::numeric[], %(price)s::numeric[],
  %(stop_price)s::numeric[], %(status)s::text[], %(triggered)s::boolean[],
  %(hold_asset)s::text[], %(locked)s::numeric[], %(fills)s::jsonb[], %(time_ms)s::bigint[],
  %(update_ms)s::bigint[])
