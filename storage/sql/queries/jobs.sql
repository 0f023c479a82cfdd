-- The analysis work queue and its results (storage/jobs.py).

-- name: stale_older_jobs
UPDATE jobs SET state = :stale, owner = NULL, lease_until = NULL, updated_at = :now
WHERE study_uid = :study_uid AND version < :version AND state IN (:queued, :running)

-- name: enqueue
INSERT INTO jobs (job_id, study_uid, version, state, owner, lease_until, attempts,
                  created_at, updated_at, last_error)
VALUES (:job_id, :study_uid, :version, :queued, NULL, NULL, 0, :now, :now, NULL)
ON CONFLICT (study_uid, version) DO NOTHING

-- name: next_claimable
-- The oldest queued job, or one whose lease expired, of a study still at that version.
SELECT j.job_id, j.study_uid, j.version, j.attempts, s.source_aet, j.state, j.created_at,
       j.owner
FROM jobs j JOIN studies s ON s.study_uid = j.study_uid AND s.version = j.version
WHERE (j.state = :queued OR (j.state = :running AND j.lease_until < :now))
  AND s.state IN (:ready, :analyzing)
ORDER BY j.created_at, j.job_id
LIMIT 1
FOR UPDATE OF j SKIP LOCKED  -- postgresql only

-- name: claim
UPDATE jobs SET state = :running, owner = :owner, lease_until = :lease_until,
                attempts = attempts + 1, updated_at = :now
WHERE job_id = :job_id

-- name: study_analyzing
UPDATE studies SET state = :analyzing, updated_at = :now
WHERE study_uid = :study_uid AND version = :version

-- name: previous_report
-- The SR of the latest earlier version, for Predecessor Documents.
SELECT path, sop_uid FROM results
WHERE study_uid = :study_uid AND kind = :sr AND version < :version
ORDER BY version DESC, created_at DESC
LIMIT 1

-- name: renew_lease
UPDATE jobs SET lease_until = :lease_until, updated_at = :now
WHERE job_id = :job_id AND state = :running AND owner = :owner AND attempts = :attempts
  AND version = (SELECT version FROM studies WHERE study_uid = :study_uid)

-- name: lock_study
-- Locked before the job on PostgreSQL, so a new version of the study waits for this claim.
SELECT version, state FROM studies WHERE study_uid = :study_uid
FOR UPDATE  -- postgresql only

-- name: lock_job
SELECT state, owner, attempts FROM jobs WHERE job_id = :job_id
FOR UPDATE  -- postgresql only

-- name: record_result
INSERT INTO results (sop_uid, study_uid, series_uid, version, sop_class_uid, kind, path,
                     created_at)
VALUES (:sop_uid, :study_uid, :series_uid, :version, :sop_class_uid, :kind, :path, :now)
ON CONFLICT (sop_uid) DO UPDATE SET
    version = excluded.version, path = excluded.path, created_at = excluded.created_at

-- name: finish
UPDATE jobs SET state = :done, lease_until = NULL, updated_at = :now WHERE job_id = :job_id

-- name: release
-- Give the claim up: queued again, failed, or stale.
UPDATE jobs SET state = :state, owner = NULL, lease_until = NULL, last_error = :error,
                updated_at = :now
WHERE job_id = :job_id

-- name: set_study_state
UPDATE studies SET state = :state, reason = :reason, updated_at = :now
WHERE study_uid = :study_uid
