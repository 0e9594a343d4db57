-- The next page of an answer is an impression of its own (its books, its ranks, what feedback names), linked to the
-- answer it continues, so that a later page leaves out every book an earlier one showed.
ALTER TABLE impressions ADD COLUMN continues uuid;
CREATE INDEX impressions_continues_idx ON impressions (continues) WHERE continues IS NOT NULL;
