-- The lifecycle, enforced by the database: transition guards, updated_at, the audit trail
-- that doubles as the worker's outbox, the spec's pg_notify, and signal status.
--
-- Cost matters here: every statement below runs inside the commit of every state change.
-- Triggers are gated by WHEN clauses (evaluated in C, no PL/pgSQL call when they do not
-- apply) and a state change writes exactly one extra row (position_events).

-- ---------------------------------------------------------------------------------------
-- updated_at (spec)
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at = NOW();
  RETURN NEW;
END;
$$;

CREATE TRIGGER update_positions_updated_at
  BEFORE UPDATE ON positions
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_orders_updated_at
  BEFORE UPDATE ON orders
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------------------------------
-- Transition tables. The spec's table plus two deliberate extensions (README "Lifecycle"):
--   created -> failed          the entry was refused before anything reached the exchange
--   closing -> open|monitoring the exit order failed while a holding remains: the position
--                              goes back under management instead of being written off as
--                              failed with coins still on the exchange.
-- worker/lifecycle.py holds the same table; tests check that the two agree.
CREATE OR REPLACE FUNCTION position_transition_allowed(old_status text, new_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_status
    WHEN 'created'    THEN new_status IN ('submitting', 'failed')
    WHEN 'submitting' THEN new_status IN ('open', 'failed')
    WHEN 'open'       THEN new_status IN ('monitoring', 'closing')
    WHEN 'monitoring' THEN new_status IN ('closing')
    WHEN 'closing'    THEN new_status IN ('closed', 'failed', 'open', 'monitoring')
    ELSE false
  END
$$;

CREATE OR REPLACE FUNCTION order_transition_allowed(old_status text, new_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_status
    WHEN 'created'          THEN new_status IN ('submitted', 'failed', 'cancelled')
    WHEN 'submitted'        THEN new_status IN ('partially_filled', 'filled', 'cancelled', 'failed')
    WHEN 'partially_filled' THEN new_status IN ('filled', 'cancelled')
    ELSE false
  END
$$;

-- SQLSTATE PW001 / PW002: the worker maps these to IllegalTransition.
CREATE OR REPLACE FUNCTION guard_position_transition() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    RAISE EXCEPTION 'a new position must start in status created, not %', NEW.status
      USING ERRCODE = 'PW001';
  END IF;
  IF NOT position_transition_allowed(OLD.status, NEW.status) THEN
    RAISE EXCEPTION 'illegal position transition: % -> % (position %)',
      OLD.status, NEW.status, OLD.id
      USING ERRCODE = 'PW001',
            HINT = 'allowed: created->submitting|failed, submitting->open|failed, '
                   'open->monitoring|closing, monitoring->closing, '
                   'closing->closed|failed|open|monitoring';
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER guard_position_insert
  BEFORE INSERT ON positions
  FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM 'created')
  EXECUTE FUNCTION guard_position_transition();

CREATE TRIGGER guard_position_transition
  BEFORE UPDATE OF status ON positions
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION guard_position_transition();

CREATE OR REPLACE FUNCTION guard_order_transition() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    RAISE EXCEPTION 'a new order must start in status created, not %', NEW.status
      USING ERRCODE = 'PW002';
  END IF;
  IF NOT order_transition_allowed(OLD.status, NEW.status) THEN
    RAISE EXCEPTION 'illegal order transition: % -> % (order %)',
      OLD.status, NEW.status, OLD.id
      USING ERRCODE = 'PW002',
            HINT = 'allowed: created->submitted|failed|cancelled, '
                   'submitted->partially_filled|filled|cancelled|failed, '
                   'partially_filled->filled|cancelled';
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER guard_order_insert
  BEFORE INSERT ON orders
  FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM 'created')
  EXECUTE FUNCTION guard_order_transition();

CREATE TRIGGER guard_order_transition
  BEFORE UPDATE OF status ON orders
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION guard_order_transition();

