-- Reactors (process managers): consumers of the log that issue follow-up commands. Each has a
-- checkpoint and a lease, like a projection; unlike a projection its effects (commands) cannot
-- commit with its checkpoint, so delivery is at-least-once and reactors are idempotent.

-- One row per reactor. `checkpoint` is the log position up to which the reactor has handled
-- every event of its filter; events after it are handled (again) by the next owner. One process
-- at a time owns a reactor through the session advisory lock
-- (eventline.reactor_lock_namespace(), lock_id), the two-key form, as projections use with
-- their own namespace: the two never collide.
CREATE TABLE eventline.reactors (
    name            text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    lock_id         integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    checkpoint      bigint      NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    -- The event the reactor keeps failing on (it is retried with backoff, never skipped).
    error           text,
    error_position  bigint,
    failed_attempts integer     NOT NULL DEFAULT 0,
    -- The process that last took the lease (host:pid); whether it still holds it is in pg_locks.
    owner           text,
    owner_since     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION eventline.reactor_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1165380690 $$;
