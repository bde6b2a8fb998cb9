-- Snapshots of aggregate state, so that loading a long stream reads the latest snapshot and
-- only the events after it. A snapshot is a cache: it can be deleted at any time and is
-- rebuilt from the log.
CREATE TABLE eventline.snapshots (
    stream         text        PRIMARY KEY,
    -- The stream version the state includes.
    version        bigint      NOT NULL CHECK (version > 0),
    -- The aggregate's state shape; a snapshot of another shape is ignored and replaced.
    state_version  integer     NOT NULL,
    -- The state's JSON, LZ4 block-compressed with its 4-byte little-endian length in front.
    data           bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
