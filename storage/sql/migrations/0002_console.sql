-- The console (issue 12): what the PACS shows of a study, a timeline of events per study, and
-- node-wide switches (intake and analysis paused) shared by every process of the node.

ALTER TABLE studies ADD COLUMN accession_number TEXT;
ALTER TABLE studies ADD COLUMN study_date TEXT;
ALTER TABLE studies ADD COLUMN patient_id TEXT;

CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    study_uid TEXT,
    version INTEGER,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    stage TEXT,
    duration_s DOUBLE PRECISION,
    detail TEXT NOT NULL,
    actor TEXT);
CREATE INDEX IF NOT EXISTS events_study ON events (study_uid, at);
CREATE INDEX IF NOT EXISTS events_stage ON events (stage);

CREATE TABLE IF NOT EXISTS node_flags (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    actor TEXT);
