-- Status and retention (storage/status.py, storage/retention.py).

-- name: studies
SELECT s.study_uid, s.state, s.instances,
       (SELECT COUNT(*) FROM series e WHERE e.study_uid = s.study_uid),
       s.updated_at, s.reason, s.version, s.accession_number, s.study_date, s.source_aet,
       (SELECT GROUP_CONCAT(DISTINCT e.modality) FROM series e WHERE e.study_uid = s.study_uid),  -- sqlite only
       (SELECT STRING_AGG(DISTINCT e.modality, ',') FROM series e WHERE e.study_uid = s.study_uid),  -- postgresql only
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.version = s.version)
FROM studies s
ORDER BY s.updated_at DESC, s.study_uid

-- name: outbox
SELECT study_uid, sop_uid, destination, state, attempts, last_error, next_attempt_at,
       transaction_uid, commit_due_at, committed_at, updated_at
FROM outbox
ORDER BY created_at, outbox_id

-- name: expired_studies
SELECT study_uid FROM studies
WHERE state = :delivered AND updated_at < :older_than
ORDER BY updated_at

-- name: forget_study
-- Every row of one study; the caller removes its files from the store.
DELETE FROM events WHERE study_uid = :study_uid;
DELETE FROM open_associations WHERE study_uid = :study_uid;
DELETE FROM outbox WHERE study_uid = :study_uid;
DELETE FROM results WHERE study_uid = :study_uid;
DELETE FROM jobs WHERE study_uid = :study_uid;
DELETE FROM instances WHERE study_uid = :study_uid;
DELETE FROM series WHERE study_uid = :study_uid;
DELETE FROM studies WHERE study_uid = :study_uid;

-- name: studies_with_inputs
-- Studies whose received instances are still indexed, oldest change first, with what their
-- results wait for: outbox rows of the current version, and PENDING (or COMMITTING) and DEAD rows
-- of any version.
SELECT s.study_uid, s.accession_number, s.state, s.updated_at, s.version,
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.version = s.version),
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.state IN (:pending, :committing)),
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.state = :dead),
       (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid)
FROM studies s
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)
ORDER BY s.updated_at, s.study_uid

-- name: study_with_inputs
-- One study, as studies_with_inputs reads it (with the study row locked on PostgreSQL).
SELECT s.study_uid, s.accession_number, s.state, s.updated_at, s.version,
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.version = s.version),
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.state IN (:pending, :committing)),
       (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = s.study_uid AND o.state = :dead),
       (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid)
FROM studies s
WHERE s.study_uid = :study_uid
FOR UPDATE OF s  -- postgresql only

-- name: input_files
SELECT sop_uid, path FROM instances WHERE study_uid = :study_uid ORDER BY path

-- name: forget_input
DELETE FROM instances WHERE sop_uid = :sop_uid AND study_uid = :study_uid
