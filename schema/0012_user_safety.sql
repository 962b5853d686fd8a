-- What a user may do with their own JWT, enforced by the database whatever the privileges the
-- platform grants by default (docs/security.md). Grants themselves live in R__privileges.sql,
-- which every migrate re-asserts; this file holds the rules grants cannot express.

-- ---------------------------------------------------------------------------------------
-- The ledger of objects this project created (worker/db/migrate.py keeps it from now on).
-- A database migrated before it existed gets the objects migrations 0001-0011 create, where
-- they exist and belong to the migrating role.
INSERT INTO schema_objects (kind, name, version)
SELECT o.kind, o.name, 0
FROM (VALUES
  ('table', 'public.traders'), ('table', 'public.signals'), ('table', 'public.positions'),
  ('table', 'public.orders'), ('table', 'public.trades'), ('table', 'public.position_events'),
  ('table', 'public.position_requests'), ('sequence', 'public.position_events_id_seq'),
  ('table', 'auth.users')
) AS o (kind, name)
WHERE NOT EXISTS (SELECT 1 FROM schema_objects WHERE version IS NOT NULL)
  AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = to_regclass(o.name)
              AND c.relowner = current_user::regrole)
ON CONFLICT DO NOTHING;

INSERT INTO schema_objects (kind, name, version)
SELECT 'function', format('%I.%I(%s)', n.nspname, p.proname,
                          oidvectortypes(p.proargtypes)), 0
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM schema_objects WHERE version IS NOT NULL)
  AND p.proowner = current_user::regrole
  AND ((n.nspname = 'auth' AND p.proname = 'uid')
       OR (n.nspname = 'public' AND p.proname IN (
         'update_updated_at_column', 'position_transition_allowed', 'order_transition_allowed',
         'guard_position_transition', 'guard_order_transition', '_event_actor_role',
         'notify_position_state_change', 'record_order_event', 'record_trade_event',
         'update_signal_from_position', 'record_request_event', '_lock_position_for_request',
         '_check_request_reason', 'request_position_exit', 'request_position_scale_in',
         'outbox_claim', 'outbox_mark_processed')))
ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------------------------------
-- The operator role: a platform grants it to the login roles of the people who run it.
-- It may act on any position through the request functions and set users' limits.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'position_worker_operator')
     AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
    CREATE ROLE position_worker_operator NOLOGIN;
  END IF;
END
$$;

-- Who is privileged, by allow-list: the owner of the tables (the worker, the migrating role),
-- service_role (the platform's backend), and members of position_worker_operator. Every other
-- role, authenticated and anon included, and any role a platform adds (a tier role that
-- inherits authenticated, say), is an end user who acts only on rows auth.uid() owns.
-- The role is the one the caller acts as (SET ROLE, as PostgREST does), else the login role.
CREATE FUNCTION _is_privileged() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  who text := _event_actor_role();
  owner_role oid := (SELECT relowner FROM pg_class WHERE oid = 'public.positions'::regclass);
BEGIN
  IF who = 'service_role' OR who = pg_get_userbyid(owner_role) THEN
    RETURN true;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = who) THEN
    RETURN false;
  END IF;
  RETURN (SELECT rolsuper FROM pg_roles WHERE rolname = who)
      OR pg_has_role(who, owner_role, 'MEMBER')
      OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'position_worker_operator')
          AND pg_has_role(who, 'position_worker_operator', 'MEMBER'));
END;
$$;

CREATE OR REPLACE FUNCTION _lock_position_for_request(p_position_id uuid)
RETURNS positions LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions;
BEGIN
  SELECT * INTO pos FROM positions WHERE id = p_position_id FOR UPDATE;
  IF NOT FOUND OR (NOT _is_privileged() AND pos.user_id IS DISTINCT FROM auth.uid()) THEN
    RAISE EXCEPTION 'position % not found', p_position_id USING ERRCODE = 'PW010';
  END IF;
  RETURN pos;
