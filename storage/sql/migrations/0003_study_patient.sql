-- One patient per study (issue 11): the digests of the Patient ID and Patient's Birth Date of
-- a study's first instance (storage/studies.py compares every later instance's with them).
-- NULL for studies indexed before this version: their next instance sets them.

ALTER TABLE studies ADD COLUMN patient_digest TEXT;
ALTER TABLE studies ADD COLUMN birth_date_digest TEXT;
