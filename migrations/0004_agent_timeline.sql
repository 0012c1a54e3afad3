-- Read model of the `timeline` projection: an index of every event about an agent, in log
-- order. Entries point at their event (aggregate type, id, sequence); the API reads the payload
-- from the log itself, so the timeline never duplicates check-in bodies.

CREATE TABLE agent_timeline_view
(
    agent_id       uuid        NOT NULL,
    tx_id          xid8        NOT NULL,
    position       bigint      NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    actor          text        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    PRIMARY KEY (agent_id, tx_id, position)
);
