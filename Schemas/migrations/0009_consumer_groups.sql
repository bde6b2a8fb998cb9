-- Consumer groups: server-side, durable followers of the log that hand its events to competing
-- consumers (over HTTP, or by webhook) with acknowledgements, redelivery and parking. All of a
-- group's state is here, so any server process can serve any group and a restart loses nothing.

-- One row per group. `scanned` is the log position up to which every event of the group's
-- filter has a row in consumer_group_messages or has been acknowledged. Fetches of one group
-- are serialized by a lock on this row (FOR UPDATE), so two server processes never hand one
-- event to two consumers at once.
CREATE TABLE eventline.consumer_groups (
    name               text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,99}$'),
    -- NULL: every category (type).
    categories         text[],
    types              text[],
    start_after        bigint      NOT NULL CHECK (start_after >= 0),
    max_deliveries     integer     NOT NULL CHECK (max_deliveries BETWEEN 1 AND 100),
    ack_timeout_ms     integer     NOT NULL CHECK (ack_timeout_ms BETWEEN 1000 AND 3600000),
    -- A group that delivers itself: `eventctl deliver` POSTs its batches here.
    webhook_url        text,
    webhook_secret     text,
    webhook_batch_size integer     CHECK (webhook_batch_size BETWEEN 1 AND 1000),
    scanned            bigint      NOT NULL CHECK (scanned >= 0),
    -- Deliveries after the first, ever (for metrics).
    redeliveries       bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL) AND (webhook_url IS NULL) = (webhook_batch_size IS NULL))
);

-- The events of a group not yet acknowledged: waiting (`ready`, from `due_at`), handed to a
-- consumer (`delivered`, until `due_at`, the ack deadline), or given up on (`parked`). An
-- acknowledged event's row is deleted. A delivery is named by `delivery_id`, new at every
-- attempt, so an ack of an attempt that already timed out acknowledges nothing.
CREATE TABLE eventline.consumer_group_messages (
    group_name   text        NOT NULL REFERENCES eventline.consumer_groups (name) ON DELETE CASCADE,
    position     bigint      NOT NULL,
    stream       text        NOT NULL,
    state        text        NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'delivered', 'parked')),
    attempt      integer     NOT NULL DEFAULT 0,
    delivery_id  uuid        UNIQUE,
    consumer     text,
    due_at       timestamptz NOT NULL DEFAULT now(),
    parked_at    timestamptz,
    -- Why the last attempt failed, when a webhook said (its status, say).
    last_error   text,
    PRIMARY KEY (group_name, position)
);
-- A stream's order: an event waits while an earlier one of its stream is outstanding.
CREATE INDEX consumer_group_messages_stream ON eventline.consumer_group_messages (group_name, stream, position)
    WHERE state <> 'parked';
CREATE INDEX consumer_group_messages_ready ON eventline.consumer_group_messages (group_name, position)
    WHERE state = 'ready';
CREATE INDEX consumer_group_messages_delivered ON eventline.consumer_group_messages (group_name, due_at)
    WHERE state = 'delivered';

-- The consumers that fetched from a group, and when they last did.
CREATE TABLE eventline.consumer_group_consumers (
    group_name   text        NOT NULL REFERENCES eventline.consumer_groups (name) ON DELETE CASCADE,
    consumer     text        NOT NULL,
    last_seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, consumer)
);

-- One `deliver` process at a time delivers a group with a webhook: it holds the session
-- advisory lock (eventline.webhook_lock_namespace(), hashtext(name)); the others stand by.
CREATE FUNCTION eventline.webhook_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1165380691 $$;
