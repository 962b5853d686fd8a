-- A database shaped the way Supabase ships one, for the tests (facts from supabase/postgres
-- migrations/db/init-scripts and migrations, and supabase/auth migrations):
--   * postgres is NOT a superuser: NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS
--     (10000000000000_demote-postgres.sql), a member of anon, authenticated and service_role
--     (20230201083204_grant_auth_roles_to_postgres.sql). Here it is called supa_postgres,
--     since the test server's own superuser is already named postgres.
--   * schema auth belongs to supabase_admin, auth.users and auth.uid()/role()/jwt() to
--     supabase_auth_admin; postgres has USAGE on auth and ALL on its tables
--     (20211115181400_update-auth-permissions.sql), no CREATE on it.
--   * default privileges: every table, sequence and function created in public by postgres
--     starts with ALL for anon, authenticated and service_role (00000000000000-initial-schema).
--   * anon/authenticated/service_role are NOLOGIN; service_role has BYPASSRLS; authenticator
--     (PostgREST's login) is NOINHERIT and may switch to the three.
--
-- name: cluster
-- Roles are cluster-wide: created once, whatever test made them first.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_admin') THEN
    CREATE ROLE supabase_admin NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_auth_admin') THEN
    CREATE ROLE supabase_auth_admin NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator LOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supa_postgres') THEN
    CREATE ROLE supa_postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
  END IF;
END
$$;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO supa_postgres;

-- name: database
-- Run by a superuser inside the new database (owned by supa_postgres).
CREATE SCHEMA auth AUTHORIZATION supabase_admin;
GRANT ALL PRIVILEGES ON SCHEMA auth TO supabase_auth_admin;  -- (00000000000001-auth-schema)
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, supa_postgres;

CREATE TABLE auth.users (
  instance_id uuid,
  id uuid NOT NULL UNIQUE,
  aud varchar(255),
  role varchar(255),
  email varchar(255) UNIQUE,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  created_at timestamptz,
  updated_at timestamptz,
  CONSTRAINT users_pkey PRIMARY KEY (id)
);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;

-- supabase/auth migrations/20220224000811_update_auth_functions.up.sql and
-- 20220531120530_add_auth_jwt_function.up.sql
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;
ALTER FUNCTION auth.uid() OWNER TO supabase_auth_admin;
ALTER FUNCTION auth.role() OWNER TO supabase_auth_admin;
ALTER FUNCTION auth.jwt() OWNER TO supabase_auth_admin;
GRANT ALL ON ALL TABLES IN SCHEMA auth TO supa_postgres;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT USAGE, CREATE ON SCHEMA public TO supa_postgres;
ALTER DEFAULT PRIVILEGES FOR ROLE supa_postgres IN SCHEMA public
  GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supa_postgres IN SCHEMA public
  GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supa_postgres IN SCHEMA public
  GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

-- Supabase Vault, as the supabase_vault extension 0.3.x creates it (supabase/vault
-- sql/supabase_vault--0.3.0.sql: table, index, view and the two functions below verbatim
-- but for the crypto) with the grants Supabase adds after CREATE EXTENSION (supabase/postgres
-- ansible/files/postgresql_extension_custom_scripts/supabase_vault/after-create.sql: postgres
-- gets USAGE, SELECT and DELETE on secrets and decrypted_secrets, EXECUTE on create_secret,
-- update_secret and _crypto_aead_det_decrypt, all WITH GRANT OPTION; service_role the same
-- without it). A TEST FIXTURE: not an extension, and the "encryption" is a XOR with a
-- digest of the nonce and the row id (the real one is libsodium's deterministic AEAD with a
-- root key kept outside the database). Names, signatures, columns and grants are the real ones.
CREATE SCHEMA vault AUTHORIZATION supabase_admin;
SET ROLE supabase_admin;

CREATE FUNCTION vault._crypto_aead_det_encrypt(message bytea, additional bytea, key_id bigint,
                                               context bytea = 'pgsodium', nonce bytea = NULL)
RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  pad bytea := sha256(coalesce(nonce, '') || additional || context);
  out bytea := message;
BEGIN
  FOR i IN 0 .. length(message) - 1 LOOP
    out := set_byte(out, i, get_byte(message, i) # get_byte(pad, i % 32));
  END LOOP;
  RETURN out;
END
$$;
-- the same XOR (functions a view calls need EXECUTE of its user, so no call between them)
CREATE FUNCTION vault._crypto_aead_det_decrypt(message bytea, additional bytea, key_id bigint,
                                               context bytea = 'pgsodium', nonce bytea = NULL)
RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  pad bytea := sha256(coalesce(nonce, '') || additional || context);
  out bytea := message;
BEGIN
  FOR i IN 0 .. length(message) - 1 LOOP
    out := set_byte(out, i, get_byte(message, i) # get_byte(pad, i % 32));
  END LOOP;
  RETURN out;
END
$$;
CREATE FUNCTION vault._crypto_aead_det_noncegen() RETURNS bytea
LANGUAGE sql VOLATILE AS $$ SELECT substr(sha256(random()::text::bytea), 1, 16) $$;

CREATE TABLE vault.secrets (
  id uuid     PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text,
  description text NOT NULL default '',
  secret      text NOT NULL,
  key_id      uuid,
  nonce       bytea DEFAULT vault._crypto_aead_det_noncegen(),
  created_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX ON vault.secrets USING btree (name) WHERE name IS NOT NULL;

CREATE VIEW vault.decrypted_secrets AS
SELECT s.id,
  s.name,
  s.description,
  s.secret,
  convert_from(
    vault._crypto_aead_det_decrypt(
      message := decode(s.secret, 'base64'::text),
      additional := convert_to(s.id::text, 'utf8'),
      key_id := 0,
      context := 'pgsodium'::bytea,
      nonce := s.nonce
    ),
    'utf8'::name
  ) AS decrypted_secret,
  s.key_id,
  s.nonce,
  s.created_at,
  s.updated_at
FROM vault.secrets s;

CREATE FUNCTION vault.create_secret(
  new_secret text,
  new_name text = NULL,
  new_description text = '',
  -- unused
  new_key_id uuid = NULL
)
RETURNS uuid
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
  rec record;
BEGIN
  INSERT INTO vault.secrets (secret, name, description)
  VALUES (
    new_secret,
    new_name,
    new_description
  )
  RETURNING * INTO rec;
  UPDATE vault.secrets s
  SET secret = encode(vault._crypto_aead_det_encrypt(
    message := convert_to(rec.secret, 'utf8'),
    additional := convert_to(s.id::text, 'utf8'),
    key_id := 0,
    context := 'pgsodium'::bytea,
    nonce := rec.nonce
  ), 'base64')
  WHERE id = rec.id;
  RETURN rec.id;
END
$$;

CREATE FUNCTION vault.update_secret(
  secret_id uuid,
  new_secret text = NULL,
  new_name text = NULL,
  new_description text = NULL,
  -- unused
  new_key_id uuid = NULL
)
RETURNS void
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
  decrypted_secret text := (SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = secret_id);
BEGIN
  UPDATE vault.secrets s
  SET
    secret = CASE WHEN new_secret IS NULL THEN s.secret
                  ELSE encode(vault._crypto_aead_det_encrypt(
                    message := convert_to(new_secret, 'utf8'),
                    additional := convert_to(s.id::text, 'utf8'),
                    key_id := 0,
                    context := 'pgsodium'::bytea,
                    nonce := s.nonce
                  ), 'base64') END,
    name = coalesce(new_name, s.name),
    description = coalesce(new_description, s.description),
    updated_at = now()
  WHERE s.id = secret_id;
END
$$;

REVOKE ALL ON FUNCTION
  vault._crypto_aead_det_encrypt,
  vault._crypto_aead_det_decrypt,
  vault._crypto_aead_det_noncegen,
  vault.create_secret,
  vault.update_secret
FROM PUBLIC;

GRANT USAGE ON SCHEMA vault TO supa_postgres WITH GRANT OPTION;
GRANT SELECT, DELETE ON vault.secrets, vault.decrypted_secrets TO supa_postgres
  WITH GRANT OPTION;
GRANT EXECUTE ON FUNCTION vault.create_secret, vault.update_secret,
  vault._crypto_aead_det_decrypt TO supa_postgres WITH GRANT OPTION;
-- "service_role used to be able to manage secrets in Vault <=0.2.8" (after-create.sql)
GRANT USAGE ON SCHEMA vault TO service_role;
GRANT SELECT, DELETE ON vault.secrets, vault.decrypted_secrets TO service_role;
GRANT EXECUTE ON FUNCTION vault.create_secret, vault.update_secret,
  vault._crypto_aead_det_decrypt TO service_role;
RESET ROLE;
