-- Idempotency keys of HTTP requests: the first response to a key is stored and returned again
-- for a retry with the same body, also after a restart; a different body under the same key
-- is refused.
CREATE TABLE eventline.idempotency_keys (
    -- What the key belongs to (the route), so that keys of different routes never collide.
    scope          text        NOT NULL,
    key            text        NOT NULL,
    -- SHA-256 of the request body, computed by the server.
    request_hash   text        NOT NULL,
    -- Which request holds the reservation: set on insert and on takeover, so that a request
    -- whose reservation was taken over can no longer complete or release it.
    token          uuid        NOT NULL,
    -- NULL while the first request is being handled.
    status         integer,
    response       bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON eventline.idempotency_keys (created_at);
