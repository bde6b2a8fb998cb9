-- The event log: every event ever appended, in commit order.
--
-- Positions are dense (1, 2, 3 … with no holes) and commit-ordered because every append goes
-- through a log writer that first locks the single row of eventline.log_head, assigns the next
-- positions from it, inserts, moves the head and commits. Writers in every process serialise on
-- that row lock, so a reader that has seen position P has seen every position below P.

-- The head of the log: one row, the position of the last committed event.
CREATE TABLE eventline.log_head (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    position  bigint  NOT NULL CHECK (position >= 0)
);
INSERT INTO eventline.log_head (id, position) VALUES (true, 0);

CREATE TABLE eventline.events (
    position     bigint      NOT NULL,
    stream       text        NOT NULL,
    version      bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    type         text        NOT NULL,
    -- The event's JSON, as is (codec 0) or LZ4 block-compressed with its 4-byte little-endian
    -- uncompressed length in front (codec 1) when larger than the writer's threshold.
    data         bytea       NOT NULL,
    codec        smallint    NOT NULL DEFAULT 0,
    -- correlationId, causationId, commandId, user, and anything the caller adds.
    metadata     jsonb       NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL,
    -- Stream names are category-id; the category is the part before the first '-'.
    category     text        GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_stream_version_key UNIQUE (stream, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_position_positive CHECK (position > 0),
    CONSTRAINT events_version_positive CHECK (version > 0),
    CONSTRAINT events_codec_known CHECK (codec IN (0, 1)),
    CONSTRAINT events_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Consumers follow one category or a few event types.
CREATE INDEX events_category_position ON eventline.events (category, position);
CREATE INDEX events_type_position ON eventline.events (type, position);

-- Payloads are compressed by the writer already; PostgreSQL's own compression would only cost time.
ALTER TABLE eventline.events ALTER COLUMN data SET STORAGE EXTERNAL;

-- Each stream's first event marks the stream: counting or listing streams reads this small index.
-- A stream's version is max(version) of its events, found through events_stream_version_key.
CREATE INDEX events_streams ON eventline.events (category, stream) WHERE version = 1;

-- The log is append-only: rows are never updated or deleted.
CREATE FUNCTION eventline.forbid_event_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'eventline.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON eventline.events
    FOR EACH ROW EXECUTE FUNCTION eventline.forbid_event_changes();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventline.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventline.forbid_event_changes();
