"""Synthetic chest PET/CT phantoms with lung lesions, written as valid DICOM in the TCIA layout.

Tests, benchmarks and model training need studies whose truth is known: each phantom is a
deterministic function of its seed and carries the ground-truth lesion mask, the planned SUV
volume and TCIA-style annotation boxes. Not anatomy-grade: a body ellipse, two lungs with
vessels, mediastinum, heart, aorta, spine, a table, and one lesion type per histology.

Import the public names from here; the modules split the job:
  anatomy       the tissue-label map, lesion planning, CT (HU) and PET (SUV) rendering
  dicom_series  CT and PET DICOM series from the rendered volumes
  study         generate_study(): one patient's study with its ground truth
  tcia_writer   write_study(), write_tcia_layout(): the NBIA folders, metadata.csv, XML boxes
"""

from classifier.datasets.phantom.anatomy import (
    CT_HU_MAX,
    CT_RESCALE_INTERCEPT,
    FIELD_OF_VIEW_MM,
    PhantomLesion,
)
from classifier.datasets.phantom.dicom_series import (
    F18_HALF_LIFE_S,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    MANUFACTURER,
)
from classifier.datasets.phantom.study import (
    AnnotationBox,
    PhantomStudy,
    generate_study,
    histology_name,
    study_digest,
)
from classifier.datasets.phantom.tcia_writer import (
    COLLECTION,
    METADATA_COLUMNS,
    annotation_xml,
    write_study,
    write_tcia_layout,
)

__all__ = [
    "COLLECTION",
    "CT_HU_MAX",
    "CT_RESCALE_INTERCEPT",
    "F18_HALF_LIFE_S",
    "FIELD_OF_VIEW_MM",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "MANUFACTURER",
    "METADATA_COLUMNS",
    "AnnotationBox",
    "PhantomLesion",
    "PhantomStudy",
    "annotation_xml",
    "generate_study",
    "histology_name",
    "study_digest",
    "write_study",
    "write_tcia_layout",
]
