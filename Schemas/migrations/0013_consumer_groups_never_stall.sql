-- Consumer groups that never stall. A delivery whose ack deadline passed used to wait for the
-- group's next fetch to be returned to the queue or parked: with no consumer fetching, an event
-- past its last attempt showed as waiting, and `…/parked` showed nothing. Now any reader of the
-- group (a fetch, its status, its parked list) and each server's sweep expire overdue deliveries
-- first. And a group may bound how many deliveries one consumer holds unacknowledged, so a
-- consumer that fetches and never acks cannot keep every stream's head to itself.

-- NULL: no bound.
ALTER TABLE eventline.consumer_groups
    ADD COLUMN max_in_flight_per_consumer integer CHECK (max_in_flight_per_consumer BETWEEN 1 AND 10000);
-- How many consecutive events of one stream a fetch hands to one consumer together (1: one at a
-- time). A hot stream then moves a run per round trip; its order holds because the run is
-- acknowledged in order or, refused or overdue, returned whole.
ALTER TABLE eventline.consumer_groups
    ADD COLUMN max_per_stream integer NOT NULL DEFAULT 1 CHECK (max_per_stream BETWEEN 1 AND 1000);

-- A consumer's deliveries in flight, counted at each of its fetches.
CREATE INDEX consumer_group_messages_consumer ON eventline.consumer_group_messages (group_name, consumer)
    WHERE state = 'delivered';

-- Reordering no streams returns at once (an ack or a nack that settled nothing, a fetch with
-- nothing overdue): as a plain SQL function its first statement still read every ready row of
-- the group. Otherwise as in 0012.
CREATE OR REPLACE FUNCTION eventline.consumer_group_reorder(g text, streams text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF streams IS NULL OR cardinality(streams) = 0 THEN
        RETURN;
    END IF;
    PERFORM eventline.consumer_group_lock_streams(g, streams);
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
END
$$;

-- Returns the overdue deliveries of group `g` to the queue, or parks those past their last
-- attempt, and readies the next event of their streams. The caller holds the group's row lock
-- (FOR UPDATE), as a fetch does. Returns how many expired.
CREATE FUNCTION eventline.consumer_group_expire(g text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    streams text[];
    expired integer;
BEGIN
    WITH overdue AS (
        UPDATE eventline.consumer_group_messages m
        SET state = CASE WHEN m.attempt >= cg.max_deliveries THEN 'parked' ELSE 'ready' END,
            parked_at = CASE WHEN m.attempt >= cg.max_deliveries THEN now() END,
            last_error = 'not acknowledged in time', delivery_id = NULL, consumer = NULL, due_at = now()
        FROM eventline.consumer_groups cg
        WHERE cg.name = g AND m.group_name = g AND m.state = 'delivered' AND m.due_at <= now()
        RETURNING m.stream
    )
    SELECT array_agg(DISTINCT stream), count(*) INTO streams, expired FROM overdue;
    -- Nothing expired (every fetch, nearly always): the array is NULL, which reorders nothing.
    PERFORM eventline.consumer_group_reorder(g, streams);
    RETURN expired;
END
$$;

-- Expires the overdue deliveries of every group (or of `one_group`) that has some. A group whose row
-- another transaction holds is skipped: a fetch holding it expires them itself. Returns how
-- many expired.
CREATE FUNCTION eventline.consumer_groups_sweep(one_group text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    g text;
    total integer := 0;
BEGIN
    FOR g IN
        SELECT cg.name FROM eventline.consumer_groups cg
        WHERE (one_group IS NULL OR cg.name = one_group)
          AND EXISTS (SELECT 1 FROM eventline.consumer_group_messages m
                      WHERE m.group_name = cg.name AND m.state = 'delivered' AND m.due_at <= now())
        ORDER BY cg.name
    LOOP
        PERFORM 1 FROM eventline.consumer_groups WHERE name = g FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            total := total + eventline.consumer_group_expire(g);
        END IF;
    END LOOP;
    RETURN total;
END
$$;

-- Refusing a delivery also returns the later events of its stream that the same consumer holds
-- (a run handed out together, `max_per_stream`): they wait behind it again, so the stream's
-- order holds. Otherwise as in 0012.
CREATE OR REPLACE FUNCTION eventline.consumer_group_refuse(g text, ids uuid[], seconds double precision, reason text) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    settled uuid[];
    streams text[];
BEGIN
    PERFORM 1 FROM eventline.consumer_groups WHERE name = g FOR SHARE;
    WITH target AS (
        SELECT position, delivery_id, stream, consumer FROM eventline.consumer_group_messages
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
    ), behind AS (
        UPDATE eventline.consumer_group_messages m
        SET state = 'blocked', delivery_id = NULL, consumer = NULL, due_at = now()
        FROM target
        WHERE m.group_name = g AND m.stream = target.stream AND m.position > target.position
          AND m.state = 'delivered' AND m.consumer = target.consumer AND NOT (m.delivery_id = ANY(ids))
    )
    SELECT array_agg(refused.delivery_id), array_agg(DISTINCT refused.stream) INTO settled, streams FROM refused;
    -- Nothing settled (a stale nack): both arrays are NULL, which reorders and returns nothing.
    PERFORM eventline.consumer_group_reorder(g, streams);
    RETURN QUERY SELECT unnest(settled);
END
$$;
