-- The shape of an event's data: the version of its type's schema the writer knew. Readers that
-- go through the platform turn an older shape into the current one with the domain's
-- upcasters; the stored data is never rewritten. NULL means no version was recorded (every
-- event written before this migration, and raw appends that name none) and reads as 1.
-- A nullable column without a default is added without rewriting the table.
ALTER TABLE eventline.events
    ADD COLUMN schema_version smallint;
