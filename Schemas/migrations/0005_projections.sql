-- Read models: the schema that holds them, the projections' registry and checkpoints, and the
-- analyst role that may read read models and nothing else.

CREATE SCHEMA read_models;

-- One row per projection. `checkpoint` is the log position up to which the read model has
-- applied every event; it moves in the same transaction as the read model's rows, so a crash
-- never applies an event twice or skips one. One process at a time owns a projection through
-- the session advisory lock (eventline.projection_lock_namespace(), lock_id).
CREATE TABLE eventline.projections (
    name            text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    lock_id         integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    version         integer     NOT NULL CHECK (version > 0),
    key_column      text        NOT NULL,
    -- Bumped by every rebuild; cache keys carry it, so a rebuild drops all cached rows at once.
    generation      bigint      NOT NULL DEFAULT 1,
    checkpoint      bigint      NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    -- running, or parked after an event kept failing (error, error_position, error_handler say why).
    state           text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'parked')),
    error           text,
    error_position  bigint,
    error_handler   text,
    failed_attempts integer     NOT NULL DEFAULT 0,
    -- The process that last took the lease (host:pid); whether it still holds it is in pg_locks.
    owner           text,
    owner_since     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION eventline.projection_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1165380688 $$;

-- Moves a projection's checkpoint from `from_position` to `to_position`, or fails (rolling
-- back the batch) when the checkpoint is not where the caller left it. Tells listeners on
-- eventline_projections, at commit.
CREATE FUNCTION eventline.advance_checkpoint(projection text, from_position bigint, to_position bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eventline.projections
       SET checkpoint = to_position, failed_attempts = 0, error = NULL, error_position = NULL,
           error_handler = NULL, updated_at = now()
     WHERE name = projection AND checkpoint = from_position AND state = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'projection % is not running at checkpoint %', projection, from_position
            USING ERRCODE = 'serialization_failure';
    END IF;
    PERFORM pg_notify('eventline_projections', projection || ':' || to_position);
END;
$$;

-- Analysts: SELECT on read models, nothing else (no event table, no writes). The role is
-- cluster-wide; databases of one cluster share it. `eventctl analyst-role --password …` lets it
-- log in.
DO $$
BEGIN
    CREATE ROLE eventline_analyst NOLOGIN;
    -- Only the database that created the role sets it up (concurrent ALTER ROLE would collide).
    ALTER ROLE eventline_analyst SET default_transaction_read_only = on;
    ALTER ROLE eventline_analyst SET statement_timeout = '60s';
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster created it
END;
$$;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO eventline_analyst', current_database());
END;
$$;
GRANT USAGE ON SCHEMA read_models TO eventline_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA read_models TO eventline_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA read_models GRANT SELECT ON TABLES TO eventline_analyst;
