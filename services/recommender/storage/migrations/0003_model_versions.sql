-- The model registry: every version a retrain produced, served or not, and why.
CREATE TABLE model_versions (
    version          text PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL CHECK (status IN ('active', 'rejected', 'retired', 'failed')),
    reason           text NOT NULL DEFAULT '',
    params           jsonb NOT NULL DEFAULT '{}',
    data_sizes       jsonb NOT NULL DEFAULT '{}',  -- users, books, interactions of the snapshot
    metrics          jsonb NOT NULL DEFAULT '{}',  -- this configuration on its evaluation split
    evaluation       jsonb NOT NULL DEFAULT '{}',  -- every row of that evaluation (parts, baselines, the active one)
    training_seconds double precision NOT NULL DEFAULT 0,
    activated_at     timestamptz                   -- the last time it became active (rollback goes to the previous)
);

-- At most one active version, whatever the races.
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (status) WHERE status = 'active';
