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
