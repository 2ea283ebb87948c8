-- Views over the run ledger (runs/ledger/, columns in schemas/ledger.yaml) for `forcedphot sql`
-- and `forcedphot status --history`. The ledger_* views read the record files, registered by
-- forcedphot.ledger.create_views as the Arrow datasets _ledger_* (the sandboxed connection opens
-- no file; a table with no record yet is empty with the schema's columns); `runs` and `quanta`
-- are the views to query.

-- name: ledger_run_start
CREATE OR REPLACE VIEW ledger_run_start AS
SELECT * FROM _ledger_run_start;

-- name: ledger_run_end
CREATE OR REPLACE VIEW ledger_run_end AS
SELECT * FROM _ledger_run_end;

-- name: ledger_quanta
CREATE OR REPLACE VIEW ledger_quanta AS
SELECT * FROM _ledger_quanta;

-- name: runs
-- outcome 'unfinished': the run was killed, or is still running (no run_end record yet)
CREATE OR REPLACE VIEW runs AS
SELECT s.run_id, CAST(s.started AS TIMESTAMPTZ) AS started, CAST(e.finished AS TIMESTAMPTZ) AS finished,
       coalesce(e.outcome, 'unfinished') AS outcome, e.exit_code, e.n_done, e.n_up_to_date, e.n_failed,
       e.n_elsewhere, e.seconds, s.command, s.config, s.config_fingerprint, s.code_version, s.host, s.pid,
       s.process_start
FROM ledger_run_start s LEFT JOIN ledger_run_end e USING (run_id);

-- name: quanta
CREATE OR REPLACE VIEW quanta AS
SELECT run_id, tract, patch, band, status, CAST(started AS TIMESTAMPTZ) AS started,
       CAST(finished AS TIMESTAMPTZ) AS finished, seconds, timings, n_rows, inputs, output_checksum, error, host, pid
FROM ledger_quanta;
