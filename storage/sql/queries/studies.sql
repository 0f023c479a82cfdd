-- Receiving instances and the study state machine (storage/studies.py).

-- name: is_result
-- The node's own result objects sent back to it are never inputs.
SELECT 1 FROM results WHERE sop_uid = :sop_uid

-- name: insert_instance
INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, modality, path,
                       calling_aet, received_at)
VALUES (:sop_uid, :study_uid, :series_uid, :sop_class_uid, :modality, :path,
        :calling_aet, :received_at)
ON CONFLICT (sop_uid) DO NOTHING

-- name: instance_study
-- The study an indexed SOP Instance UID belongs to (a SOP Instance lives in one study only).
SELECT study_uid FROM instances WHERE sop_uid = :sop_uid

-- name: study_patient
SELECT patient_digest, birth_date_digest FROM studies WHERE study_uid = :study_uid

-- name: count_instance_in_study
-- A new study is RECEIVING version 1; a study that left RECEIVING goes back with version+1.
-- The patient digests of the first instance stay (a study indexed before they existed takes
-- this instance's); RETURNING gives them back so the caller compares in the same transaction.
-- The association that brought this instance becomes the study's last one (not released).
INSERT INTO studies (study_uid, state, version, source_aet, instances, first_received_at,
                     last_received_at, updated_at, reason, accession_number, study_date,
                     patient_id, patient_digest, birth_date_digest, last_association,
                     released_at)
VALUES (:study_uid, :receiving, 1, :source_aet, 1, :received_at, :received_at, :received_at,
        NULL, :accession_number, :study_date, :patient_id, :patient_digest, :birth_date_digest,
        :association_id, NULL)
ON CONFLICT (study_uid) DO UPDATE SET
    last_association = excluded.last_association,
    released_at = NULL,
    patient_digest = COALESCE(studies.patient_digest, excluded.patient_digest),
    birth_date_digest = COALESCE(studies.birth_date_digest, excluded.birth_date_digest),
    instances = studies.instances + 1,
    accession_number = COALESCE(NULLIF(excluded.accession_number, ''), studies.accession_number),
    study_date = COALESCE(NULLIF(excluded.study_date, ''), studies.study_date),
    patient_id = COALESCE(NULLIF(excluded.patient_id, ''), studies.patient_id),
    last_received_at = CASE WHEN excluded.last_received_at > studies.last_received_at
                            THEN excluded.last_received_at ELSE studies.last_received_at END,
    updated_at = excluded.updated_at,
    version = CASE WHEN studies.state = :receiving THEN studies.version
                   ELSE studies.version + 1 END,
    reason = CASE WHEN studies.state = :receiving THEN studies.reason ELSE NULL END,
    state = :receiving
RETURNING version, patient_digest, birth_date_digest

-- name: count_instance_in_series
INSERT INTO series (series_uid, study_uid, modality, expected_instances, instances,
                    last_version)
VALUES (:series_uid, :study_uid, :modality, :expected_instances, 1, :version)
ON CONFLICT (series_uid) DO UPDATE SET
    instances = series.instances + 1,
    expected_instances = COALESCE(excluded.expected_instances, series.expected_instances),
    last_version = excluded.last_version

-- name: ready_candidates
-- Quiet since :quiet_since; or the association that brought the latest instance was released
-- normally by :released_since and no association that sent to the study is still open; or
-- every series with an expected count complete and at least one such series received
-- instances in the current version.
SELECT s.study_uid, s.version FROM studies s
WHERE s.state = :receiving AND (
    s.last_received_at <= :quiet_since OR (
        s.released_at IS NOT NULL AND s.released_at <= :released_since
        AND NOT EXISTS (SELECT 1 FROM open_associations o WHERE o.study_uid = s.study_uid)) OR (
        EXISTS (SELECT 1 FROM series e WHERE e.study_uid = s.study_uid
                AND e.expected_instances IS NOT NULL AND e.last_version = s.version)
        AND NOT EXISTS (SELECT 1 FROM series e WHERE e.study_uid = s.study_uid
                        AND e.expected_instances IS NOT NULL
                        AND e.instances < e.expected_instances)))
ORDER BY s.last_received_at

-- name: make_ready
UPDATE studies SET state = :ready, updated_at = :now
WHERE study_uid = :study_uid AND version = :version AND state = :receiving

-- name: first_received
SELECT first_received_at FROM studies WHERE study_uid = :study_uid

-- name: study_exists
SELECT 1 FROM studies WHERE study_uid = :study_uid

-- name: study_instances
SELECT e.series_uid, e.modality, i.path, i.sop_uid, i.sop_class_uid
FROM instances i JOIN series e ON e.series_uid = i.series_uid
WHERE i.study_uid = :study_uid
ORDER BY e.series_uid, i.received_at, i.sop_uid

-- name: series_senders
-- The calling AE titles that sent instances of one series of a study (routing to `sender`
-- goes to the AEs whose series were analysed).
SELECT DISTINCT calling_aet FROM instances
WHERE study_uid = :study_uid AND series_uid = :series_uid
ORDER BY calling_aet

-- name: study_senders
SELECT DISTINCT calling_aet FROM instances WHERE study_uid = :study_uid ORDER BY calling_aet

-- name: studies_started_by
-- Studies whose first instance came from :calling_aet since :since (new-study quota).
SELECT COUNT(*) FROM studies WHERE source_aet = :calling_aet AND first_received_at >= :since

-- name: open_association
-- An association sent its first instance of a study (kept until the association ends).
INSERT INTO open_associations (association_id, study_uid, opened_at)
VALUES (:association_id, :study_uid, :received_at)
ON CONFLICT (association_id, study_uid) DO NOTHING

-- name: association_released
-- A normal release: the studies whose latest instance it brought may complete soon.
UPDATE studies SET released_at = :now
WHERE study_uid = :study_uid AND last_association = :association_id AND state = :receiving

-- name: association_ended
DELETE FROM open_associations WHERE association_id = :association_id
