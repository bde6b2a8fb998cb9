-- A consumer group hands out a stream's events one at a time, in order. Until now a fetch found
-- the earliest events whose stream had nothing earlier outstanding by testing each waiting event
-- in turn, so one stream with many events waiting made every fetch cost all of them (and the
-- planner could run the test once per row of the update: quadratic). Now the order is kept in
-- the rows: only the first outstanding (not parked) event of each stream is `ready` (or
-- `delivered`); the stream's later events wait as `blocked`. A fetch takes the earliest `ready`
-- events, an index scan of about the rows it hands out, and settling an event (an ack, a park)
-- readies the next one of its stream.
ALTER TABLE eventline.consumer_group_messages DROP CONSTRAINT consumer_group_messages_state_check;
ALTER TABLE eventline.consumer_group_messages
    ADD CONSTRAINT consumer_group_messages_state_check CHECK (state IN ('ready', 'blocked', 'delivered', 'parked'));

-- The queues as they stand: a ready event behind an outstanding one of its stream waits.
UPDATE eventline.consumer_group_messages m SET state = 'blocked'
WHERE m.state = 'ready' AND EXISTS (
    SELECT 1 FROM eventline.consumer_group_messages e
    WHERE e.group_name = m.group_name AND e.stream = m.stream AND e.position < m.position AND e.state <> 'parked');

-- The ready events of a stream (at most one, but for a moment after a parked event is retried).
CREATE INDEX consumer_group_messages_ready_stream ON eventline.consumer_group_messages (group_name, stream)
    WHERE state = 'ready';

-- The advisory-lock namespace of reordering a group's streams.
CREATE FUNCTION eventline.consumer_group_order_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1165380692 $$;

-- Locks the streams of group `g` for reordering until the transaction ends, in a fixed order.
CREATE FUNCTION eventline.consumer_group_lock_streams(g text, streams text[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(eventline.consumer_group_order_namespace(), hashtext(g || E'\n' || s))
    FROM (SELECT DISTINCT hashtext(g || E'\n' || s) AS h, s FROM unnest(streams) AS u (s) ORDER BY 1) ordered;
$$;

-- Puts the events of `streams` in group `g` in order again after some of them were settled,
-- parked, retried or timed out: the first outstanding event of each stream is ready (unless it
-- is delivered), every later one waits. Its cost is a few index probes per stream, however many
-- events wait. Each stream is reordered under a lock held to the end of the transaction, so
-- that two settlements of one stream (acks run side by side) cannot both miss the next event.
CREATE FUNCTION eventline.consumer_group_reorder(g text, streams text[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT eventline.consumer_group_lock_streams(g, streams);
    UPDATE eventline.consumer_group_messages m SET state = 'blocked'
    WHERE m.group_name = g AND m.stream = ANY(streams) AND m.state = 'ready'
      AND EXISTS (
          SELECT 1 FROM eventline.consumer_group_messages e
          WHERE e.group_name = g AND e.stream = m.stream AND e.position < m.position AND e.state <> 'parked');
    UPDATE eventline.consumer_group_messages m SET state = 'ready'
    FROM (
        SELECT (SELECT e.position FROM eventline.consumer_group_messages e
                WHERE e.group_name = g AND e.stream = s.stream AND e.state <> 'parked'
                ORDER BY e.position LIMIT 1) AS first
        FROM unnest(streams) AS s (stream)
    ) h
    WHERE m.group_name = g AND m.position = h.first AND m.state = 'blocked';
$$;

-- Acknowledges deliveries of group `g`: deletes them and readies the next event of each of
-- their streams. Acks of one group run side by side (a share lock on the group's row keeps
-- fetches out), each stream's reordering one at a time.
CREATE FUNCTION eventline.consumer_group_ack(g text, ids uuid[]) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    settled uuid[];
    streams text[];
BEGIN
    PERFORM 1 FROM eventline.consumer_groups WHERE name = g FOR SHARE;
    WITH acked AS (
        DELETE FROM eventline.consumer_group_messages
        WHERE group_name = g AND delivery_id = ANY(ids) AND state = 'delivered'
        RETURNING delivery_id, stream
    )
    SELECT array_agg(delivery_id), array_agg(DISTINCT stream) INTO settled, streams FROM acked;
    -- Nothing settled: both arrays are NULL, which reorders and returns nothing.
    PERFORM eventline.consumer_group_reorder(g, streams);
    RETURN QUERY SELECT unnest(settled);
END
$$;

-- Refuses deliveries of group `g`: each waits `seconds` before it is delivered again, or is
-- parked after its last attempt (readying the next event of its stream).
CREATE FUNCTION eventline.consumer_group_refuse(g text, ids uuid[], seconds double precision, reason text) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    settled uuid[];
    streams text[];
BEGIN
    PERFORM 1 FROM eventline.consumer_groups WHERE name = g FOR SHARE;
    WITH target AS (
        SELECT position, delivery_id FROM eventline.consumer_group_messages
        WHERE group_name = g AND delivery_id = ANY(ids) AND state = 'delivered'
        FOR UPDATE
    ), refused AS (
        UPDATE eventline.consumer_group_messages m
        SET state = CASE WHEN m.attempt >= cg.max_deliveries THEN 'parked' ELSE 'ready' END,
            parked_at = CASE WHEN m.attempt >= cg.max_deliveries THEN now() END,
            due_at = now() + make_interval(secs => seconds), delivery_id = NULL, consumer = NULL, last_error = reason
        FROM target, eventline.consumer_groups cg
        WHERE m.group_name = g AND m.position = target.position AND cg.name = g
        RETURNING target.delivery_id, m.stream
    )
    SELECT array_agg(refused.delivery_id), array_agg(DISTINCT refused.stream) INTO settled, streams FROM refused;
    -- Nothing settled: both arrays are NULL, which reorders and returns nothing.
    PERFORM eventline.consumer_group_reorder(g, streams);
    RETURN QUERY SELECT unnest(settled);
END
$$;
