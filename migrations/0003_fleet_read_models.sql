-- Read models of the `fleet` projection: clients, sites and the agent list. Built only from the
-- event log; `logbook projections rebuild fleet` recreates them from zero.

CREATE TABLE clients_view
(
    client_id  uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE sites_view
(
    site_id    uuid        PRIMARY KEY,
    client_id  uuid        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX sites_view_client ON sites_view (client_id, name, site_id);

CREATE TABLE agents_view
(
    agent_id          uuid        PRIMARY KEY,
    client_id         uuid        NOT NULL,
    site_id           uuid        NOT NULL,
    hostname          text        NOT NULL,
    display_name      text        NOT NULL,
    os_family         text        NOT NULL,
    os_name           text        NOT NULL DEFAULT '',
    os_version        text        NOT NULL DEFAULT '',
    kernel_version    text        NOT NULL DEFAULT '',
    arch              text        NOT NULL,
    agent_version     text        NOT NULL,
    enrolled_at       timestamptz NOT NULL,
    decommissioned_at timestamptz,
    -- Server time of the newest check-in: what status is computed from.
    last_checkin_at   timestamptz,
    -- Agent time of the report in `latest_report`; an older report sent late never replaces it.
    last_collected_at timestamptz,
    checkins          bigint      NOT NULL DEFAULT 0,
    latest_report     jsonb
) WITH (fillfactor = 80); -- leave room for HOT updates: check-ins touch no indexed column

CREATE INDEX agents_view_by_hostname ON agents_view (hostname, agent_id);
CREATE INDEX agents_view_by_client ON agents_view (client_id, hostname, agent_id);
CREATE INDEX agents_view_by_site ON agents_view (site_id, hostname, agent_id);
