-- How far a search took each trial: fidelity 1 for a fit finished and measured on every reader, less for one judged
-- early on a sample and stopped (its metrics are the sample's, not comparable with a full one's); when it ended
-- since its search started; and what a request costs with it (ms of model maths), when measured.
ALTER TABLE tuning_trials
    ADD COLUMN fidelity real NOT NULL DEFAULT 1 CHECK (fidelity > 0 AND fidelity <= 1),
    ADD COLUMN elapsed_seconds real,
    ADD COLUMN cost_ms real;
