-- Check-ins get a table of their own (docs/adr/0005-checkins-table.md).
--
-- Check-ins are most of the log and all alike: one agent, one report, one server time. In the
-- generic `events` table each cost a `jsonb` parse of its report and of its metadata, text
-- comparisons of its stream's type and id in every index it entered, and `jsonb` path lookups
-- whenever the agent list folded it. Here the agent is a `uuid`, the times and the report's
-- fields the agent list shows are typed columns written once by the gateway, and the report is
-- kept as `json`: its text, checked but not parsed into a tree.
--
-- A check-in is still an event of the one log: it draws its `position` from the same sequence
-- as every other event and carries its transaction's id, so readers order both tables by
-- `(tx_id, position)` and the gap-free reading of docs/adr/0001 holds across them. The view
-- `log` shows both as one table in the shape of `events`.
CREATE TABLE checkins
(
    agent_id       uuid        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    -- The id the agent gave the check-in: a retried one is recorded once.
    checkin_id     uuid        NOT NULL,
    -- Server time, the same instant as `metadata->>'recorded_at'`.
    recorded_at    timestamptz NOT NULL,
    -- The report's own fields, as the agent list shows them.
    collected_at   timestamptz NOT NULL,
    hostname       text        NOT NULL,
    os_family      text        NOT NULL,
    os_name        text        NOT NULL,
    os_version     text        NOT NULL,
    kernel_version text        NOT NULL,
    arch           text        NOT NULL,
    agent_version  text        NOT NULL,
    -- The event as `events.payload` would hold it: {"AgentCheckedIn": {"checkin_id", "report"}}.
    payload        json        NOT NULL,
    metadata       json        NOT NULL,
    position       bigint      NOT NULL DEFAULT nextval('events_position_seq'),
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (agent_id, sequence)
);

CREATE UNIQUE INDEX checkins_log_order ON checkins (tx_id, position);
CREATE UNIQUE INDEX checkins_idempotency ON checkins (checkin_id, agent_id);

CREATE TRIGGER checkins_immutable_rows
    BEFORE UPDATE OR DELETE ON checkins
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER checkins_immutable_table
    BEFORE TRUNCATE ON checkins
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- The check-ins recorded so far move over with their place in the log. (The only time a row
-- leaves `events`: the immutability trigger is lifted for this statement of this migration.)
INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, os_family,
                      os_name, os_version, kernel_version, arch, agent_version, payload, metadata,
                      position, tx_id)
SELECT aggregate_id::uuid, sequence,
       COALESCE(idempotency_key, (payload #>> '{AgentCheckedIn,checkin_id}')::uuid),
       (metadata ->> 'recorded_at')::timestamptz,
       (payload #>> '{AgentCheckedIn,report,collected_at}')::timestamptz,
       payload #>> '{AgentCheckedIn,report,hostname}',
       payload #>> '{AgentCheckedIn,report,os,family}',
       payload #>> '{AgentCheckedIn,report,os,name}',
       payload #>> '{AgentCheckedIn,report,os,version}',
       payload #>> '{AgentCheckedIn,report,os,kernel_version}',
       payload #>> '{AgentCheckedIn,report,os,arch}',
       payload #>> '{AgentCheckedIn,report,agent_version}',
       payload::json, metadata::json, position, tx_id
  FROM events
 WHERE aggregate_type = 'agent_checkins';

ALTER TABLE events DISABLE TRIGGER events_immutable_rows;
DELETE FROM events WHERE aggregate_type = 'agent_checkins';
ALTER TABLE events ENABLE TRIGGER events_immutable_rows;

-- Every event left in `events` is one that readers skipping check-ins read.
DROP INDEX events_log_order_beside_checkins;

-- The whole log in one order, for readers that need both kinds and for auditors' queries.
-- Each branch keeps its own indexes: a condition on `(tx_id, position)` with an order and a
-- limit is answered by merging the two tables' `log_order` indexes, and a condition on
-- `aggregate_type` drops the branch it excludes when the query is planned. Payload and metadata
-- are `json` here, which a check-in's are already (a reader passing over check-ins never parses
-- one); `recorded_at` is typed in both, so that a reader wanting only the time parses nothing.
CREATE VIEW log AS
SELECT tx_id, position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::json AS payload, metadata::json AS metadata, idempotency_key,
       (metadata ->> 'recorded_at')::timestamptz AS recorded_at
  FROM events
UNION ALL
SELECT tx_id, position, 'agent_checkins'::text, agent_id::text, sequence, 'AgentCheckedIn'::text,
       '1'::text, payload, metadata, checkin_id, recorded_at
  FROM checkins;
