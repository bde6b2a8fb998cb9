-- API keys. Only a SHA-256 hash of each key is stored; the key itself is shown once, when it
-- is created. When any key that is not revoked exists, the HTTP API requires one.
CREATE TABLE eventline.api_keys (
    -- The public part of the key (`el_<id>_<secret>`), for listing and revoking.
    id          text        PRIMARY KEY,
    key_hash    text        NOT NULL UNIQUE,
    scope       text        NOT NULL CHECK (scope IN ('read', 'commands', 'admin')),
    name        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
