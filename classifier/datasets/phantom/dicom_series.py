"""The phantom's DICOM encoding: CT Image and PET Image series (with SUV-ready radiopharmaceutical
and decay facts) from the rendered volumes, reproducible UIDs, uncompressed or lossless pixel
data."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from classifier.datasets.phantom.anatomy import CT_RESCALE_INTERCEPT, Grid

MANUFACTURER = "lungnode phantom"


F18_HALF_LIFE_S = 6586.2


IMPLEMENTATION_CLASS_UID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID


IMPLEMENTATION_VERSION_NAME = "LUNGNODE_PHANTOM"


UNCOMPRESSED = {
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
}


COMPRESSED = {
    pydicom.uid.RLELossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEGLSLossless,
}


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lungnode:phantom")


def phantom_uid(*parts: object) -> str:
    """A reproducible 2.25 UID from a name-based (v5) UUID of `parts`.

    pydicom's generate_uid(prefix=None, entropy_srcs=...) ignores the entropy and is random,
    so the UUID is derived here; uniqueness rests on SHA-1 like any name-based UUID.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def _ds_str(value: float, digits: int = 10) -> str:
    """A value formatted to fit a DS (16 characters) whose parsed float is the value used."""
    text = f"{value:.{digits}g}"
    while len(text) > 16:
        digits -= 1
        text = f"{value:.{digits}g}"
    return text


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance)
    meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


@dataclass(frozen=True)
class StudyHeader:
    """Patient and study facts shared by every instance of a phantom study."""

    patient_id: str
    patient_sex: str
    birth_date: str
    age: str
    weight_kg: str
    study_uid: str
    frame_uid: str
    study_dt: datetime
    accession: str
    study_id: str


