-- Storage Commitment of sent results (storage/commitments.py).

-- name: awaiting
UPDATE outbox SET state = :committing, transaction_uid = :transaction_uid,
                  commit_due_at = :commit_due_at, lease_until = NULL, last_error = NULL,
                  updated_at = :now
WHERE outbox_id = :outbox_id AND state = :pending

-- name: of_transaction
SELECT outbox_id, study_uid, sop_uid, path, destination, attempts, version FROM outbox
WHERE transaction_uid = :transaction_uid AND state = :committing
ORDER BY outbox_id

-- name: destinations_of
SELECT DISTINCT destination FROM outbox WHERE transaction_uid = :transaction_uid

-- name: committed
UPDATE outbox SET state = :committed, committed_at = :now, commit_due_at = NULL,
                  last_error = NULL, updated_at = :now
WHERE outbox_id = :outbox_id AND state = :committing

-- name: retry
UPDATE outbox SET state = :pending, attempts = attempts + 1, last_error = :error,
                  next_attempt_at = :next_attempt_at, commit_due_at = NULL, updated_at = :now
WHERE outbox_id = :outbox_id AND state = :committing

-- name: dead
UPDATE outbox SET state = :dead, attempts = attempts + 1, last_error = :error,
                  commit_due_at = NULL, updated_at = :now
WHERE outbox_id = :outbox_id AND state = :committing

-- name: overdue
SELECT outbox_id, study_uid, sop_uid, path, destination, attempts, version FROM outbox
WHERE state = :committing AND commit_due_at <= :now
ORDER BY commit_due_at, outbox_id
LIMIT :limit
FOR UPDATE SKIP LOCKED  -- postgresql only
