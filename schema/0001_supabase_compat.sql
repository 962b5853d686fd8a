-- replaces-checksum: e462a6e5df7389b4dd45dc68387e5704887ad40589ec3fafc5107b24220cb90a
--
-- Supabase compatibility: what a Supabase project provides (schema auth, auth.users,
-- auth.uid(), roles anon / authenticated / service_role), created here only where absent so
-- the same migrations run on Supabase and on a plain PostgreSQL 15-18.
--
-- On Supabase the auth schema and everything in it belong to supabase_auth_admin, and the
-- migrating role (postgres) is not a superuser: any CREATE or GRANT on those objects fails
-- with "permission denied for schema auth", even when the object already exists (the
-- privilege is checked before existence). So every statement below first looks in the
-- catalog and touches only what is missing, and grants only on what it created itself.
-- Supabase's own auth.uid() is never replaced.

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

  IF to_regnamespace('auth') IS NULL THEN
    CREATE SCHEMA auth;
    GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
  END IF;

  IF to_regclass('auth.users') IS NULL THEN
    CREATE TABLE auth.users (
      id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
      email      TEXT,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
  END IF;

  -- auth.uid(): the JWT subject of the current request, as Supabase defines it: the
  -- per-claim setting first, then the claims JSON PostgREST sets for each request.
  IF to_regprocedure('auth.uid()') IS NULL THEN
    CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $body$
      SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
      )::uuid
    $body$;
    REVOKE ALL ON FUNCTION auth.uid() FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
  END IF;
END
$$;
