-- One row per (user, book), so that importing the same events twice changes nothing and a new rating replaces
-- the old one instead of adding to it. Existing duplicate events are merged the same way imports merge them:
--   rating      the rating given last (NULL when the user never rated the book: a read or a click)
--   rated_at    when that rating was given
--   occurred_at when the user first interacted with the book
--   updated_at  when the row last changed in this database (what "new since the last training" counts)
-- What a rating means for training (its confidence) is the model's business, so the stored weight goes.
CREATE TEMPORARY TABLE merged_interactions ON COMMIT DROP AS
SELECT user_id,
       book_id,
       (array_agg(rating ORDER BY occurred_at DESC, interaction_id DESC) FILTER (WHERE rating IS NOT NULL))[1]
           AS rating,
       max(occurred_at) FILTER (WHERE rating IS NOT NULL) AS rated_at,
       min(occurred_at) AS occurred_at
FROM interactions
GROUP BY user_id, book_id;

DROP TABLE interactions;

CREATE TABLE interactions (
    user_id     integer NOT NULL REFERENCES users (user_id),
    book_id     integer NOT NULL REFERENCES books (book_id),
    rating      real CHECK (rating >= 0 AND rating <= 5),
    rated_at    timestamptz,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, book_id),
    CHECK ((rating IS NULL) = (rated_at IS NULL))
);

INSERT INTO interactions (user_id, book_id, rating, rated_at, occurred_at)
SELECT user_id, book_id, rating, rated_at, occurred_at FROM merged_interactions;

CREATE INDEX interactions_book_idx ON interactions (book_id);
CREATE INDEX interactions_updated_idx ON interactions (updated_at);