-- ---------------------------------------------------------------------------------------
-- The audit trail, which is also the worker's outbox.
--
-- One table, one row per event, written in the same transaction as the change. Its first
-- columns are the audit record (never changed: UPDATE and DELETE are revoked from every
-- role but the owner); the last ones are the outbox's delivery state, written only by the
-- worker (connected as the owner). One INSERT per state change is the cheapest durable
-- trigger path: a separate outbox table would double the writes on the commit path.
-- The event id is the bigint primary key (sequence values commit out of order, so the
-- worker claims by state with SKIP LOCKED, never by an id cursor).
CREATE TABLE position_events (
  id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  occurred_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
  kind        VARCHAR(10) NOT NULL CHECK (kind IN ('position', 'order', 'trade', 'request')),
  position_id UUID NOT NULL,
  order_id    UUID,
  user_id     UUID NOT NULL,
  symbol      VARCHAR(20) NOT NULL,
  old_status  VARCHAR(20),
  new_status  VARCHAR(20),
  actor_role  TEXT NOT NULL,         -- database role that made the change
  actor_uid   UUID,                  -- auth.uid() of the request, when there is one
  data        JSONB,                 -- amounts at the time of the event, as decimal strings
  -- delivery state (outbox), owned by the worker
  processed_at TIMESTAMPTZ,          -- published and handled
  dead_at      TIMESTAMPTZ,          -- parked after too many failed attempts
  attempts     INTEGER NOT NULL DEFAULT 0,
  available_at TIMESTAMPTZ,          -- retry backoff: not before this time
  lease_until  TIMESTAMPTZ,          -- claimed by lease_owner until then
  lease_owner  TEXT,
  last_error   TEXT
);

-- Claiming: pending events in id order ...
CREATE INDEX idx_position_events_pending ON position_events (id)
  WHERE processed_at IS NULL AND dead_at IS NULL;
-- ... and the few in flight (leased, or waiting out a retry delay). Rows enter this index
-- only when the worker claims them, never on the INSERT of the commit path.
CREATE INDEX idx_position_events_in_flight ON position_events (position_id)
  WHERE processed_at IS NULL AND dead_at IS NULL
    AND (lease_until IS NOT NULL OR available_at IS NOT NULL);
-- The audit trail of one position.
CREATE INDEX idx_position_events_position ON position_events (position_id, id);

-- Who made a change: inside the SECURITY DEFINER functions below current_user is the
-- owner, so read the role the caller is acting as (SET ROLE), else the login role.
CREATE OR REPLACE FUNCTION _event_actor_role() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text
              ELSE current_setting('role') END
$$;

-- Position created or its status changed: audit/outbox row + the spec's notification.
CREATE OR REPLACE FUNCTION notify_position_state_change() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  old_status text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
BEGIN
  INSERT INTO position_events
    (kind, position_id, user_id, symbol, old_status, new_status, actor_role, actor_uid, data)
  VALUES ('position', NEW.id, NEW.user_id, NEW.symbol, old_status, NEW.status,
          _event_actor_role(), auth.uid(),
          jsonb_strip_nulls(jsonb_build_object(
            'side', NEW.side,
            'is_paper_trade', NEW.is_paper_trade,
            'entry_price', NEW.entry_price::text,
            'entry_quantity', NEW.entry_quantity::text,
            'entry_value', NEW.entry_value::text,
            'held_quantity', NEW.held_quantity::text,
            'exit_price', NEW.exit_price::text,
            'exit_quantity', NEW.exit_quantity::text,
            'exit_value', NEW.exit_value::text,
            'realized_pnl', NEW.realized_pnl::text,
            'realized_pnl_percent', NEW.realized_pnl_percent::text,
            'fees_paid', NEW.fees_paid::text,
            'failure_reason', NEW.failure_reason,
            'close_reason', NEW.close_reason)));
  PERFORM pg_notify(
    'position_state_change',
    json_build_object(
      'position_id', NEW.id,
      'old_status', old_status,
      'new_status', NEW.status,
      'user_id', NEW.user_id,
      'symbol', NEW.symbol
    )::text
  );
  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_position_created
  AFTER INSERT ON positions
  FOR EACH ROW EXECUTE FUNCTION notify_position_state_change();

