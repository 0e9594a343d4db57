-- A book the catalogue no longer offers (out of print, withdrawn): never recommended nor listed as similar, on every
-- replica within seconds (a change notice), without a retrain; its history stays and it can come back.
ALTER TABLE books ADD COLUMN available boolean NOT NULL DEFAULT true;

-- The non-personal lists: popular now reads the interactions of the last days, the newest books the years.
CREATE INDEX interactions_occurred_idx ON interactions (occurred_at);
CREATE INDEX books_newest_idx ON books (published_year DESC NULLS LAST, book_id DESC);
