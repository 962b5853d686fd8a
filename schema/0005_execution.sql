-- Execution: what users and the AI ask for (exit, scale-in) and what the worker needs to
-- drive orders safely (send attempts, missing lookups).

-- An order may have reached the exchange once send_attempts > 0: before any re-send the
-- worker looks it up by client order id, and re-sends only after it was missing
-- `missing_lookups` times in a row (an order can take a while to become visible).
ALTER TABLE orders
  ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN missing_lookups INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN request_id UUID;

-- Requests: recorded durably, picked up by the worker through the outbox like any event.
CREATE TABLE position_requests (
  id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  position_id  UUID NOT NULL REFERENCES positions(id),
  user_id      UUID NOT NULL REFERENCES auth.users(id),
  kind         VARCHAR(10) NOT NULL CHECK (kind IN ('exit', 'scale_in')),
  quantity     DECIMAL(20, 8) CHECK (quantity IS NULL OR quantity > 0), -- exit: NULL = all
  quote_quantity DECIMAL(20, 8) CHECK (quote_quantity IS NULL OR quote_quantity > 0),
  reason       VARCHAR(20) NOT NULL CHECK (reason IN
    ('user', 'ai', 'operator', 'stop_loss', 'take_profit', 'max_loss')),
  status       VARCHAR(10) NOT NULL DEFAULT 'pending' CHECK (status IN
    ('pending', 'done', 'rejected')),
  error        TEXT,
  order_id     UUID REFERENCES orders(id),
  created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_position_requests_position ON position_requests (position_id, created_at);
-- At most one pending exit per position.
CREATE UNIQUE INDEX uq_position_requests_pending_exit ON position_requests (position_id)
  WHERE kind = 'exit' AND status = 'pending';

CREATE TRIGGER update_position_requests_updated_at
  BEFORE UPDATE ON position_requests
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE OR REPLACE FUNCTION record_request_event() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  sym text;
BEGIN
  SELECT symbol INTO sym FROM positions WHERE id = NEW.position_id FOR NO KEY UPDATE;
  INSERT INTO position_events
    (kind, position_id, user_id, symbol, new_status, actor_role, actor_uid, data)
  VALUES ('request', NEW.position_id, NEW.user_id, sym, NEW.kind,
          _event_actor_role(), auth.uid(),
          jsonb_strip_nulls(jsonb_build_object(
            'request_id', NEW.id,
            'request_kind', NEW.kind,
            'quantity', NEW.quantity::text,
            'quote_quantity', NEW.quote_quantity::text,
            'reason', NEW.reason)));
  PERFORM pg_notify('position_worker_wakeup', '');
  RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_request_recorded
  AFTER INSERT ON position_requests
  FOR EACH ROW EXECUTE FUNCTION record_request_event();

-- The caller may act on this position: its owner (auth.uid()), or a privileged role (the
-- worker, an operator, service_role) that carries no end-user identity. Anyone else gets
-- the same answer as for a position that does not exist.
CREATE OR REPLACE FUNCTION _lock_position_for_request(p_position_id uuid)
RETURNS positions LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions;
  role text := _event_actor_role();
BEGIN
  SELECT * INTO pos FROM positions WHERE id = p_position_id FOR UPDATE;
  IF NOT FOUND
     OR (role IN ('authenticated', 'anon') AND pos.user_id IS DISTINCT FROM auth.uid()) THEN
    RAISE EXCEPTION 'position % not found', p_position_id USING ERRCODE = 'PW010';
  END IF;
  RETURN pos;
END;
$$;

CREATE OR REPLACE FUNCTION _check_request_reason(p_reason text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_reason IS NULL OR p_reason NOT IN
     ('user', 'ai', 'operator', 'stop_loss', 'take_profit', 'max_loss') THEN
    RAISE EXCEPTION 'unknown reason %: use user, ai, operator, stop_loss, take_profit or max_loss',
      coalesce(p_reason, 'NULL') USING ERRCODE = 'PW011';
  END IF;
END;
$$;

-- Ask for an exit: all of what is held (p_quantity NULL) or part of it (scale-out).
CREATE OR REPLACE FUNCTION request_position_exit(
  p_position_id uuid, p_quantity numeric DEFAULT NULL, p_reason text DEFAULT 'user')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions := _lock_position_for_request(p_position_id);
  req uuid;
BEGIN
  PERFORM _check_request_reason(p_reason);
  IF pos.status NOT IN ('open', 'monitoring') THEN
    RAISE EXCEPTION 'position % is %: only an open or monitoring position can be exited',
      p_position_id, pos.status USING ERRCODE = 'PW012';
  END IF;
  IF p_quantity IS NOT NULL AND p_quantity <= 0 THEN
    RAISE EXCEPTION 'exit quantity must be positive, got %', p_quantity USING ERRCODE = 'PW013';
  END IF;
  IF p_quantity IS NOT NULL AND p_quantity > coalesce(pos.held_quantity, 0) THEN
    RAISE EXCEPTION 'exit quantity % is more than the % held', p_quantity,
      coalesce(pos.held_quantity, 0) USING ERRCODE = 'PW013';
  END IF;
  IF EXISTS (SELECT 1 FROM position_requests WHERE position_id = p_position_id
             AND kind = 'exit' AND status = 'pending') THEN
    RAISE EXCEPTION 'position % already has an exit pending', p_position_id
      USING ERRCODE = 'PW014';
  END IF;
  INSERT INTO position_requests (position_id, user_id, kind, quantity, reason)
  VALUES (p_position_id, pos.user_id, 'exit',
          CASE WHEN p_quantity = pos.held_quantity THEN NULL ELSE p_quantity END, p_reason)
  RETURNING id INTO req;
  RETURN req;
END;
$$;

-- Ask to add to a position: a base quantity or a quote (USDT) amount.
CREATE OR REPLACE FUNCTION request_position_scale_in(
  p_position_id uuid, p_quantity numeric DEFAULT NULL, p_quote_quantity numeric DEFAULT NULL,
  p_reason text DEFAULT 'user')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions := _lock_position_for_request(p_position_id);
  req uuid;
BEGIN
  PERFORM _check_request_reason(p_reason);
  IF pos.status NOT IN ('open', 'monitoring') THEN
    RAISE EXCEPTION 'position % is %: only an open or monitoring position can be scaled in',
      p_position_id, pos.status USING ERRCODE = 'PW012';
  END IF;
  IF (p_quantity IS NULL) = (p_quote_quantity IS NULL)
     OR coalesce(p_quantity, p_quote_quantity) <= 0 THEN
    RAISE EXCEPTION 'give exactly one positive amount: a quantity or a quote quantity'
      USING ERRCODE = 'PW013';
  END IF;
  INSERT INTO position_requests (position_id, user_id, kind, quantity, quote_quantity, reason)
  VALUES (p_position_id, pos.user_id, 'scale_in', p_quantity, p_quote_quantity, p_reason)
  RETURNING id INTO req;
  RETURN req;
END;
$$;

ALTER TABLE position_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY position_requests_select_own ON position_requests FOR SELECT
  USING (auth.uid() = user_id);
REVOKE ALL ON position_requests FROM PUBLIC, anon;
GRANT SELECT ON position_requests TO authenticated;
GRANT SELECT, INSERT, UPDATE ON position_requests TO service_role;

REVOKE ALL ON FUNCTION request_position_exit(uuid, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION request_position_scale_in(uuid, numeric, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _lock_position_for_request(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION record_request_event() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION request_position_exit(uuid, numeric, text)
  TO authenticated, service_role;
GRANT EXECUTE ON FUNCTION request_position_scale_in(uuid, numeric, numeric, text)
  TO authenticated, service_role;
