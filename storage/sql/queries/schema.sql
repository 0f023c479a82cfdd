-- Bookkeeping of the schema version, for storage/migrations.py.

-- name: lock_schema
-- Serialises migrations between PostgreSQL nodes starting together (SQLite: BEGIN IMMEDIATE).
SELECT pg_advisory_xact_lock(:key)  -- postgresql only

-- name: create_version_table
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)

-- name: current_version
SELECT MAX(version) FROM schema_version

-- name: set_version
DELETE FROM schema_version;
INSERT INTO schema_version (version) VALUES (:version);
