-- The online record at any volume: impressions and feedback partitioned by day (retired by dropping partitions),
-- each impression's own figures kept with it, and the sums of those figures per version, 10-minute bucket and
-- reader (online_rollups), per version and reader (online_readers) and per version and bucket (online_buckets),
-- kept up to date by storage/feedback.py's roll-up. The figures read the roll-ups, never a scan of every impression.

ALTER TABLE impressions RENAME TO impressions_unpartitioned;
ALTER INDEX impressions_pkey RENAME TO impressions_unpartitioned_pkey;
DROP INDEX impressions_version_shown_idx, impressions_user_shown_idx, impressions_shown_idx;
CREATE TABLE impressions (
    recommendation_id uuid NOT NULL,
    user_id           integer NOT NULL,
    version           text NOT NULL,
    books             integer[] NOT NULL,
    shown_at          timestamptz NOT NULL,
    -- What readers did with this answer (attributed as storage/feedback.py says), as last rolled up.
    counted           boolean NOT NULL DEFAULT false,  -- in online_rollups yet
    clicked           boolean NOT NULL DEFAULT false,
    reads             integer NOT NULL DEFAULT 0,
    reciprocal_rank   double precision NOT NULL DEFAULT 0,  -- of the first book clicked or read
    PRIMARY KEY (recommendation_id, shown_at)
) PARTITION BY RANGE (shown_at);
-- Days without a partition of their own (created ahead by the hourly upkeep) land here.
CREATE TABLE impressions_default PARTITION OF impressions DEFAULT;
CREATE INDEX impressions_user_shown_idx ON impressions (user_id, shown_at);
CREATE INDEX impressions_shown_idx ON impressions (shown_at);
CREATE INDEX impressions_not_counted_idx ON impressions (shown_at) WHERE NOT counted;
-- A reader's answers that hold a read: the ones a newer answer may take it from.
CREATE INDEX impressions_read_idx ON impressions (user_id, shown_at) WHERE reads > 0;
INSERT INTO impressions (recommendation_id, user_id, version, books, shown_at)
SELECT recommendation_id, user_id, version, books, shown_at FROM impressions_unpartitioned;
DROP TABLE impressions_unpartitioned;

ALTER TABLE feedback RENAME TO feedback_unpartitioned;
ALTER INDEX feedback_pkey RENAME TO feedback_unpartitioned_pkey;
DROP INDEX feedback_recommendation_idx, feedback_recorded_idx;
CREATE TABLE feedback (
    feedback_id       bigint NOT NULL DEFAULT nextval('feedback_feedback_id_seq'),
    recommendation_id uuid NOT NULL,
    book_id           integer NOT NULL,
    event             text NOT NULL CHECK (event IN ('click', 'read', 'dismiss')),
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    user_id           integer,
    rolled_up         boolean NOT NULL DEFAULT false,  -- its answer's figures were rolled up since it arrived
    PRIMARY KEY (feedback_id, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE TABLE feedback_default PARTITION OF feedback DEFAULT;
CREATE INDEX feedback_recommendation_idx ON feedback (recommendation_id);
CREATE INDEX feedback_recorded_idx ON feedback (recorded_at);
CREATE INDEX feedback_not_rolled_up_idx ON feedback (recorded_at) WHERE NOT rolled_up;
INSERT INTO feedback (feedback_id, recommendation_id, book_id, event, occurred_at, recorded_at, user_id)
SELECT feedback_id, recommendation_id, book_id, event, occurred_at, recorded_at, user_id FROM feedback_unpartitioned;
ALTER SEQUENCE feedback_feedback_id_seq OWNED BY feedback.feedback_id;
DROP TABLE feedback_unpartitioned;

-- Per version, 10-minute bucket (of the impressions' time) and reader: what the figures are computed from.
CREATE TABLE online_rollups (
    version          text NOT NULL,
    bucket           timestamptz NOT NULL,
    user_id          integer NOT NULL,
    impressions      integer NOT NULL,
    clicks           integer NOT NULL,  -- impressions with a click
    reads            integer NOT NULL,
    reciprocal_ranks double precision NOT NULL,
    first_shown      timestamptz NOT NULL,
    PRIMARY KEY (version, bucket, user_id)
);
CREATE INDEX online_rollups_bucket_idx ON online_rollups (bucket);

-- Per version and reader, everything kept: the sums of the reader's rows above (what ListModels and ModelInfo show).
CREATE TABLE online_readers (
    version          text NOT NULL,
    user_id          integer NOT NULL,
    impressions      integer NOT NULL,
    clicks           integer NOT NULL,
    reads            integer NOT NULL,
    reciprocal_ranks double precision NOT NULL,
    PRIMARY KEY (version, user_id)
);

-- Per version and 10-minute bucket, over its readers: the sums of the figures, their squares and their products
-- with the impressions (storage/sums.py's OnlineSums), so that a series in 10-minute buckets reads one row
-- a bucket.
CREATE TABLE online_buckets (
    version     text NOT NULL,
    bucket      timestamptz NOT NULL,
    impressions bigint NOT NULL,
    users       bigint NOT NULL,
    i2          double precision NOT NULL,
    c           double precision NOT NULL,
    c2          double precision NOT NULL,
    ci          double precision NOT NULL,
    r           double precision NOT NULL,
    r2          double precision NOT NULL,
    ri          double precision NOT NULL,
    rr          double precision NOT NULL,
    rr2         double precision NOT NULL,
    rri         double precision NOT NULL,
    first_shown timestamptz NOT NULL,
    PRIMARY KEY (version, bucket)
);
CREATE INDEX online_buckets_bucket_idx ON online_buckets (bucket);

-- Where the roll-up stands: the snapshot of its last run (interactions changed after it may move reads).
CREATE TABLE online_rollup_state (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    snapshot text
);
INSERT INTO online_rollup_state (snapshot) VALUES (NULL);
