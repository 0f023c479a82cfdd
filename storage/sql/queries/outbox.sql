-- Result objects to C-STORE to each destination (storage/outbox.py).

-- name: add
INSERT INTO outbox (outbox_id, study_uid, version, sop_uid, path, destination, state,
                    attempts, next_attempt_at, lease_until, last_error, created_at, updated_at)
VALUES (:outbox_id, :study_uid, :version, :sop_uid, :path, :destination, :pending,
        0, :now, NULL, NULL, :now, :now)

-- name: due
SELECT outbox_id, study_uid, sop_uid, path, destination, attempts FROM outbox
WHERE state = :pending AND next_attempt_at <= :now
  AND (lease_until IS NULL OR lease_until < :now)
ORDER BY next_attempt_at, created_at, outbox_id
LIMIT :limit
FOR UPDATE SKIP LOCKED  -- postgresql only

-- name: lease
UPDATE outbox SET lease_until = :lease_until WHERE outbox_id = :outbox_id

-- name: lock_study
SELECT version, state FROM studies WHERE study_uid = :study_uid
FOR UPDATE  -- postgresql only

-- name: sent
UPDATE outbox SET state = :sent, lease_until = NULL, last_error = NULL, updated_at = :now
WHERE outbox_id = :outbox_id

-- name: row_times
SELECT o.created_at, o.version, s.first_received_at FROM outbox o
JOIN studies s ON s.study_uid = o.study_uid
WHERE o.outbox_id = :outbox_id

-- name: unsent_of_version
SELECT COUNT(*) FROM outbox
WHERE study_uid = :study_uid AND version = :version AND state NOT IN (:sent, :committed)

-- name: study_delivered
UPDATE studies SET state = :delivered, updated_at = :now
WHERE study_uid = :study_uid AND version = :version

-- name: retry
UPDATE outbox SET attempts = attempts + 1, last_error = :error,
                  next_attempt_at = :next_attempt_at, lease_until = NULL
WHERE outbox_id = :outbox_id AND state = :pending

-- name: dead
UPDATE outbox SET state = :dead, attempts = attempts + 1, last_error = :error,
                  lease_until = NULL
WHERE outbox_id = :outbox_id AND state = :pending

-- name: resend_all_dead
UPDATE outbox SET state = :pending, attempts = 0, next_attempt_at = :now, lease_until = NULL
WHERE state = :dead

-- name: resend_dead_of_study
UPDATE outbox SET state = :pending, attempts = 0, next_attempt_at = :now, lease_until = NULL
WHERE state = :dead AND study_uid = :study_uid
