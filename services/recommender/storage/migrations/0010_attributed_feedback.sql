-- Feedback counts only for the reader its answer was shown to: a read recorded with an interaction names its reader,
-- and the attribution compares it with the impression's (NULL: an event of the feedback API, which names none).
ALTER TABLE feedback ADD COLUMN user_id integer;
