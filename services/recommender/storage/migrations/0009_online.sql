-- What readers did with the answers they were shown, so that versions can be compared online, and canaries.

-- One row per Recommend answer: who saw which books (best first), from which version, when.
CREATE TABLE impressions (
    recommendation_id uuid PRIMARY KEY,
    user_id           integer NOT NULL,
    version           text NOT NULL,
    books             integer[] NOT NULL,
    shown_at          timestamptz NOT NULL
);
CREATE INDEX impressions_version_shown_idx ON impressions (version, shown_at);
CREATE INDEX impressions_user_shown_idx ON impressions (user_id, shown_at);
CREATE INDEX impressions_shown_idx ON impressions (shown_at);

-- Clicks, reads and dismissals of books an answer showed. No foreign key to impressions: an event may arrive
-- before its impression is written (impressions are written in batches) or after it was pruned.
CREATE TABLE feedback (
    feedback_id       bigserial PRIMARY KEY,
    recommendation_id uuid NOT NULL,
    book_id           integer NOT NULL,
    event             text NOT NULL CHECK (event IN ('click', 'read', 'dismiss')),
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_recommendation_idx ON feedback (recommendation_id);
CREATE INDEX feedback_recorded_idx ON feedback (recorded_at);
-- Reads without an id are attributed by the window after an impression: the reader's interactions by book.
CREATE INDEX interactions_user_occurred_idx ON interactions (user_id, occurred_at);

-- A canary: a version served to a share of users beside the active one; at most one.
ALTER TABLE model_versions DROP CONSTRAINT model_versions_status_check;
ALTER TABLE model_versions
    ADD CONSTRAINT model_versions_status_check CHECK (status IN ('active', 'canary', 'rejected', 'retired', 'failed')),
    ADD COLUMN canary_share double precision CHECK (canary_share > 0 AND canary_share < 1),
    ADD COLUMN canary_started_at timestamptz;
CREATE UNIQUE INDEX model_versions_one_canary ON model_versions (status) WHERE status = 'canary';
ALTER TABLE model_versions DROP CONSTRAINT model_versions_outcome;
ALTER TABLE model_versions
    ADD CONSTRAINT model_versions_outcome CHECK (outcome IN ('promoted', 'canary', 'rejected', 'failed'));
