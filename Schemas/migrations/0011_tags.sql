-- Tags (DCB): an event may carry a few short strings (`student:s1`) so that queries and append
-- conditions find every event about something, whatever its stream.
--
-- The events keep their tags in a column, as given (NULL when none: plain events cost nothing).
-- eventline.event_tags holds one row per tag and event, keyed (tag, position): "the first event
-- carrying tag T after position P" is one probe of that key, however long T's history before P.
-- Both are written by the log writer in the transaction that writes the event, and like the
-- log they are never updated or deleted.

ALTER TABLE eventline.events ADD COLUMN tags text[];

CREATE TABLE eventline.event_tags (
    tag       text   NOT NULL,
    position  bigint NOT NULL,
    CONSTRAINT event_tags_pkey PRIMARY KEY (tag, position)
);

CREATE TRIGGER event_tags_append_only
    BEFORE UPDATE OR DELETE ON eventline.event_tags
    FOR EACH ROW EXECUTE FUNCTION eventline.forbid_event_changes();

CREATE TRIGGER event_tags_no_truncate
    BEFORE TRUNCATE ON eventline.event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION eventline.forbid_event_changes();
