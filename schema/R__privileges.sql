-- Every privilege on this project's objects, re-asserted by every `position-worker migrate`
-- (it runs after the numbered migrations, in one transaction). The README's Security table
-- and docs/security.md describe the same grants; tests/security checks them on a plain
-- PostgreSQL and on a Supabase-shaped database.
--
-- 1. Fail closed. Every object a migration created (the ledger schema_objects) loses every
--    privilege of PUBLIC, the API roles and the operator role, whatever a platform's default
--    privileges granted when it was created (Supabase grants ALL on every new table, sequence
--    and function in public to anon, authenticated and service_role). An object that a later
--    migration adds and this file does not name stays closed to them.
-- 2. Grant exactly what the list below names, on objects of the ledger only (traders and
--    signals may be the platform's own tables: then their grants are the platform's).
--
-- Only the owner (the migrating role, which the worker connects as) may TRUNCATE, take
-- REFERENCES or TRIGGER, use or set a sequence, or touch the ledgers.

DO $$
DECLARE
  o record;
  grantees text := (
    SELECT string_agg(quote_ident(rolname), ', ') FROM pg_roles
    WHERE rolname IN ('anon', 'authenticated', 'service_role', 'position_worker_operator'));
BEGIN
  FOR o IN SELECT kind, name FROM schema_objects ORDER BY kind, name LOOP
    CONTINUE WHEN (o.kind = 'function' AND to_regprocedure(o.name) IS NULL)
               OR (o.kind <> 'function' AND to_regclass(o.name) IS NULL);
    EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC, %s',
                   CASE o.kind WHEN 'function' THEN 'FUNCTION'
                               WHEN 'sequence' THEN 'SEQUENCE' ELSE 'TABLE' END,
                   o.name, grantees);
  END LOOP;
END
$$;

DO $$
DECLARE
  g record;
  roles text;
BEGIN
  FOR g IN
    SELECT t.kind, t.name, t.privileges, t.roles
    FROM (VALUES
      -- end users (authenticated): their own rows, by row-level security. protection and
      -- protection_reason (0015) are read, never written, by users: the worker's alone.
      -- record_protection_event() (0015) is a trigger function: no grant, like the others.
      ('table', 'public.positions', 'SELECT', '{authenticated,service_role,position_worker_operator}'),
      ('table', 'public.positions',
       'INSERT (id, user_id, trader_id, signal_id, symbol, side, status, requested_quantity, '
       'requested_quote, limit_price, stop_loss_price, take_profit_price, max_loss_usdt, '
       'is_paper_trade, metadata, account_id)', '{authenticated,service_role}'),
      ('table', 'public.positions',
       'UPDATE (stop_loss_price, take_profit_price, max_loss_usdt, metadata)',
       '{authenticated,service_role}'),
      ('table', 'public.orders', 'SELECT', '{authenticated,service_role,position_worker_operator}'),
      ('table', 'public.trades', 'SELECT', '{authenticated,service_role,position_worker_operator}'),
      ('table', 'public.position_requests', 'SELECT',
       '{authenticated,service_role,position_worker_operator}'),
      -- the audit trail: users read the record (position_audit), not the delivery state
      ('table', 'public.position_events',
       'SELECT (id, occurred_at, kind, position_id, order_id, user_id, symbol, old_status, '
       'new_status, actor_role, actor_uid, data)', '{authenticated}'),
      ('table', 'public.position_events', 'SELECT', '{service_role,position_worker_operator}'),
      ('table', 'public.position_audit', 'SELECT',
       '{authenticated,service_role,position_worker_operator}'),
      ('table', 'public.signals', 'SELECT, INSERT, UPDATE, DELETE', '{authenticated,service_role}'),
      ('table', 'public.traders', 'SELECT, INSERT, UPDATE, DELETE', '{authenticated,service_role}'),
      -- limits: users read theirs; the platform sets them
      ('table', 'public.user_limits', 'SELECT', '{authenticated}'),
      ('table', 'public.user_limits', 'SELECT, INSERT, UPDATE, DELETE',
       '{service_role,position_worker_operator}'),
      ('table', 'public.user_limit_defaults', 'SELECT', '{authenticated}'),
      ('table', 'public.user_limit_defaults', 'SELECT, UPDATE',
       '{service_role,position_worker_operator}'),
      -- risk limits the worker enforces: users read theirs; the platform sets them
      ('table', 'public.user_risk_limits', 'SELECT', '{authenticated}'),
      ('table', 'public.user_risk_limits', 'SELECT, INSERT, UPDATE, DELETE',
       '{service_role,position_worker_operator}'),
      -- exchange accounts: every column but api_key, by row-level security (users: their
      -- own); changed only through the functions below. The secrets (exchange_account_secrets,
      -- exchange_account_secret_inbox, Vault) are the owner's alone: not listed here.
      -- The outbox's claim functions (outbox_claim, outbox_claim_fair, outbox_mark_processed)
      -- lock and settle events: the worker's (the owner's) alone, not listed here.
      ('table', 'public.exchange_accounts',
       'SELECT (id, user_id, exchange, label, api_key_hint, key_type, status, status_reason, '
       'is_default, key_version, secret_state, checked_at, notified_at, created_at, '
       'updated_at)', '{authenticated,service_role,position_worker_operator}'),
      ('function', 'public.add_exchange_account(text, text, text, text, text, boolean)',
       'EXECUTE', '{authenticated,service_role}'),
      ('function', 'public.rotate_exchange_account_key(uuid, text, text, text)',
       'EXECUTE', '{authenticated,service_role}'),
      ('function', 'public.enable_exchange_account(uuid)', 'EXECUTE',
       '{authenticated,service_role}'),
      ('function', 'public.set_default_exchange_account(uuid)', 'EXECUTE',
       '{authenticated,service_role}'),
      ('function', 'public.delete_exchange_account(uuid)', 'EXECUTE',
       '{authenticated,service_role}'),
      -- a privileged caller may disable any account (a compromised key)
      ('function', 'public.disable_exchange_account(uuid)', 'EXECUTE',
       '{authenticated,service_role,position_worker_operator}'),
      -- paper trading state: users read their own balances and orders; only the worker
      -- (the owner) writes them
      ('table', 'public.paper_balances', 'SELECT',
       '{authenticated,service_role,position_worker_operator}'),
      ('table', 'public.paper_orders', 'SELECT',
       '{authenticated,service_role,position_worker_operator}'),
      -- requests: ownership and reasons are checked inside (allow-list of privileged roles)
      ('function', 'public.request_position_exit(uuid, numeric, text)',
       'EXECUTE', '{authenticated,service_role,position_worker_operator}'),
      ('function', 'public.request_position_scale_in(uuid, numeric, numeric, text)',
       'EXECUTE', '{authenticated,service_role,position_worker_operator}'),
      -- the stand-in for Supabase's auth.uid(), where this project created it
      ('function', 'auth.uid()', 'EXECUTE',
       '{anon,authenticated,service_role,position_worker_operator}')
    ) AS t (kind, name, privileges, roles)
    WHERE EXISTS (SELECT 1 FROM schema_objects s WHERE s.kind = t.kind AND s.name = t.name)
  LOOP
    SELECT string_agg(quote_ident(rolname), ', ') INTO roles
    FROM pg_roles WHERE rolname = ANY (g.roles::text[]);
    CONTINUE WHEN roles IS NULL;
    EXECUTE format('GRANT %s ON %s %s TO %s', g.privileges,
                   CASE g.kind WHEN 'function' THEN 'FUNCTION' ELSE 'TABLE' END, g.name, roles);
  END LOOP;
END
$$;
