-- The web console and /metrics (storage/console.py): search, one study's rows, deliveries,
-- node-wide switches, and the administrator's actions.

-- name: search_studies
-- Empty filters match everything; the patient ID, accession number and sender match exactly
-- (case-insensitively), the study UID and date as prefixes.
SELECT s.study_uid, s.state, s.version, s.source_aet, s.instances, s.first_received_at,
       s.last_received_at, s.updated_at, s.reason, s.accession_number, s.study_date,
       s.patient_id,
       (SELECT GROUP_CONCAT(DISTINCT e.modality) FROM series e WHERE e.study_uid = s.study_uid),  -- sqlite only
       (SELECT STRING_AGG(DISTINCT e.modality, ',') FROM series e WHERE e.study_uid = s.study_uid),  -- postgresql only
       (SELECT COUNT(*) FROM series e WHERE e.study_uid = s.study_uid),
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.version = s.version)
FROM studies s
WHERE (:accession = '' OR LOWER(COALESCE(s.accession_number, '')) = LOWER(:accession))
  AND (:patient_id = '' OR LOWER(COALESCE(s.patient_id, '')) = LOWER(:patient_id))
  AND (:study_uid = '' OR s.study_uid LIKE :study_uid_prefix)
  AND (:study_date = '' OR COALESCE(s.study_date, '') LIKE :study_date_prefix)
  AND (:sender = '' OR LOWER(s.source_aet) = LOWER(:sender))
  AND (:state = '' OR s.state = :state)
ORDER BY s.updated_at DESC, s.study_uid
LIMIT :limit

-- name: instances_by_sender
SELECT calling_aet, COUNT(*), MIN(received_at), MAX(received_at) FROM instances
WHERE study_uid = :study_uid
GROUP BY calling_aet
ORDER BY MIN(received_at)

-- name: series_of_study
SELECT series_uid, modality, instances, expected_instances, last_version FROM series
WHERE study_uid = :study_uid
ORDER BY modality, series_uid

-- name: jobs_of_study
SELECT version, state, owner, attempts, created_at, updated_at, last_error FROM jobs
WHERE study_uid = :study_uid
ORDER BY version, created_at

-- name: results_of_study
SELECT sop_uid, series_uid, version, sop_class_uid, kind, path, created_at FROM results
WHERE study_uid = :study_uid
ORDER BY version, kind, sop_uid

-- name: result_path
SELECT path, kind FROM results WHERE sop_uid = :sop_uid

-- name: outbox_of_study
SELECT outbox_id, version, sop_uid, destination, state, attempts, next_attempt_at,
       last_error, updated_at
FROM outbox
WHERE study_uid = :study_uid
ORDER BY version, destination, sop_uid

-- name: deliveries
SELECT destination, state, COUNT(*), MAX(updated_at) FROM outbox
GROUP BY destination, state
ORDER BY destination, state

-- name: last_errors
SELECT destination, last_error, updated_at FROM outbox
WHERE last_error IS NOT NULL
ORDER BY updated_at DESC
LIMIT 200

-- name: dead_letters
SELECT outbox_id, study_uid, sop_uid, destination, attempts, last_error, updated_at
FROM outbox
WHERE state = :dead
ORDER BY destination, updated_at DESC
LIMIT :limit

-- name: unfinished
-- Results on their way: waiting for a Storage Commitment (COMMITTING), or failed and waiting
-- for their next try (PENDING with an error), oldest change first.
SELECT outbox_id, study_uid, sop_uid, destination, state, attempts, last_error, updated_at,
       next_attempt_at, commit_due_at, transaction_uid
FROM outbox
WHERE state = :committing OR (state = :pending AND last_error IS NOT NULL)
ORDER BY destination, updated_at
LIMIT :limit

-- name: pending_outbox
SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = :pending

-- name: studies_by_state
SELECT state, COUNT(*) FROM studies GROUP BY state

-- name: queue_depth
SELECT COUNT(*) FROM jobs WHERE state IN (:queued, :running)

-- name: flags
SELECT name, value, updated_at, actor FROM node_flags

-- name: set_flag
INSERT INTO node_flags (name, value, updated_at, actor)
VALUES (:name, :value, :now, :actor)
ON CONFLICT (name) DO UPDATE SET
    value = excluded.value, updated_at = excluded.updated_at, actor = excluded.actor

-- name: resend_one
UPDATE outbox SET state = :pending, attempts = 0, next_attempt_at = :now, lease_until = NULL,
                  updated_at = :now
WHERE outbox_id = :outbox_id AND state = :dead

-- name: outbox_row
SELECT study_uid, destination, sop_uid, state FROM outbox WHERE outbox_id = :outbox_id

-- name: dead_of_destination
SELECT outbox_id, study_uid, sop_uid FROM outbox
WHERE state = :dead AND destination = :destination

-- name: study_state
SELECT state, version FROM studies WHERE study_uid = :study_uid

-- name: mark_complete
UPDATE studies SET state = :ready, updated_at = :now
WHERE study_uid = :study_uid AND state = :receiving

-- name: analyse_again
-- A new version of the study, READY: its report names the previous one as predecessor.
UPDATE studies SET state = :ready, version = version + 1, reason = NULL, updated_at = :now
WHERE study_uid = :study_uid AND state IN (:reported, :delivered, :failed)

-- name: ping
SELECT 1

-- name: instance_path
SELECT path FROM instances WHERE sop_uid = :sop_uid
