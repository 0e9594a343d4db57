-- Every configuration a search measured (a retrain's, or `recommender tune`'s): the next search starts from the best
-- of them (warm start), so that a proper search done once, as its own job, serves every later retrain.
CREATE TABLE tuning_trials (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    version    text,                    -- the retrain's version, or NULL for `recommender tune`
    params     jsonb NOT NULL,
    metrics    jsonb NOT NULL,           -- on that search's split: both slices
    score      double precision NOT NULL, -- what the search maximised
    seconds    double precision NOT NULL
);

CREATE INDEX tuning_trials_score_idx ON tuning_trials (score DESC);
