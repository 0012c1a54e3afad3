-- Bearer secrets, by hash. Written by the command side in the same transaction as the event that
-- issues or revokes the secret, so it is never ahead of or behind the log, and it can be rebuilt
-- from the log (every hash is in its issuing event). The check-in path joins it to authenticate
-- a whole batch in the statement that appends it.

CREATE TABLE credentials
(
    secret_hash bytea       PRIMARY KEY CHECK (length(secret_hash) = 32),
    kind        text        NOT NULL CHECK (kind IN ('agent', 'api_token', 'enrollment_token')),
    subject_id  uuid        NOT NULL,
    issued_at   timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE INDEX credentials_subject ON credentials (subject_id);
