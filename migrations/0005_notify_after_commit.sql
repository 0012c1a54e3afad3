-- Writers now send `NOTIFY logbook_events` themselves after committing (coalesced, from a
-- transaction of its own). A NOTIFY inside the appending transaction takes a database-wide lock
-- that is held through the commit's WAL flush, which serialised every concurrent append.
DROP TRIGGER events_notify ON events;
DROP FUNCTION events_notify();
