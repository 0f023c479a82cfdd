-- The timeline of each study (storage/events.py).

-- name: add_event
INSERT INTO events (event_id, study_uid, version, at, kind, stage, duration_s, detail, actor)
VALUES (:event_id, :study_uid, :version, :at, :kind, :stage, :duration_s, :detail, :actor)

-- name: events_of_study
SELECT version, at, kind, stage, duration_s, detail, actor FROM events
WHERE study_uid = :study_uid
ORDER BY at, event_id

-- name: stage_durations
SELECT stage, duration_s FROM events WHERE stage IS NOT NULL AND duration_s IS NOT NULL

-- name: count_kind
SELECT COUNT(*) FROM events WHERE kind = :kind
