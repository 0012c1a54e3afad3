-- The timeline no longer indexes check-ins: its query reads each agent's check-ins from the
-- log's primary key, which keeps them in log order. The rows it kept for them go.
DELETE FROM agent_timeline_view WHERE aggregate_type = 'agent_checkins';
