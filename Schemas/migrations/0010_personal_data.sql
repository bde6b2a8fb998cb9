-- Personal data (crypto-shredding): each subject's data key, wrapped by the master key.
-- Forgetting a subject destroys its key (wrapped_key becomes NULL) and keeps the row, so the
-- key never comes back: no personal data of a forgotten subject is stored again.
CREATE TABLE eventline.subject_keys (
    subject       text PRIMARY KEY,
    wrapped_key   bytea,
    -- A fingerprint of the master key that wrapped it (not the key).
    master_key_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    forgotten_at  timestamptz,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
);

-- The streams that hold a subject's personal data, to drop their snapshots when it is
-- forgotten. A writer records a pair the first time it seals data of the subject into the
-- stream (before the append commits: a pair may name a stream the append then missed).
CREATE TABLE eventline.subject_streams (
    subject text NOT NULL,
    stream  text NOT NULL,
    PRIMARY KEY (subject, stream)
);

-- Deleted streams (tombstones), counted by eventctl status.
CREATE INDEX events_tombstones ON eventline.events (stream) WHERE type = '$StreamDeleted';
