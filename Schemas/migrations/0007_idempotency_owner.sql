-- Who holds an idempotency key's reservation: the server process's presence session, named by
-- its backend pid and start time (a pid alone can be reused). While that session is alive the
-- request may still be running; once it is gone (the server died, or PostgreSQL restarted) a
-- retry takes the reservation over at once instead of waiting out the takeover time.
-- Rows from before this migration have no owner and keep the time rule only.
ALTER TABLE eventline.idempotency_keys
    ADD COLUMN owner_pid     integer,
    ADD COLUMN owner_started timestamptz;
