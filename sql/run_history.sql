-- The latest runs of the repository, newest first (forcedphot status --history).
-- Parameter: $limit
SELECT run_id, started, finished, outcome, exit_code, n_done, n_up_to_date, n_failed, n_elsewhere,
       round(seconds, 1) AS seconds, host, pid, process_start, command
FROM runs
ORDER BY started DESC, run_id DESC
LIMIT $limit;
