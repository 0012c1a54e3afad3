-- The log's order without check-ins: readers that need nothing of check-ins (the jobs and
-- timeline read models, the job dispatcher) follow this index and never visit a check-in's
-- row. Check-ins, most of the log, are not in it, so appending them costs nothing more.
CREATE UNIQUE INDEX events_log_order_beside_checkins ON events (tx_id, position)
    WHERE aggregate_type <> 'agent_checkins';
-- Built inside the migration's transaction: on an existing log of ten million events it holds
-- appends back for the seconds the build takes, once.
