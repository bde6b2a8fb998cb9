-- Consumer groups that never stall. A delivery whose ack deadline passed used to wait for the
-- group's next fetch to be returned to the queue or parked: with no consumer fetching, an event
-- past its last attempt showed as waiting, and `…/parked` showed nothing. Now any reader of the
-- group (a fetch, its status, its parked list) and each server's sweep expire overdue deliveries
-- first. And a group may bound how many deliveries one consumer holds unacknowledged, so a
-- consumer that fetches and never acks cannot keep every stream's head to itself.

-- NULL: no bound.
ALTER TABLE eventline.consumer_groups
    ADD COLUMN max_in_flight_per_consumer integer CHECK (max_in_flight_per_consumer BETWEEN 1 AND 10000);

-- A consumer's deliveries in flight, counted at each of its fetches.
CREATE INDEX consumer_group_messages_consumer ON eventline.consumer_group_messages (group_name, consumer)
    WHERE state = 'delivered';

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
    -- Nothing expired: the array is NULL, which reorders nothing.
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
