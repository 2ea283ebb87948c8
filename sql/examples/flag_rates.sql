-- Answers: how often is each flag set, per band? For every boolean flag column of forced_source
--   (`*_flag*` and `pixelFlags_*`), the number and fraction of primary sources with it set,
--   most frequent first.
-- Parameters: none.
-- Run: forcedphot sql --repo repo --example flag_rates
SELECT flag, band,
       count(*) FILTER (WHERE is_set) AS n_set,
       count(*) AS n_sources,
       round(avg(is_set::INTEGER), 4) AS rate
FROM (
    UNPIVOT (SELECT band, COLUMNS('_flag|^pixelFlags_') FROM forced_source WHERE detect_isPrimary)
    ON COLUMNS(* EXCLUDE (band))
    INTO NAME flag VALUE is_set
)
GROUP BY flag, band
ORDER BY rate DESC, flag, band;
