-- What each retrain did (promoted, rejected, failed), so that every replica answers ModelInfo.last_retrain from the
-- registry rather than from its own memory. A version's status can change later (retired, failed verification);
-- its outcome stays what the retrain decided.
ALTER TABLE model_versions ADD COLUMN outcome text;

UPDATE model_versions
SET outcome = CASE status WHEN 'rejected' THEN 'rejected' WHEN 'failed' THEN 'failed' ELSE 'promoted' END;

ALTER TABLE model_versions
    ALTER COLUMN outcome SET NOT NULL,
    ADD CONSTRAINT model_versions_outcome CHECK (outcome IN ('promoted', 'rejected', 'failed'));

CREATE INDEX model_versions_created_idx ON model_versions (created_at);
