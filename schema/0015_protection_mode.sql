-- Where a live position's stop-loss / take-profit is enforced, for its owner to see.
--
-- * positions.protection: 'exchange' (the exchange holds the stop-loss / take-profit orders,
--   an OCO list) or 'worker' (the exchange had no room: filters.md MAX_NUM_ALGO_ORDERS /
--   MAX_NUM_ORDER_LISTS per symbol and account, or it refused the orders; the worker watches
--   the price and exits with a market order when a level is crossed). NULL: nothing to
--   protect, or not decided yet. positions.protection_reason says why it is 'worker'.
--   Written by the worker (the owner) only: no API role may insert or update either column
--   (R__privileges.sql grants columns by name; these are not listed).
-- * Every change of positions.protection is an event of kind 'protection' (old_status /
--   new_status: the modes) in the audit trail and outbox, so it reaches the events stream
--   and, for a move to 'worker' and back, the user's notifications.

ALTER TABLE positions
  ADD COLUMN protection VARCHAR(10) CHECK (protection IN ('exchange', 'worker')),
  ADD COLUMN protection_reason TEXT CHECK (char_length(protection_reason) <= 500);

ALTER TABLE position_events DROP CONSTRAINT position_events_kind_check;
ALTER TABLE position_events ADD CONSTRAINT position_events_kind_check
  CHECK (kind IN ('position', 'order', 'trade', 'request', 'protection')) NOT VALID;
ALTER TABLE position_events VALIDATE CONSTRAINT position_events_kind_check;

CREATE OR REPLACE FUNCTION record_protection_event() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  INSERT INTO position_events
    (kind, position_id, user_id, symbol, old_status, new_status, actor_role, actor_uid, data)
  VALUES ('protection', NEW.id, NEW.user_id, NEW.symbol, OLD.protection, NEW.protection,
          _event_actor_role(), auth.uid(),
          jsonb_strip_nulls(jsonb_build_object(
            'side', NEW.side,
            'status', NEW.status,
            'is_paper_trade', NEW.is_paper_trade,
            'held_quantity', NEW.held_quantity::text,
            'stop_loss_price', NEW.stop_loss_price::text,
            'take_profit_price', NEW.take_profit_price::text,
            'max_loss_usdt', NEW.max_loss_usdt::text,
            'protection_reason', NEW.protection_reason)));
  PERFORM pg_notify('position_worker_wakeup', '');
  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_position_protection_change
  AFTER UPDATE ON positions
  FOR EACH ROW WHEN (OLD.protection IS DISTINCT FROM NEW.protection)
  EXECUTE FUNCTION record_protection_event();

-- Lost orders: since when an order the exchange acknowledged has been answered "Order does
-- not exist." (-2013) on every lookup (NULL: found on the last one). Once that lasts
-- execution.lost_order_seconds the worker marks it lost (cancelled, exchange_status LOST).
ALTER TABLE orders ADD COLUMN missing_since TIMESTAMPTZ;

-- The watcher's pass over worker-protected positions (worker/db/execution.sql
-- exec_worker_watch) reads only these.
CREATE INDEX idx_positions_worker_protected ON positions (id)
  WHERE protection = 'worker' AND status IN ('open', 'monitoring');
