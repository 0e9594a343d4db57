-- What replicas need: which books changed since a model's snapshot (interactions have their index since 0002),
-- and model artifacts stored in the database for replicas on hosts without a shared disk
-- (RECOMMENDER_ARTIFACT_STORE=postgres).
CREATE INDEX books_updated_idx ON books (updated_at);

CREATE TABLE model_artifacts (
    version text NOT NULL,
    name    text NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (version, name)
);