END;
$$;

-- An end user asks for themselves ('user'); the other reasons say the platform, the AI or
-- the worker's own protection asked, and only a privileged role may give them.
CREATE OR REPLACE FUNCTION _check_request_reason(p_reason text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  IF p_reason IS NULL OR p_reason NOT IN
     ('user', 'ai', 'operator', 'stop_loss', 'take_profit', 'max_loss') THEN
    RAISE EXCEPTION 'unknown reason %: use user, ai, operator, stop_loss, take_profit or max_loss',
      coalesce(p_reason, 'NULL') USING ERRCODE = 'PW011';
  END IF;
  IF p_reason <> 'user' AND NOT _is_privileged() THEN
    RAISE EXCEPTION 'reason % is reserved to the platform: end users ask with reason user',
      p_reason USING ERRCODE = 'PW011';
  END IF;
END;
$$;

-- Amounts are DECIMAL(20, 8): a value with more decimals would be rounded on the way in, and
-- a request must do exactly what it says or nothing.
CREATE FUNCTION _check_amount(p_name text, p_value numeric) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_value IS NULL THEN
    RETURN;
  END IF;
  IF p_value = 'NaN' OR p_value <= 0 OR p_value >= 1e12 THEN
    RAISE EXCEPTION '% must be positive and below 10^12, got %', p_name, p_value
      USING ERRCODE = 'PW013';
  END IF;
  IF p_value <> round(p_value, 8) THEN
    RAISE EXCEPTION '% has more than 8 decimals: %', p_name, p_value
      USING ERRCODE = 'PW013', HINT = 'amounts are stored with 8 decimals; round it yourself';
  END IF;
END;
$$;

CREATE OR REPLACE FUNCTION request_position_exit(
  p_position_id uuid, p_quantity numeric DEFAULT NULL, p_reason text DEFAULT 'user')
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pos positions := _lock_position_for_request(p_position_id);
  req uuid;
BEGIN
  PERFORM _check_request_reason(p_reason);
  IF pos.status = 'submitting' AND p_quantity IS NOT NULL THEN
    RAISE EXCEPTION 'position % is submitting: only a full exit (no quantity) can be requested '
      'before the entry completes', p_position_id USING ERRCODE = 'PW012';
  END IF;
  IF pos.status NOT IN ('submitting', 'open', 'monitoring') THEN
    RAISE EXCEPTION 'position % is %: only a submitting, open or monitoring position can be '
      'exited', p_position_id, pos.status USING ERRCODE = 'PW012';
  END IF;
  PERFORM _check_amount('exit quantity', p_quantity);
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
  IF (p_quantity IS NULL) = (p_quote_quantity IS NULL) THEN
    RAISE EXCEPTION 'give exactly one positive amount: a quantity or a quote quantity'
      USING ERRCODE = 'PW013';
  END IF;
  PERFORM _check_amount('scale-in quantity', p_quantity);
  PERFORM _check_amount('scale-in quote quantity', p_quote_quantity);
  INSERT INTO position_requests (position_id, user_id, kind, quantity, quote_quantity, reason)
  VALUES (p_position_id, pos.user_id, 'scale_in', p_quantity, p_quote_quantity, p_reason)
  RETURNING id INTO req;
  RETURN req;
END;
$$;

-- The entry a user asks for is refused, not rounded, when it has more than 8 decimals: these
-- two columns take any numeric so that the check below sees what was written.
ALTER TABLE positions
  ALTER COLUMN requested_quantity TYPE NUMERIC,
  ALTER COLUMN requested_quote TYPE NUMERIC,
  ADD CONSTRAINT positions_requested_bounds CHECK (
    requested_quantity < 1e12 AND requested_quote < 1e12);

CREATE FUNCTION check_entry_amounts() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.requested_quantity <> round(NEW.requested_quantity, 8)
     OR NEW.requested_quote <> round(NEW.requested_quote, 8) THEN
    RAISE EXCEPTION 'requested amounts have at most 8 decimals: quantity %, quote %',
      NEW.requested_quantity, NEW.requested_quote
      USING ERRCODE = 'PW013', HINT = 'amounts are stored with 8 decimals; round it yourself';
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER check_entry_amounts
  BEFORE INSERT OR UPDATE OF requested_quantity, requested_quote ON positions
  FOR EACH ROW EXECUTE FUNCTION check_entry_amounts();

-- ---------------------------------------------------------------------------------------
-- The worker's own orders: rows whose client order id is exactly the one the worker gives a
-- row it writes, 'pw-' || <purpose code> || <the row's uuid in 32 hex digits>
-- (worker/execution/client_ids.py: client_order_id, is_worker_order). Every engine query reads
-- orders through it, so a row written any other way is never sent, cancelled or counted.
-- Re-create it when orders gains a column (SELECT * is expanded at creation).
CREATE VIEW worker_orders AS
SELECT * FROM orders o
WHERE o.client_order_id = 'pw-' || CASE o.purpose
    WHEN 'entry' THEN 'e' WHEN 'exit' THEN 'x' WHEN 'scale_in' THEN 'i'
    WHEN 'scale_out' THEN 'o' WHEN 'stop_loss' THEN 's' WHEN 'take_profit' THEN 't'
  END || replace(o.id::text, '-', '');

-- ---------------------------------------------------------------------------------------
-- Quotas: per-user limits on what an end user may ask for. Defaults in one row; a row per
-- user overrides them (NULL: the default). Privileged callers are not limited (the worker's
-- own stop-loss exit must never be refused). SQLSTATE PW015, nothing written.
CREATE TABLE user_limit_defaults (
  singleton               BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
  max_open_positions      INTEGER NOT NULL CHECK (max_open_positions >= 0),
  max_pending_requests    INTEGER NOT NULL CHECK (max_pending_requests >= 0),
  max_requests_per_minute INTEGER NOT NULL CHECK (max_requests_per_minute >= 0),
  updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO user_limit_defaults (max_open_positions, max_pending_requests,
                                 max_requests_per_minute)
VALUES (50, 10, 30);

CREATE TABLE user_limits (
  user_id                 UUID PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
  max_open_positions      INTEGER CHECK (max_open_positions >= 0),
  max_pending_requests    INTEGER CHECK (max_pending_requests >= 0),
  max_requests_per_minute INTEGER CHECK (max_requests_per_minute >= 0),
  updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER update_user_limits_updated_at
  BEFORE UPDATE ON user_limits
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_user_limit_defaults_updated_at
  BEFORE UPDATE ON user_limit_defaults
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE INDEX idx_positions_user_live ON positions (user_id)
  WHERE status NOT IN ('closed', 'failed');
CREATE INDEX idx_position_requests_user ON position_requests (user_id, created_at);
CREATE INDEX idx_position_requests_user_pending ON position_requests (user_id)
  WHERE status = 'pending';

-- Counts stop at the limit: a check costs at most `limit` index entries, however much
-- history the user has.
CREATE FUNCTION _quota_exceeded(p_what text, p_limit integer, p_user uuid) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RAISE EXCEPTION 'quota exceeded: % (limit %) for user %', p_what, p_limit, p_user
    USING ERRCODE = 'PW015',
          HINT = 'an operator can raise it per user in user_limits';
END;
$$;

CREATE FUNCTION enforce_position_quota() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  lim integer;
BEGIN
  IF _is_privileged() THEN
    RETURN NEW;
  END IF;
  -- one user's inserts in turn, so that two at once cannot both take the last place
  PERFORM pg_advisory_xact_lock(hashtextextended(NEW.user_id::text, 7366));
  SELECT coalesce(u.max_open_positions, d.max_open_positions) INTO lim
  FROM user_limit_defaults d LEFT JOIN user_limits u ON u.user_id = NEW.user_id;
  IF (SELECT count(*) FROM (SELECT 1 FROM positions
      WHERE user_id = NEW.user_id AND status NOT IN ('closed', 'failed') LIMIT lim) s) >= lim
  THEN
    PERFORM _quota_exceeded('open positions', lim, NEW.user_id);
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER enforce_position_quota
  BEFORE INSERT ON positions
  FOR EACH ROW EXECUTE FUNCTION enforce_position_quota();

CREATE FUNCTION enforce_request_quota() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  pending_limit integer;
  rate_limit integer;
BEGIN
  IF _is_privileged() THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(NEW.user_id::text, 7366));
  SELECT coalesce(u.max_pending_requests, d.max_pending_requests),
         coalesce(u.max_requests_per_minute, d.max_requests_per_minute)
  INTO pending_limit, rate_limit
  FROM user_limit_defaults d LEFT JOIN user_limits u ON u.user_id = NEW.user_id;
  IF (SELECT count(*) FROM (SELECT 1 FROM position_requests
      WHERE user_id = NEW.user_id AND status = 'pending' LIMIT pending_limit) s)
     >= pending_limit THEN
    PERFORM _quota_exceeded('pending requests', pending_limit, NEW.user_id);
  END IF;
  IF (SELECT count(*) FROM (SELECT 1 FROM position_requests
      WHERE user_id = NEW.user_id AND created_at > now() - interval '1 minute'
      LIMIT rate_limit) s) >= rate_limit THEN
    PERFORM _quota_exceeded('requests per minute', rate_limit, NEW.user_id);
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER enforce_request_quota
  BEFORE INSERT ON position_requests
  FOR EACH ROW EXECUTE FUNCTION enforce_request_quota();

ALTER TABLE user_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_limit_defaults ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_limits_select_own ON user_limits FOR SELECT
  USING (auth.uid() = user_id);
CREATE POLICY user_limit_defaults_select ON user_limit_defaults FOR SELECT USING (true);

-- ---------------------------------------------------------------------------------------
-- Sizes of what users write. NOT VALID: enforced on every new or changed row, without
-- scanning what is already there.
ALTER TABLE positions ADD CONSTRAINT positions_metadata_size
  CHECK (metadata IS NULL OR octet_length(metadata::text) <= 65536) NOT VALID;
DO $$
BEGIN
  -- traders may be the platform's own table: only bound the one this project created
  IF EXISTS (SELECT 1 FROM schema_objects WHERE kind = 'table' AND name = 'public.traders') THEN
    ALTER TABLE traders ADD CONSTRAINT traders_name_size
      CHECK (char_length(name) <= 200) NOT VALID;
  END IF;
END
$$;

-- ---------------------------------------------------------------------------------------
-- The audit trail as users may read it: the record of what happened, not the worker's
-- delivery state (attempts, errors with internal detail, retry times). Users read this view
-- (row-level security of position_events applies: security_invoker).
CREATE VIEW position_audit WITH (security_invoker = true) AS
SELECT id, occurred_at, kind, position_id, order_id, user_id, symbol, old_status,
       new_status, actor_role, actor_uid, data
FROM position_events;

-- The operator reads everything and manages limits (it has no BYPASSRLS: policies say so).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'position_worker_operator') THEN
    CREATE POLICY positions_operator_read ON positions FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY orders_operator_read ON orders FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY trades_operator_read ON trades FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY position_events_operator_read ON position_events FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY position_requests_operator_read ON position_requests FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY user_limits_operator ON user_limits FOR ALL
      TO position_worker_operator USING (true) WITH CHECK (true);
    CREATE POLICY user_limit_defaults_operator ON user_limit_defaults FOR UPDATE
      TO position_worker_operator USING (true) WITH CHECK (true);
  END IF;
END
$$;
