-- The event log: postgres-es's `events` table, extended so that readers can tail every event in
-- one global order without ever skipping one that commits late (docs/adr/0001).

CREATE TABLE events
(
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL CHECK (sequence >= 0),
    event_type      text   NOT NULL,
    event_version   text   NOT NULL,
    payload         jsonb  NOT NULL,
    metadata        jsonb  NOT NULL,
    -- Global order. `position` alone is not a safe cursor (a transaction holding a lower number
    -- can commit after a reader passed it); readers order by (tx_id, position) and only read
    -- below the oldest transaction still running.
    position        bigint GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8   NOT NULL DEFAULT pg_current_xact_id(),
    -- A client-chosen id that makes a retried append a no-op (check-in ids, for instance).
    idempotency_key uuid,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_log_order ON events (tx_id, position);
CREATE UNIQUE INDEX events_idempotency ON events (aggregate_type, aggregate_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Used by postgres-es when an aggregate is configured with snapshots.
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Events are facts: nothing updates or deletes them.
CREATE FUNCTION events_are_immutable() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'events are immutable: % is not allowed on the event log', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_immutable_rows
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_immutable_table
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Wake log readers as soon as new events commit. One notification per statement (and Postgres
-- folds duplicates within a transaction), so batched appends cost one notification per batch.
CREATE FUNCTION events_notify() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('logbook_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Where each projection is in the log. Updated in the same transaction as its read model.
CREATE TABLE projection_checkpoints
(
    projection       text        PRIMARY KEY,
    tx_id            xid8        NOT NULL DEFAULT '0',
    position         bigint      NOT NULL DEFAULT 0,
    events_applied   bigint      NOT NULL DEFAULT 0,
    last_recorded_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
