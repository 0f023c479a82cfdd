-- Storage Commitment (issue 21): a result C-STOREd to a destination with commit=yes waits in
-- state COMMITTING until the destination's N-EVENT-REPORT commits it (COMMITTED) or reports it
-- failed (back to PENDING, or DEAD); storage/commitments.py.
-- transaction_uid: the Transaction UID of the N-ACTION that asked for the commitment;
-- commit_due_at: when a commitment that has not come is given up and the row sent again;
-- committed_at: when the destination committed it.

ALTER TABLE outbox ADD COLUMN transaction_uid TEXT;
ALTER TABLE outbox ADD COLUMN commit_due_at DOUBLE PRECISION;
ALTER TABLE outbox ADD COLUMN committed_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS outbox_transaction ON outbox (transaction_uid);
