-- A check-in's payload is stored as text (docs/adr/0005-checkins-table.md).
--
-- As `json`, every check-in's report (about 1.1 KiB) was lexed by Postgres once more on its way
-- in, only to be stored as the same text: 12.6 % of the ingest statement's CPU under saturated
-- check-ins, the largest single item in it (BENCHMARKS.md, the fifteenth machine). The gateway is
-- the table's only writer, and it writes the text serde_json serialized from the event, so the
-- check bought nothing: readers decode the text, and name the event if it is not what they
-- expect. The metadata stays `json` (a few hundred bytes).
DROP VIEW log;

ALTER TABLE checkins ALTER COLUMN payload TYPE text;

-- The whole log, for auditors' queries: payload and metadata as `json`. Reading a check-in's
-- payload through this view lexes it (as reading an event of `events` through it converts it
-- from `jsonb`); this code's readers use `log_text` instead.
CREATE VIEW log AS
SELECT tx_id, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::json AS payload, metadata::json AS metadata, idempotency_key,
       (metadata ->> 'recorded_at')::timestamptz AS recorded_at
  FROM events
UNION ALL
SELECT tx_id, position, 'agent_checkins'::text, agent_id::text, sequence, 'AgentCheckedIn'::text,
       '1'::text, payload::json, metadata, checkin_id, recorded_at
  FROM checkins;

-- The same log with payload and metadata as text, as the projections' readers decode them. A
-- column of a view over `UNION ALL` is computed for every row a query reads through it, even
-- where the query then discards it: through `log`, a reader passing over check-ins would lex
-- every check-in's payload it passed.
CREATE VIEW log_text AS
SELECT tx_id, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, idempotency_key,
       (metadata ->> 'recorded_at')::timestamptz AS recorded_at
  FROM events
UNION ALL
SELECT tx_id, position, 'agent_checkins'::text, agent_id::text, sequence, 'AgentCheckedIn'::text,
       '1'::text, payload, metadata::text, checkin_id, recorded_at
  FROM checkins;
