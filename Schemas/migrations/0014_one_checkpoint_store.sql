-- One lease and checkpoint store. Projections, reactors and webhook delivery each kept a lease
-- (a session advisory lock in a namespace of their own) and, the first two, a checkpoint in a
-- table of their own. They now keep both in one table of one shape, one row per consumer and
-- partition, and take one kind of lock. The rows move here with their checkpoints, states and
-- errors intact.
--
-- Upgrading: stop the projector, reactor and deliver processes of the previous version, run
-- `eventctl migrate`, start the new ones. An old process left running cannot move a checkpoint
-- any more (its function and columns are gone): its batch rolls back, so nothing is applied
-- twice, and the new processes carry on from the moved checkpoints.

-- kind: projection, reactor or webhook (a consumer group delivered by webhook: a lease only; its
-- progress is in the group's messages, so its checkpoint stays 0).
-- partition: 0 for a consumer in one piece; 0 … N-1 for a projection of N partitions.
-- checkpoint: the log position up to which the consumer (partition) has handled every event
-- that is its own. A projection's moves in the same transaction as its read-model rows.
-- state: running, or parked after an event kept failing (error, error_position, error_handler,
-- failed_attempts say why).
-- owner: the process that last took the lease (host:pid); whether it still holds it is in
-- pg_locks: the session advisory lock (eventline.lease_lock_namespace(), lock_id).
CREATE TABLE eventline.checkpoints (
    kind            text        NOT NULL CHECK (kind IN ('projection', 'reactor', 'webhook')),
    name            text        NOT NULL,
    partition       integer     NOT NULL DEFAULT 0 CHECK (partition BETWEEN 0 AND 255),
    lock_id         integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    checkpoint      bigint      NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    state           text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'parked')),
    error           text,
    error_position  bigint,
    error_handler   text,
    failed_attempts integer     NOT NULL DEFAULT 0,
    owner           text,
    owner_since     timestamptz,
    -- When the checkpoint last moved (a partition that has lag and has not moved is stalled).
    advanced_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, partition)
);

CREATE FUNCTION eventline.lease_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1165380700 $$;

-- (updated_at: the last time the old row changed, the nearest there is to its last move.)
INSERT INTO eventline.checkpoints
    (kind, name, checkpoint, state, error, error_position, error_handler, failed_attempts, owner, owner_since, advanced_at, created_at, updated_at)
SELECT 'projection', name, checkpoint, state, error, error_position, error_handler, failed_attempts, owner, owner_since, updated_at, created_at, updated_at
FROM eventline.projections;

INSERT INTO eventline.checkpoints
    (kind, name, checkpoint, error, error_position, failed_attempts, owner, owner_since, advanced_at, created_at, updated_at)
SELECT 'reactor', name, checkpoint, error, error_position, failed_attempts, owner, owner_since, updated_at, created_at, updated_at
FROM eventline.reactors;

INSERT INTO eventline.checkpoints (kind, name)
SELECT 'webhook', name FROM eventline.consumer_groups WHERE webhook_url IS NOT NULL;

-- The projections' registry keeps what is a projection's own: its version, key, cache
-- generation, and now how it is partitioned. Changing `partitions` or `partition_by` is a new
-- version (rebuilt blue/green).
DROP FUNCTION eventline.advance_checkpoint(text, bigint, bigint);
ALTER TABLE eventline.projections
    DROP COLUMN lock_id, DROP COLUMN checkpoint, DROP COLUMN state, DROP COLUMN error, DROP COLUMN error_position,
    DROP COLUMN error_handler, DROP COLUMN failed_attempts, DROP COLUMN owner, DROP COLUMN owner_since,
    ADD COLUMN partitions integer NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 256),
    -- stream, or a path into the event's data (data.account.id).
    ADD COLUMN partition_by text NOT NULL DEFAULT 'stream';
DROP TABLE eventline.reactors;
DROP FUNCTION eventline.projection_lock_namespace();
DROP FUNCTION eventline.reactor_lock_namespace();
DROP FUNCTION eventline.webhook_lock_namespace();

-- Moves a consumer partition's checkpoint from `from_position` to `to_position`, or fails
-- (rolling back the caller's transaction) when the checkpoint is not where the caller left it or
-- the partition is parked. A projection's move tells listeners on eventline_projections, at
-- commit (`name:position`: the partition's; readers re-read every partition's).
CREATE FUNCTION eventline.advance_checkpoint(
    consumer_kind text, consumer_name text, consumer_partition integer, from_position bigint, to_position bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE eventline.checkpoints
       SET checkpoint = to_position, failed_attempts = 0, error = NULL, error_position = NULL,
           error_handler = NULL, updated_at = now(), advanced_at = now()
     WHERE kind = consumer_kind AND name = consumer_name AND partition = consumer_partition
       AND checkpoint = from_position AND state = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % (partition %) is not running at checkpoint %', consumer_kind, consumer_name, consumer_partition, from_position
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF consumer_kind = 'projection' THEN
        PERFORM pg_notify('eventline_projections', consumer_name || ':' || to_position);
    END IF;
END;
$$;

-- A projection's checkpoint as readers see it: every partition has passed it (the smallest of
-- its partitions' checkpoints; 0 while it has none).
CREATE FUNCTION eventline.projection_checkpoint(projection text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(min(checkpoint), 0) FROM eventline.checkpoints WHERE kind = 'projection' AND name = projection
$$;