def _common(h: StudyHeader, sop_class: str, sop_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = h.study_dt.strftime("%Y%m%d")
    ds.StudyTime = h.study_dt.strftime("%H%M%S")
    ds.AccessionNumber = h.accession
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.ReferringPhysicianName = "Phantom^Referrer"
    ds.StudyDescription = "Chest PET-CT phantom"
    ds.PatientName = h.patient_id
    ds.PatientID = h.patient_id
    ds.PatientBirthDate = h.birth_date
    ds.PatientSex = h.patient_sex
    ds.PatientAge = h.age
    ds.PatientWeight = h.weight_kg
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = h.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = h.study_id
    ds.FrameOfReferenceUID = h.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Attach `pixels` as PixelData in `transfer_syntax` (uncompressed or lossless)."""
    if transfer_syntax in COMPRESSED:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()


# Seconds from the start of the CT series to each contrast phase's acquisition (non-contrast,
# portal-venous, delayed), as a multi-phase protocol runs them.
PHASE_DELAYS_S = (0, 90, 300)
PHASE_NAMES = ("non-contrast", "portal-venous", "delayed")


def ct_datasets(
    h: StudyHeader,
    seed_key: tuple,
    grid: Grid,
    hu: np.ndarray,
    thickness: float,
    ts: str,
    *,
    phase: int = 0,
    description: str = "CT chest phantom",
) -> list[Dataset]:
    """The CT slices of one acquisition. `phase` > 0 makes a later contrast phase under the same
    Series Instance UID, as GE multi-phase series are sent: the same positions, Acquisition
    Number phase + 1, later Acquisition Time, Instance Numbers continuing after the earlier
    phases'."""
    series_uid = phantom_uid(*seed_key, "ct-series")
    series_dt = h.study_dt + timedelta(minutes=2)
    acquired = series_dt + timedelta(seconds=PHASE_DELAYS_S[phase])
    out = []
    for k, z in enumerate(grid.z):
        sop_uid = (
            phantom_uid(*seed_key, "ct", k)
            if phase == 0
            else phantom_uid(*seed_key, "ct", "phase", phase, k)
        )
        ds = _common(h, pydicom.uid.CTImageStorage, sop_uid, series_uid)
        ds.file_meta = _file_meta(pydicom.uid.CTImageStorage, sop_uid, ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesDescription = description
        ds.SeriesNumber = 2
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = series_dt.strftime("%H%M%S")
        ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
        ds.AcquisitionNumber = phase + 1
        ds.InstanceNumber = phase * len(grid.z) + k + 1
        if phase > 0:
            ds.ContrastBolusAgent = "Iohexol 350"
            ds.ContrastBolusRoute = "IV"
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = _ds_str(thickness)
        ds.SpacingBetweenSlices = _ds_str(thickness)
        ds.ImagePositionPatient = [_ds_str(grid.origin_xy), _ds_str(grid.origin_xy), _ds_str(z)]
        ds.SliceLocation = _ds_str(z)
        ds.PixelSpacing = [_ds_str(grid.spacing), _ds_str(grid.spacing)]
        ds.Rows = ds.Columns = grid.size
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PatientPosition = "HFS"
        ds.WindowCenter = [-600, 40]
        ds.WindowWidth = [1500, 400]
        stored = (hu[k].astype(np.int32) - CT_RESCALE_INTERCEPT).astype(np.uint16)
        _encode(ds, stored, ts)
        out.append(ds)
    return out


def pet_datasets(
    h: StudyHeader,
    seed_key: tuple,
    rng: np.random.Generator,
    grid: Grid,
    suv: np.ndarray,
    thickness: float,
    ts: str,
) -> list[Dataset]:
    series_uid = phantom_uid(*seed_key, "pet-series")
    injection = h.study_dt - timedelta(minutes=int(rng.integers(55, 66)))
    series_dt = h.study_dt + timedelta(minutes=5)
    dose = 370e6
    dt_s = (series_dt - injection).total_seconds()
    weight_g = float(h.weight_kg) * 1000.0
    bq_per_suv = dose * 2.0 ** (-dt_s / F18_HALF_LIFE_S) / weight_g
    out = []
    for k, z in enumerate(grid.z):
        sop_uid = phantom_uid(*seed_key, "pet", k)
        ds = _common(h, pydicom.uid.PositronEmissionTomographyImageStorage, sop_uid, series_uid)
        ds.file_meta = _file_meta(pydicom.uid.PositronEmissionTomographyImageStorage, sop_uid, ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Modality = "PT"
        ds.SeriesDescription = "PET WB phantom"
        ds.SeriesNumber = 3
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_dt.strftime("%H%M%S")
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.NumberOfSlices = len(grid.z)
        ds.CorrectedImage = ["ATTN", "DECY", "SCAT", "DTIM", "RAN", "NORM"]
        ds.DecayCorrection = "START"
        ds.DecayFactor = "1"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM"
        ds.CollimatorType = "NONE"
        ds.FrameReferenceTime = "0"
        ds.ActualFrameDuration = 180000
        ds.SliceThickness = _ds_str(thickness)
        ds.ImagePositionPatient = [_ds_str(grid.origin_xy), _ds_str(grid.origin_xy), _ds_str(z)]
        ds.SliceLocation = _ds_str(z)
        ds.PixelSpacing = [_ds_str(grid.spacing), _ds_str(grid.spacing)]
        ds.Rows = ds.Columns = grid.size
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        activity = suv[k].astype(np.float64) * bq_per_suv
        slope_text = _ds_str(max(float(activity.max()), 1.0) / 32000.0, 8)
        slope = float(slope_text)
        stored = np.clip(np.rint(activity / slope), 0, 32767).astype(np.int16)
        ds.RescaleIntercept = 0
        ds.RescaleSlope = slope_text
        drug = Dataset()
        drug.Radiopharmaceutical = "Fluorodeoxyglucose"
        drug.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
        drug.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
        drug.RadionuclideTotalDose = _ds_str(dose)
        drug.RadionuclideHalfLife = _ds_str(F18_HALF_LIFE_S)
        drug.RadionuclidePositronFraction = "0.97"
        drug.RadionuclideCodeSequence = Sequence([_code("77004003", "SCT", "^18^Fluorine")])
        drug.RadiopharmaceuticalCodeSequence = Sequence(
            [_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
        )
        ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
        orientation = _code("102538003", "SCT", "recumbent")
        orientation.PatientOrientationModifierCodeSequence = Sequence(
            [_code("40199007", "SCT", "supine")]
        )
        ds.PatientOrientationCodeSequence = Sequence([orientation])
        ds.PatientGantryRelationshipCodeSequence = Sequence(
            [_code("102540008", "SCT", "headfirst")]
        )
        _encode(ds, stored, ts)
        out.append(ds)
    return out


def bolus_tracking_datasets(
    h: StudyHeader, seed_key: tuple, grid: Grid, z: float, hu: np.ndarray, ts: str
) -> list[Dataset]:
    """A bolus-tracking (monitoring) series: one low-dose image at the same table position
    `z` every second, `len(hu)` of them, the aorta filling with contrast; each image its
    own Acquisition Number, as scanners send them. Image Type is plain ORIGINAL\\PRIMARY\\AXIAL
    on purpose: only the repeated position tells it apart from a volume."""
    series_uid = phantom_uid(*seed_key, "bolus-series")
    start = h.study_dt + timedelta(minutes=2, seconds=30)
    out = []
    for k in range(len(hu)):
        sop_uid = phantom_uid(*seed_key, "bolus", k)
        acquired = start + timedelta(seconds=k)
        ds = _common(h, pydicom.uid.CTImageStorage, sop_uid, series_uid)
        ds.file_meta = _file_meta(pydicom.uid.CTImageStorage, sop_uid, ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesDescription = "Bolus tracking"
        ds.SeriesNumber = 1
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = start.strftime("%Y%m%d")
        ds.SeriesTime = start.strftime("%H%M%S")
        ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
        ds.AcquisitionNumber = k + 1
        ds.InstanceNumber = k + 1
        ds.KVP = 100
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = "10"
        ds.ImagePositionPatient = [
            _ds_str(grid.origin_xy),
            _ds_str(grid.origin_xy),
            _ds_str(z),
        ]
        ds.SliceLocation = _ds_str(z)
        ds.PixelSpacing = [_ds_str(grid.spacing), _ds_str(grid.spacing)]
        ds.Rows = ds.Columns = grid.size
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PatientPosition = "HFS"
        stored = (hu[k].astype(np.int32) - CT_RESCALE_INTERCEPT).astype(np.uint16)
        _encode(ds, stored, ts)
        out.append(ds)
    return out