CREATE TRIGGER trigger_position_state_change
  AFTER UPDATE ON positions
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION notify_position_state_change();

-- Order created or its status changed; fills recorded. These wake the worker on a second
-- channel with an empty payload (identical payloads in one transaction collapse into one
-- notification), so position_state_change keeps exactly the spec's payload.
CREATE OR REPLACE FUNCTION record_order_event() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  -- Hold the position's row lock until commit, like a position change does: the events of
  -- one position then get increasing ids in commit order (the worker relies on it).
  PERFORM 1 FROM positions WHERE id = NEW.position_id FOR NO KEY UPDATE;
  INSERT INTO position_events
    (kind, position_id, order_id, user_id, symbol, old_status, new_status,
     actor_role, actor_uid, data)
  VALUES ('order', NEW.position_id, NEW.id, NEW.user_id, NEW.symbol,
          CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
          _event_actor_role(), auth.uid(),
          jsonb_strip_nulls(jsonb_build_object(
            'client_order_id', NEW.client_order_id,
            'binance_order_id', NEW.binance_order_id,
            'purpose', NEW.purpose,
            'side', NEW.side,
            'type', NEW.type,
            'quantity', NEW.quantity::text,
            'quote_quantity', NEW.quote_quantity::text,
            'price', NEW.price::text,
            'stop_price', NEW.stop_price::text,
            'filled_quantity', NEW.filled_quantity::text,
            'avg_fill_price', NEW.avg_fill_price::text,
            'fees', NEW.fees::text,
            'is_paper_trade', NEW.is_paper_trade,
            'error_message', NEW.error_message)));
  PERFORM pg_notify('position_worker_wakeup', '');
  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_order_created
  AFTER INSERT ON orders
  FOR EACH ROW EXECUTE FUNCTION record_order_event();

CREATE TRIGGER trigger_order_state_change
  AFTER UPDATE ON orders
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION record_order_event();

CREATE OR REPLACE FUNCTION record_trade_event() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  owner uuid;
BEGIN
  -- Same row lock as record_order_event(), and the owner for the audit row.
  SELECT user_id INTO owner FROM positions WHERE id = NEW.position_id FOR NO KEY UPDATE;
  INSERT INTO position_events
    (kind, position_id, order_id, user_id, symbol, actor_role, actor_uid, data)
  VALUES ('trade', NEW.position_id, NEW.order_id, owner, NEW.symbol,
         _event_actor_role(), auth.uid(),
         jsonb_strip_nulls(jsonb_build_object(
           'trade_id', NEW.id,
           'binance_trade_id', NEW.binance_trade_id,
           'side', NEW.side,
           'price', NEW.price::text,
           'quantity', NEW.quantity::text,
           'value', NEW.value::text,
           'fee', NEW.fee::text,
           'fee_asset', NEW.fee_asset,
           'fee_quote', NEW.fee_quote::text,
           'is_paper_trade', NEW.is_paper_trade,
           'executed_at', NEW.executed_at)));
  PERFORM pg_notify('position_worker_wakeup', '');
  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_trade_recorded
  AFTER INSERT ON trades
  FOR EACH ROW EXECUTE FUNCTION record_trade_event();

-- ---------------------------------------------------------------------------------------
-- Signal status follows its position (spec), gated so it costs nothing on other changes.
CREATE OR REPLACE FUNCTION update_signal_from_position() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  -- Position opened -> signal status = 'in_position'
  IF NEW.status = 'open' AND OLD.status != 'open' THEN
    UPDATE signals
    SET status = 'in_position', updated_at = NOW()
    WHERE id = NEW.signal_id;
  END IF;

  -- Position closed -> signal status = 'completed'
  IF NEW.status = 'closed' AND OLD.status != 'closed' THEN
    UPDATE signals
    SET status = 'completed', closed_at = NOW(), updated_at = NOW()
    WHERE id = NEW.signal_id;
  END IF;

  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_update_signal_from_position
  AFTER UPDATE ON positions
  FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('open', 'closed'))
  EXECUTE FUNCTION update_signal_from_position();
