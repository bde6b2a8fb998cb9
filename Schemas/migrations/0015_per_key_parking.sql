-- Per-key parking. An event that keeps failing no longer has to stop its whole projection or
-- reactor: its key (the stream, or the projection's partition key) is parked, the key's later
-- events are held behind it in log order, and every other key goes on. An operator retries a
-- parked key (its held events are applied in order) or skips its failing event (recorded in
-- skipped_events, never silently lost).

-- One row per parked key of a consumer. position, event_type and error: the event that failed
-- and why; attempts: how often it was tried. request: what an operator asked for (retry or
-- skip), carried out by the process that holds the key's partition.
CREATE TABLE eventline.parked_keys (
    kind         text        NOT NULL,
    name         text        NOT NULL,
    key          text        NOT NULL,
    partition    integer     NOT NULL,
    position     bigint      NOT NULL,
    event_type   text        NOT NULL,
    error        text        NOT NULL,
    attempts     integer     NOT NULL,
    request      text        CHECK (request IN ('retry', 'skip')),
    requested_at timestamptz,
    parked_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, key),
    FOREIGN KEY (kind, name, partition) REFERENCES eventline.checkpoints (kind, name, partition) ON DELETE CASCADE
);
CREATE INDEX parked_keys_partition ON eventline.parked_keys (kind, name, partition);

-- The events a parked key holds (its failing event first), applied in log order when the key is
-- retried. They commit with the checkpoint move that passes them.
CREATE TABLE eventline.parked_events (
    kind     text   NOT NULL,
    name     text   NOT NULL,
    key      text   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (kind, name, key, position),
    FOREIGN KEY (kind, name, key) REFERENCES eventline.parked_keys (kind, name, key) ON DELETE CASCADE
);

-- Every event a consumer skipped (an operator's skip, or the `skip` policy), with why: an
-- append-only record (eventctl and the API list it; nothing deletes it).
CREATE TABLE eventline.skipped_events (
    kind       text        NOT NULL,
    name       text        NOT NULL,
    key        text        NOT NULL,
    position   bigint      NOT NULL,
    event_type text        NOT NULL,
    error      text        NOT NULL,
    -- operator (a skip requested over the API or eventctl) or policy (onError: then: skip).
    skipped_by text        NOT NULL CHECK (skipped_by IN ('operator', 'policy')),
    skipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, position)
);
