-- Jobs.

-- Each agent's job counter: the next job queued for an agent gets last_seq + 1. Kept by the
-- command side in the same transaction as the `JobQueued` event (its row lock also orders two
-- queue operations for one agent), and rebuildable from the log (max agent_seq per agent).
CREATE TABLE agent_job_sequences
(
    agent_id uuid   PRIMARY KEY,
    last_seq bigint NOT NULL
);

-- Read models of the `jobs` projection.
CREATE TABLE jobs_view
(
    job_id          uuid        PRIMARY KEY,
    agent_id        uuid        NOT NULL,
    agent_seq       bigint      NOT NULL,
    bulk_id         uuid,
    kind            text        NOT NULL,
    interpreter     text,
    summary         text        NOT NULL,
    status          text        NOT NULL,
    queued_by       text        NOT NULL,
    queued_at       timestamptz NOT NULL,
    deadline        timestamptz NOT NULL,
    dispatched_at   timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    exit_code       integer,
    duration_ms     bigint,
    -- Sequence of the event that ended the job, to read its result from the log.
    final_sequence  bigint,
    ended_by        text
) WITH (fillfactor = 80);

CREATE INDEX jobs_view_by_agent ON jobs_view (agent_id, agent_seq DESC);
CREATE INDEX jobs_view_by_bulk ON jobs_view (bulk_id, status) WHERE bulk_id IS NOT NULL;
CREATE INDEX jobs_view_pending ON jobs_view (deadline) WHERE status IN ('queued', 'dispatched');

CREATE TABLE bulk_jobs_view
(
    bulk_id    uuid        PRIMARY KEY,
    target     jsonb       NOT NULL,
    kind       text        NOT NULL,
    summary    text        NOT NULL,
    members    integer     NOT NULL,
    issued_by  text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    deadline   timestamptz NOT NULL
);
