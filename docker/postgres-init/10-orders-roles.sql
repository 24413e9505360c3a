-- The project's two database roles, least privilege (migrations/versions/0003 grants the rest):
--   orders_owner  owns the database and its tables; runs `orders migrate` (DDL); nothing more
--                 (`make up` alone adds CREATEDB, for the integration tests' own databases);
--   orders_app    the API, the workers and the operator commands: LOGIN and nothing else here.
-- Run by a superuser, connected to the application's database:
--   - by the postgres image at first start, after 00-superuser-local-only.sh (compose mounts
--     this folder at /docker-entrypoint-initdb.d; to apply it to an older volume, run it again
--     with psql);
--   - by `make up` at every start (scripts/local_services/postgres.py), so it converges.
-- Passwords come from the environment, never from this file. psql 15+ (\getenv).
\set ON_ERROR_STOP on
\getenv owner_password ORDERS_DB_OWNER_PASSWORD
\getenv app_password ORDERS_DB_APP_PASSWORD
\if :{?owner_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'ORDERS_DB_OWNER_PASSWORD is not set'; END $$;
\endif
\if :{?app_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'ORDERS_DB_APP_PASSWORD is not set'; END $$;
\endif

-- \gexec runs each row of the result as a statement: CREATE ROLE has no IF NOT EXISTS.
SELECT format('CREATE ROLE %I', name)
FROM (VALUES ('orders_owner'), ('orders_app')) AS wanted(name)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = wanted.name) \gexec

-- Every attribute spelled out, so a role changed by hand is put back. With password_encryption
-- = scram-sha-256 (the default since PostgreSQL 14) the server stores a SCRAM verifier.
ALTER ROLE orders_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'owner_password';
ALTER ROLE orders_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
-- The owner may end the application's sessions (a test's DROP DATABASE ... WITH (FORCE), a
-- migration that needs its locks); it gains no privilege it does not grant the app itself.
-- Granted only once: granting it again would print a NOTICE at every `make up`.
SELECT 'GRANT orders_app TO orders_owner'
WHERE NOT EXISTS (
    SELECT FROM pg_auth_members
    WHERE roleid = 'orders_app'::regrole AND member = 'orders_owner'::regrole
) \gexec

-- The owner owns the database, hence schema public (owned by pg_database_owner since 15), where
-- only it may create. Tables made before these roles existed pass to it too.
SELECT current_database() AS database \gset
ALTER DATABASE :"database" OWNER TO orders_owner;
SELECT format('ALTER TABLE public.%I OWNER TO orders_owner', tablename)
FROM pg_tables
WHERE schemaname = 'public' AND tableowner <> 'orders_owner' \gexec
