-- Completion on release (issue 13): a study is READY [pipeline] release_quiet_seconds after the
-- association that brought its latest instance was released normally, unless another
-- association that sent to it is still open (storage/studies.py).
-- last_association: the association (a random id) that brought the study's latest instance;
-- released_at: when it was released normally (NULL while open, when aborted, or after a newer
-- instance); open_associations: one row per (open association, study it sent to), deleted when
-- the association ends. A receiver killed while associations were open leaves rows behind:
-- those studies then become READY after study_quiet_seconds, as before this version.

ALTER TABLE studies ADD COLUMN last_association TEXT;
ALTER TABLE studies ADD COLUMN released_at DOUBLE PRECISION;

CREATE TABLE IF NOT EXISTS open_associations (
    association_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (association_id, study_uid));
CREATE INDEX IF NOT EXISTS open_associations_study ON open_associations (study_uid);
