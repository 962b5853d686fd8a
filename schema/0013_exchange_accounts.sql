-- Every user trades their own exchange account, within limits the platform sets
-- (docs/security.md, "Exchange-account secrets: where they live and who can read them").
--
-- * exchange_accounts: one row per API key of a user; users read the harmless columns of
--   their own rows (not api_key) and change them only through the functions below.
-- * The API secret is write-only. Supabase Vault where it exists (vault.create_secret), else
--   an UNLOGGED inbox the worker empties by sealing the secret with a key of its own
--   (exchange_account_secrets). No role but the owner reads either.
-- * positions.account_id: the account a position trades on, tied to the position's user by
--   a composite foreign key, so no writer can put a position on another user's account.
-- * user_risk_limits: per-user limits the worker enforces at entry validation.
--
-- SQLSTATEs: PW016 account not found (also another user's), PW017 invalid argument, PW018
-- account in use, PW015 quota (as 0012). No message names a value the caller gave but the
-- account id: an argument given in the wrong place may be the secret.

-- ---------------------------------------------------------------------------------------
-- Quota: exchange accounts per user (0012's defaults and per-user overrides).
ALTER TABLE user_limit_defaults
  ADD COLUMN max_exchange_accounts INTEGER NOT NULL DEFAULT 10
    CHECK (max_exchange_accounts >= 0);
ALTER TABLE user_limits
  ADD COLUMN max_exchange_accounts INTEGER CHECK (max_exchange_accounts >= 0);

-- ---------------------------------------------------------------------------------------
-- The accounts. Only the functions below (SECURITY DEFINER, owner) and the worker (owner)
-- write this table: its constraints never see a value a caller gave that the functions have
-- not checked first, so no constraint error prints a caller's row.
CREATE TABLE exchange_accounts (
  id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id       UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  exchange      TEXT NOT NULL CHECK (exchange IN ('binance', 'binance_testnet')),
  label         TEXT NOT NULL,
  api_key       TEXT NOT NULL,
  -- what a user sees of the key (the key itself is the owner's alone)
  api_key_hint  TEXT GENERATED ALWAYS AS ('...' || right(api_key, 4)) STORED,
  key_type      TEXT NOT NULL CHECK (key_type IN ('hmac', 'ed25519', 'rsa')),
  status        TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'disabled', 'invalid')),
  status_reason TEXT CHECK (char_length(status_reason) <= 500),
  is_default    BOOLEAN NOT NULL DEFAULT false,
  -- incremented by every rotation: the worker rebuilds its client when it changes
  key_version   INTEGER NOT NULL DEFAULT 1 CHECK (key_version >= 1),
  -- pending: the plaintext waits in exchange_account_secret_inbox for the worker to seal it
  -- (pending with no inbox row: lost in a crash, see the inbox below); sealed: ciphertext in
  -- exchange_account_secrets; vault: in Supabase Vault, its id in exchange_account_secrets
  secret_state  TEXT NOT NULL CHECK (secret_state IN ('pending', 'sealed', 'vault')),
  checked_at    TIMESTAMPTZ,  -- NULL: keys not checked by the worker since add/rotate/enable
  notified_at   TIMESTAMPTZ,  -- the worker's: when it published the status notification
  created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT exchange_accounts_id_user UNIQUE (id, user_id),  -- positions' composite FK
  CONSTRAINT exchange_accounts_label_unique UNIQUE (user_id, label),
  CONSTRAINT exchange_accounts_label_format CHECK (
    char_length(label) BETWEEN 1 AND 64 AND btrim(label) <> ''
    AND label !~ '[\x01-\x1f\x7f-\x9f]'),
  CONSTRAINT exchange_accounts_api_key_format CHECK (
    char_length(api_key) BETWEEN 1 AND 256 AND api_key ~ '^[!-~]+$')
);

-- one default account per user
CREATE UNIQUE INDEX uq_exchange_accounts_default ON exchange_accounts (user_id)
  WHERE is_default;

CREATE TRIGGER update_exchange_accounts_updated_at
  BEFORE UPDATE ON exchange_accounts
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- The sealed secret, or the id of the Vault secret. Nobody but the owner reads it.
CREATE TABLE exchange_account_secrets (
  account_id      UUID PRIMARY KEY REFERENCES exchange_accounts(id) ON DELETE CASCADE,
  ciphertext      BYTEA,  -- AES-GCM by the worker, key from its environment
  key_id          TEXT,   -- which of the worker's keys sealed it
  vault_secret_id UUID,   -- vault.secrets.id
  sealed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT exchange_account_secrets_one_place CHECK (
    (ciphertext IS NULL) = (key_id IS NULL)
    AND (ciphertext IS NULL) <> (vault_secret_id IS NULL))
);

-- The plaintext between the user's call and the worker's sealing (no Vault). UNLOGGED: the
-- plaintext never reaches the WAL, so neither replicas nor base backups nor WAL archives
-- hold it. The price: an unclean shutdown (crash, failover to a replica) empties the table.
-- The account then reads secret_state = 'pending' with no inbox row, which means exactly
-- "secret lost before it was sealed": the worker marks it invalid (mark_lost_exchange_secrets
-- below) and the user rotates the key again. The only constraint is NOT NULL (its error
-- would print the row only when the secret is NULL).
CREATE UNLOGGED TABLE exchange_account_secret_inbox (
  account_id   UUID PRIMARY KEY REFERENCES exchange_accounts(id) ON DELETE CASCADE,
  api_secret   TEXT NOT NULL,
  submitted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Row-level security as a second line: no policy for end users on the secret tables.
ALTER TABLE exchange_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE exchange_account_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE exchange_account_secret_inbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY exchange_accounts_select_own ON exchange_accounts FOR SELECT
  USING (auth.uid() = user_id);

-- ---------------------------------------------------------------------------------------
-- Supabase Vault, where it is installed and the owner may use it: supabase/vault
-- sql/supabase_vault--0.3.0.sql defines vault.create_secret(new_secret text, new_name text
-- = NULL, new_description text = '', new_key_id uuid = NULL) RETURNS uuid,
-- vault.update_secret(secret_id uuid, new_secret text = NULL, new_name text = NULL,
-- new_description text = NULL, new_key_id uuid = NULL) RETURNS void, table vault.secrets
-- (id, name UNIQUE, description, secret, key_id, nonce, created_at, updated_at) and view
-- vault.decrypted_secrets (the same plus decrypted_secret). supabase/postgres
-- ansible/files/postgresql_extension_custom_scripts/supabase_vault/after-create.sql grants
-- postgres (the owner) USAGE on vault, SELECT and DELETE on both, EXECUTE on both functions.
CREATE FUNCTION _vault_available() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  -- one test at a time: has_*_privilege raises on an object that does not exist, and a
  -- list of privileges in one call means "any of them"
  IF to_regprocedure('vault.create_secret(text, text, text, uuid)') IS NULL
     OR to_regprocedure('vault.update_secret(uuid, text, text, text, uuid)') IS NULL
     OR to_regclass('vault.secrets') IS NULL OR to_regclass('vault.decrypted_secrets') IS NULL
  THEN
    RETURN false;
  END IF;
  RETURN has_schema_privilege('vault', 'USAGE')
    AND has_function_privilege('vault.create_secret(text, text, text, uuid)', 'EXECUTE')
    AND has_function_privilege('vault.update_secret(uuid, text, text, text, uuid)', 'EXECUTE')
    AND has_table_privilege('vault.secrets', 'SELECT')
    AND has_table_privilege('vault.secrets', 'DELETE')
    AND has_table_privilege('vault.decrypted_secrets', 'SELECT');
END;
$$;

-- Stores a new secret for an account, destroying the old one; returns the secret_state.
CREATE FUNCTION _store_exchange_secret(p_account_id uuid, p_secret text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  vid uuid;
BEGIN
  IF _vault_available() THEN
    SELECT vault_secret_id INTO vid FROM exchange_account_secrets
    WHERE account_id = p_account_id FOR UPDATE;
    IF vid IS NOT NULL AND EXISTS (SELECT 1 FROM vault.secrets WHERE id = vid) THEN
      PERFORM vault.update_secret(vid, p_secret);
    ELSE
      vid := vault.create_secret(p_secret, 'position_worker.exchange_account.' || p_account_id,
                                 'position-worker: API secret of an exchange account');
    END IF;
    INSERT INTO exchange_account_secrets (account_id, vault_secret_id)
    VALUES (p_account_id, vid)
    ON CONFLICT (account_id) DO UPDATE SET ciphertext = NULL, key_id = NULL,
      vault_secret_id = EXCLUDED.vault_secret_id, sealed_at = now();
    DELETE FROM exchange_account_secret_inbox WHERE account_id = p_account_id;
    RETURN 'vault';
  END IF;
  DELETE FROM exchange_account_secrets WHERE account_id = p_account_id;
  INSERT INTO exchange_account_secret_inbox (account_id, api_secret)
  VALUES (p_account_id, p_secret)
  ON CONFLICT (account_id) DO UPDATE SET api_secret = EXCLUDED.api_secret,
    submitted_at = clock_timestamp();
  RETURN 'pending';
END;
$$;

-- A Vault secret goes with the row that names it, whatever deletes that row (the delete
-- function, a cascade from auth.users, the worker).
CREATE FUNCTION _drop_vault_secret() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  DELETE FROM vault.secrets WHERE id = OLD.vault_secret_id;
  RETURN NULL;
END;
$$;

CREATE TRIGGER drop_vault_secret_on_delete
  AFTER DELETE ON exchange_account_secrets
  FOR EACH ROW WHEN (OLD.vault_secret_id IS NOT NULL)
  EXECUTE FUNCTION _drop_vault_secret();
CREATE TRIGGER drop_vault_secret_on_change
  AFTER UPDATE OF vault_secret_id ON exchange_account_secrets
  FOR EACH ROW WHEN (OLD.vault_secret_id IS NOT NULL
                     AND OLD.vault_secret_id IS DISTINCT FROM NEW.vault_secret_id)
  EXECUTE FUNCTION _drop_vault_secret();

-- The worker's side (owner only, no grant). Seal: compare-and-set on the inbox row the
-- worker read (submitted_at), so a rotation in between is never overwritten by the older
-- secret; false = the row changed or went, read it again.
CREATE FUNCTION seal_exchange_account_secret(
  p_account_id uuid, p_submitted_at timestamptz, p_ciphertext bytea, p_key_id text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  DELETE FROM exchange_account_secret_inbox
  WHERE account_id = p_account_id AND submitted_at = p_submitted_at;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO exchange_account_secrets (account_id, ciphertext, key_id)
  VALUES (p_account_id, p_ciphertext, p_key_id)
  ON CONFLICT (account_id) DO UPDATE SET ciphertext = EXCLUDED.ciphertext,
    key_id = EXCLUDED.key_id, vault_secret_id = NULL, sealed_at = now();
  UPDATE exchange_accounts SET secret_state = 'sealed' WHERE id = p_account_id;
  RETURN true;
END;
$$;

-- Accounts whose plaintext an unclean shutdown took before it was sealed: marked invalid
-- with a reason the user can act on; checked_at/notified_at cleared so the worker tells them.
CREATE FUNCTION mark_lost_exchange_secrets() RETURNS SETOF uuid
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  UPDATE exchange_accounts a
  SET status = 'invalid', checked_at = now(), notified_at = NULL,
      status_reason = 'secret lost before it was stored (database restart): rotate the key again'
  WHERE a.secret_state = 'pending' AND a.status <> 'invalid'
    AND NOT EXISTS (SELECT 1 FROM exchange_account_secret_inbox i WHERE i.account_id = a.id)
  RETURNING a.id
$$;

-- ---------------------------------------------------------------------------------------
-- The user functions: SECURITY DEFINER, acting for auth.uid() only. Another user's account
-- answers exactly like an account that does not exist (PW016).
CREATE FUNCTION _exchange_account_user() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  uid uuid := auth.uid();
BEGIN
  IF uid IS NULL THEN
    RAISE EXCEPTION 'exchange accounts belong to a user: call with a user''s JWT'
      USING ERRCODE = '42501';
  END IF;
  RETURN uid;
END;
$$;

CREATE FUNCTION _lock_exchange_account(p_account_id uuid, p_any_user boolean DEFAULT false)
RETURNS exchange_accounts
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  acc exchange_accounts;
BEGIN
  SELECT * INTO acc FROM exchange_accounts WHERE id = p_account_id FOR UPDATE;
  IF NOT FOUND OR (acc.user_id IS DISTINCT FROM auth.uid()
                   AND NOT (p_any_user AND _is_privileged())) THEN
    RAISE EXCEPTION 'exchange account % not found', p_account_id USING ERRCODE = 'PW016',
      HINT = 'list your accounts: SELECT id, label FROM exchange_accounts';
  END IF;
  RETURN acc;
END;
$$;

-- Argument checks. The messages name the argument, never its value: a secret given in the
-- wrong argument must not come back in an error (nor reach a log through it).
CREATE FUNCTION _check_exchange_key(p_api_key text, p_api_secret text, p_key_type text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_key_type IS NULL OR p_key_type NOT IN ('hmac', 'ed25519', 'rsa') THEN
    RAISE EXCEPTION 'invalid key type' USING ERRCODE = 'PW017',
      HINT = 'key_type is hmac, ed25519 or rsa';
  END IF;
  IF p_api_key IS NULL OR char_length(p_api_key) NOT BETWEEN 1 AND 256
     OR p_api_key !~ '^[!-~]+$' THEN
    RAISE EXCEPTION 'invalid api key' USING ERRCODE = 'PW017',
      HINT = 'the API key is 1 to 256 printable ASCII characters, without spaces';
  END IF;
  IF p_api_secret IS NULL OR char_length(p_api_secret) NOT BETWEEN 1 AND 8192
     OR p_api_secret !~ '^[\t\n\r -~]+$' OR btrim(p_api_secret, E' \t\r\n') = ''
     OR (p_key_type = 'hmac' AND p_api_secret !~ '^[!-~]+$') THEN
    RAISE EXCEPTION 'invalid api secret' USING ERRCODE = 'PW017',
      HINT = 'the secret is 1 to 8192 printable ASCII characters (an HMAC secret without '
             'spaces; an Ed25519 or RSA private key in PEM form may span lines)';
  END IF;
  IF p_api_secret = p_api_key THEN
    RAISE EXCEPTION 'invalid api secret' USING ERRCODE = 'PW017',
      HINT = 'the secret is not the API key: give the secret (or private key) Binance paired '
             'with it';
  END IF;
END;
$$;

CREATE FUNCTION _check_exchange_label(p_label text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_label IS NULL OR char_length(p_label) NOT BETWEEN 1 AND 64 OR btrim(p_label) = ''
     OR p_label ~ '[\x01-\x1f\x7f-\x9f]' THEN
    RAISE EXCEPTION 'invalid label' USING ERRCODE = 'PW017',
      HINT = 'a label is 1 to 64 characters, not blank, without control characters';
  END IF;
END;
$$;

CREATE FUNCTION add_exchange_account(
  p_exchange text, p_label text, p_api_key text, p_api_secret text,
  p_key_type text DEFAULT 'hmac', p_make_default boolean DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  uid uuid := _exchange_account_user();
  acc uuid := gen_random_uuid();
  lim integer;
  make_default boolean;
BEGIN
  IF p_exchange IS NULL OR p_exchange NOT IN ('binance', 'binance_testnet') THEN
    RAISE EXCEPTION 'invalid exchange' USING ERRCODE = 'PW017',
      HINT = 'exchange is binance or binance_testnet';
  END IF;
  PERFORM _check_exchange_label(p_label);
  PERFORM _check_exchange_key(p_api_key, p_api_secret, p_key_type);
  -- one user's additions in turn (0012's per-user lock): the quota and the first-account
  -- default hold under concurrent calls
  PERFORM pg_advisory_xact_lock(hashtextextended(uid::text, 7366));
  IF NOT _is_privileged() THEN
    SELECT coalesce(u.max_exchange_accounts, d.max_exchange_accounts) INTO lim
    FROM user_limit_defaults d LEFT JOIN user_limits u ON u.user_id = uid;
    IF (SELECT count(*) FROM (SELECT 1 FROM exchange_accounts WHERE user_id = uid LIMIT lim) s)
       >= lim THEN
      PERFORM _quota_exceeded('exchange accounts', lim, uid);
    END IF;
  END IF;
  IF EXISTS (SELECT 1 FROM exchange_accounts WHERE user_id = uid AND label = p_label) THEN
    RAISE EXCEPTION 'label already used' USING ERRCODE = 'PW017',
      HINT = 'each of your exchange accounts has its own label';
  END IF;
  make_default := coalesce(p_make_default,
                           NOT EXISTS (SELECT 1 FROM exchange_accounts WHERE user_id = uid));
  IF make_default THEN
    UPDATE exchange_accounts SET is_default = false WHERE user_id = uid AND is_default;
  END IF;
  INSERT INTO exchange_accounts (id, user_id, exchange, label, api_key, key_type, is_default,
                                 secret_state)
  VALUES (acc, uid, p_exchange, p_label, p_api_key, p_key_type, make_default, 'pending');
  UPDATE exchange_accounts SET secret_state = _store_exchange_secret(acc, p_api_secret)
  WHERE id = acc;
  PERFORM pg_notify('position_worker_accounts', acc::text);
  RETURN acc;
END;
$$;

CREATE FUNCTION rotate_exchange_account_key(
  p_account_id uuid, p_api_key text, p_api_secret text, p_key_type text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  acc exchange_accounts := _lock_exchange_account(p_account_id);
BEGIN
  PERFORM _check_exchange_key(p_api_key, p_api_secret, coalesce(p_key_type, acc.key_type));
  UPDATE exchange_accounts
  SET api_key = p_api_key, key_type = coalesce(p_key_type, key_type),
      key_version = key_version + 1,
      status = CASE WHEN status = 'disabled' THEN 'disabled' ELSE 'active' END,
      status_reason = CASE WHEN status = 'disabled' THEN status_reason END,
      checked_at = NULL, notified_at = NULL,
      secret_state = _store_exchange_secret(p_account_id, p_api_secret)
  WHERE id = p_account_id;
  PERFORM pg_notify('position_worker_accounts', p_account_id::text);
END;
$$;

-- Disabling is also open to privileged callers on any account (an operator stopping a
-- compromised key); every other change is the account owner's alone.
CREATE FUNCTION disable_exchange_account(p_account_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  acc exchange_accounts := _lock_exchange_account(p_account_id, true);
BEGIN
  UPDATE exchange_accounts
  SET status = 'disabled',
      status_reason = CASE WHEN acc.user_id IS DISTINCT FROM auth.uid()
                           THEN 'disabled by the platform' ELSE 'disabled by the user' END,
      notified_at = NULL
  WHERE id = p_account_id AND status <> 'disabled';
  PERFORM pg_notify('position_worker_accounts', p_account_id::text);
END;
$$;

CREATE FUNCTION enable_exchange_account(p_account_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  PERFORM _lock_exchange_account(p_account_id);
  UPDATE exchange_accounts
  SET status = 'active', status_reason = NULL, checked_at = NULL, notified_at = NULL
  WHERE id = p_account_id;
  PERFORM pg_notify('position_worker_accounts', p_account_id::text);
END;
$$;

CREATE FUNCTION set_default_exchange_account(p_account_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  acc exchange_accounts := _lock_exchange_account(p_account_id);
BEGIN
  UPDATE exchange_accounts SET is_default = false
  WHERE user_id = acc.user_id AND is_default AND id <> p_account_id;
  UPDATE exchange_accounts SET is_default = true WHERE id = p_account_id AND NOT is_default;
  PERFORM pg_notify('position_worker_accounts', p_account_id::text);
END;
$$;

-- Refused while a position on the account is not final (the worker still trades it there).
-- Past positions stay, with account_id NULL. The secret goes with the row (cascade; the Vault
-- secret by trigger). The default passes to the user's most recently created account left.
CREATE FUNCTION delete_exchange_account(p_account_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  acc exchange_accounts := _lock_exchange_account(p_account_id);
BEGIN
  IF EXISTS (SELECT 1 FROM positions WHERE account_id = p_account_id
             AND status NOT IN ('closed', 'failed')) THEN
    RAISE EXCEPTION 'exchange account % has positions that are not closed', p_account_id
      USING ERRCODE = 'PW018',
            HINT = 'exit them (request_position_exit) and wait until they are closed, or '
                   'disable the account instead';
  END IF;
  DELETE FROM exchange_accounts WHERE id = p_account_id;
  IF acc.is_default THEN
    UPDATE exchange_accounts SET is_default = true
    WHERE id = (SELECT id FROM exchange_accounts WHERE user_id = acc.user_id
                ORDER BY created_at DESC, id DESC LIMIT 1);
  END IF;
  PERFORM pg_notify('position_worker_accounts', p_account_id::text);
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Positions trade on an account of their own user. MATCH SIMPLE: a NULL account_id is not
-- checked (paper positions; live ones the worker refuses at validation with a reason).
-- Users cannot change account_id after insert: their UPDATE grant on positions covers four
-- columns only (R__privileges.sql), and no policy or function sets it.
ALTER TABLE positions
  ADD COLUMN account_id UUID,
  ADD CONSTRAINT positions_account_fk FOREIGN KEY (account_id, user_id)
    REFERENCES exchange_accounts (id, user_id) ON DELETE SET NULL (account_id);
CREATE INDEX idx_positions_account_id ON positions (account_id) WHERE account_id IS NOT NULL;

-- A live position without an account gets the user's default account, if any.
CREATE FUNCTION set_position_default_account() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  SELECT id INTO NEW.account_id FROM exchange_accounts
  WHERE user_id = NEW.user_id AND is_default;
  RETURN NEW;
END;
$$;

CREATE TRIGGER set_position_default_account
  BEFORE INSERT ON positions
  FOR EACH ROW WHEN (NEW.account_id IS NULL AND NEW.is_paper_trade IS NOT TRUE)
  EXECUTE FUNCTION set_position_default_account();

-- ---------------------------------------------------------------------------------------
-- Risk limits per user, enforced by the worker at entry validation (NULL: its configured
-- default). The platform writes them; a user reads their own.
CREATE TABLE user_risk_limits (
  user_id               UUID PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
  max_position_notional NUMERIC CHECK (max_position_notional > 0
    AND max_position_notional < 1e12 AND max_position_notional = round(max_position_notional, 8)),
  max_open_positions    INTEGER CHECK (max_open_positions >= 0),
  max_open_notional     NUMERIC CHECK (max_open_notional > 0
    AND max_open_notional < 1e12 AND max_open_notional = round(max_open_notional, 8)),
  -- NULL: any symbol; empty: none; NULL elements are refused (array_to_string makes them '')
  allowed_symbols       TEXT[] CHECK (cardinality(allowed_symbols) <= 1000
    AND (cardinality(allowed_symbols) = 0 OR (array_ndims(allowed_symbols) = 1
      AND array_to_string(allowed_symbols, ',', '') ~ '^[A-Z0-9]{2,20}(,[A-Z0-9]{2,20})*$'))),
  short_selling         TEXT CHECK (short_selling IN ('off', 'holdings')),
  updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER update_user_risk_limits_updated_at
  BEFORE UPDATE ON user_risk_limits
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

ALTER TABLE user_risk_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_risk_limits_select_own ON user_risk_limits FOR SELECT
  USING (auth.uid() = user_id);

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'position_worker_operator') THEN
    CREATE POLICY exchange_accounts_operator_read ON exchange_accounts FOR SELECT
      TO position_worker_operator USING (true);
    CREATE POLICY user_risk_limits_operator ON user_risk_limits FOR ALL
      TO position_worker_operator USING (true) WITH CHECK (true);
  END IF;
END
$$;
