-- Row-level security: the spec's policies verbatim, plus what it left out.
--
-- Who is who (README "Security"):
--   authenticated  an end user, identified by auth.uid() (the JWT sub); sees and changes only
--                  their own rows, and only the columns a user may own (risk limits, metadata);
--                  lifecycle changes go through the request_* functions (issue 4).
--   anon           sees nothing.
--   service_role   bypasses RLS (Supabase semantics); may not rewrite the audit trail.
--   the owner      the role that ran the migrations; the worker connects as it.

ALTER TABLE positions ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE trades ENABLE ROW LEVEL SECURITY;
ALTER TABLE position_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE signals ENABLE ROW LEVEL SECURITY;
ALTER TABLE traders ENABLE ROW LEVEL SECURITY;

-- Users can only see their own positions (spec)
CREATE POLICY positions_select_own
  ON positions FOR SELECT
  USING (auth.uid() = user_id);

CREATE POLICY positions_insert_own
  ON positions FOR INSERT
  WITH CHECK (auth.uid() = user_id);

CREATE POLICY positions_update_own
  ON positions FOR UPDATE
  USING (auth.uid() = user_id);

-- Same for orders and trades (spec)
CREATE POLICY orders_select_own
  ON orders FOR SELECT
  USING (auth.uid() = user_id);

CREATE POLICY orders_insert_own
  ON orders FOR INSERT
  WITH CHECK (auth.uid() = user_id);

CREATE POLICY trades_select_own
  ON trades FOR SELECT
  USING (position_id IN (SELECT id FROM positions WHERE user_id = auth.uid()));

-- What the spec forgot -------------------------------------------------------------------
-- An UPDATE must also leave the row owned by the same user (the spec's policy has no
-- WITH CHECK, so USING is reused: a user cannot hand a row to somebody else).
-- A position may only be created for the user's own signal and trader, in status created.
CREATE POLICY positions_insert_own_refs
  ON positions AS RESTRICTIVE FOR INSERT
  WITH CHECK (
    status = 'created'
    AND signal_id IN (SELECT id FROM signals WHERE user_id = auth.uid())
    AND trader_id IN (SELECT id FROM traders WHERE user_id = auth.uid()));

-- An order may only be attached to the user's own position.
CREATE POLICY orders_insert_own_position
  ON orders AS RESTRICTIVE FOR INSERT
  WITH CHECK (position_id IN (SELECT id FROM positions WHERE user_id = auth.uid()));

-- Orders and trades are the exchange's record: no user updates or deletes them (no
-- policy and no privilege). Positions are never deleted by users either.

-- The audit trail: users read their own events.
CREATE POLICY position_events_select_own
  ON position_events FOR SELECT
  USING (auth.uid() = user_id);

-- Signals and traders: owners manage their own.
CREATE POLICY signals_own ON signals FOR ALL
  USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);
CREATE POLICY traders_own ON traders FOR ALL
  USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);

-- Privileges -----------------------------------------------------------------------------
REVOKE ALL ON positions, orders, trades, position_events, signals, traders FROM PUBLIC;
REVOKE ALL ON positions, orders, trades, position_events, signals, traders FROM anon;

-- Users set what they ask for; every figure the worker computes (fills, PnL, fees,
-- held quantity, exchange ids) is out of reach, at INSERT as at UPDATE.
GRANT SELECT ON positions TO authenticated;
GRANT INSERT (id, user_id, trader_id, signal_id, symbol, side, status, requested_quantity,
              requested_quote, limit_price, stop_loss_price, take_profit_price,
              max_loss_usdt, is_paper_trade, metadata)
  ON positions TO authenticated;
GRANT UPDATE (stop_loss_price, take_profit_price, max_loss_usdt, metadata)
  ON positions TO authenticated;
-- The spec lets users insert orders; such a row is a record only (no client order id, so
-- the worker never sends it). Exits and scale-ins go through the request_* functions.
GRANT SELECT ON orders TO authenticated;
GRANT INSERT (id, position_id, user_id, symbol, side, type, quantity, price, status,
              is_paper_trade)
  ON orders TO authenticated;
GRANT SELECT ON trades TO authenticated;
GRANT SELECT ON position_events TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON signals, traders TO authenticated;

GRANT SELECT, INSERT, UPDATE, DELETE ON positions, orders, trades, signals, traders
  TO service_role;
-- Append-only for everyone but the owner.
GRANT SELECT ON position_events TO service_role;
REVOKE UPDATE, DELETE, TRUNCATE ON position_events FROM authenticated, service_role;

REVOKE ALL ON FUNCTION notify_position_state_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION record_order_event() FROM PUBLIC;
REVOKE ALL ON FUNCTION record_trade_event() FROM PUBLIC;
REVOKE ALL ON FUNCTION update_signal_from_position() FROM PUBLIC;
