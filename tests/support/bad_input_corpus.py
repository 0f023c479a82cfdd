"""A corpus of bad DICOM input, generated from a small valid phantom study, for the node's tests.

Every case is a set of files sent by C-STORE to the node together with the valid study (same
Study Instance UID where that makes sense) and says what the node must do: refuse the instance
with an error status, or store it and let the analysis skip it with a reason in the SR. Files
are written as DICOM files (file meta included) and may be deliberately broken; send them with
pynetdicom's `_config.STORE_SEND_CHUNKED_DATASET = True`, which streams a file's bytes as they
are. Also holds the seeded mutator of the fuzz test.
"""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from classifier.datasets.phantom import PhantomStudy, generate_study

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CYRILLIC_NAME = "Иванов^Пётр"  # ISO_IR 144, on every slice of the valid CT
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # ISO 2022 IR 87
NESTING_LEVELS = 300


@dataclass(frozen=True)
class BadCase:
    """One kind of bad input.

    `refused`: True when every file of the case must be answered with an error status, False
    when the node must store them (the problem is one for the analysis), None when either is
    acceptable as long as the node survives. `marker`: the UID (SOP Instance or Series) that the
    node's one log line about the case names. `reason`: words the study's SR / analysis notes
    must contain about the case (analysis-level cases only).
    """

    name: str
    files: tuple[Path, ...]
    refused: bool | None
    marker: str
    reason: str | None = None
    sop_classes: tuple[str, ...] = field(default=())


def valid_study(seed: int = 5) -> PhantomStudy:
    """The small valid PET/CT study every case is sent with (64x64 CT, 16 slices of 5 mm)."""
    study = generate_study(seed=seed, histology="A", ct_size=64, ct_slices=16, pet_size=32)
    for ds in study.ct:  # an unusual character set on the study that must be reported
        ds.SpecificCharacterSet = "ISO_IR 144"
        ds.PatientName = CYRILLIC_NAME
    return study


def save(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a DICOM file whose file meta matches its SOP Class/Instance UID."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _copy_series(slices: list[Dataset], thickness: float, description: str) -> list[Dataset]:
    """Copies of `slices` as a new series of the same study (new Series and SOP UIDs)."""
    series_uid = generate_uid()
    out = []
    for ds in slices:
        new = copy.deepcopy(ds)
        new.SeriesInstanceUID = series_uid
        new.SOPInstanceUID = generate_uid()
        new.SeriesDescription = description
        new.SeriesNumber = 90 + len(description) % 9
        new.SliceThickness = thickness
        out.append(new)
    return out


def _save_series(series: list[Dataset], folder: Path) -> tuple[Path, ...]:
    return tuple(save(ds, folder / f"{i:03d}.dcm") for i, ds in enumerate(series))


def _broken_file(base: Dataset, folder: Path, name: str, sop_uid: str) -> Path:
    """A copy of `base` with a new SOP Instance UID in the file meta, saved for byte surgery."""
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = generate_uid()  # its own series: the valid one stays analysable
    return save(ds, folder / name)


def _pixel_data_offset(data: bytes) -> int:
    """Byte offset of the (7FE0,0010) Pixel Data element header in an Explicit VR LE file."""
    offset = data.rfind(b"\xe0\x7f\x10\x00")
    if offset < 0:
        raise ValueError("no Pixel Data element found")
    return offset


def _nested_sequence(levels: int) -> bytes:
    """(0040,A730) Content Sequence nested `levels` deep, undefined lengths, Explicit VR LE."""
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * levels + closing * levels


def _compressed_corrupt(base: Dataset, folder: Path, syntax: str) -> Path:
    """`base` re-encoded in `syntax`, then 256 bytes of its codestream overwritten: from its
    4th byte for JPEG 2000 (the SIZ header), from a third of the way in for RLE."""
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = generate_uid()
    ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else None)
    path = save(ds, folder / f"corrupt-{ds.file_meta.TransferSyntaxUID.name[:12]}.dcm")
    data = bytearray(path.read_bytes())
    start = _pixel_data_offset(bytes(data)) + 12 + 8 + 8 + 16  # past BOT and fragment headers
    middle = start + (4 if syntax == JPEG2000Lossless else (len(data) - start) // 3)
    rng = random.Random(7)
    for i in range(middle, min(len(data) - 16, middle + 256)):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path


def build_corpus(study: PhantomStudy, folder: Path) -> list[BadCase]:
    """Write every bad-input case of `study` under `folder` and describe what the node must do."""
    ct, pet = study.ct, study.pet
    base = ct[len(ct) // 2]
    cases: list[BadCase] = []

    def add(case: BadCase) -> None:
        cases.append(case)

    # --- instances the receiver must refuse or store unharmed --------------------------------
    uid = generate_uid()
    path = _broken_file(base, folder, "truncated-header.dcm", uid)
    path.write_bytes(path.read_bytes()[: 132 + 200 + 260])  # cut inside the header elements
    add(BadCase("truncated in the header", (path,), None, uid))

    uid = generate_uid()
    path = _broken_file(base, folder, "random.dcm", uid)
    data = path.read_bytes()
    meta_end = pydicom.dcmread(path).file_meta  # the file meta stays valid
    meta_length = 132 + 12 + int(meta_end.FileMetaInformationGroupLength)
    path.write_bytes(data[:meta_length] + random.Random(11).randbytes(3000))
    add(BadCase("random bytes after the file meta", (path,), True, uid))

    uid = generate_uid()
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = uid
    ds.PixelData = ds.PixelData[:1000]
    ds.SeriesInstanceUID = generate_uid()
    add(
        BadCase(
            "pixel data shorter than Rows x Columns", (save(ds, folder / "short.dcm"),), None, uid
        )
    )

    uid = generate_uid()
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = uid
    ds.Rows = ds.Columns = 65535
    ds.SeriesInstanceUID = generate_uid()
    add(BadCase("Rows x Columns 65535 x 65535", (save(ds, folder / "huge.dcm"),), None, uid))

    for name, bad_uid in (
        ("SOP Instance UID that is not a UID", "1.2.abc.4"),
        ("SOP Instance UID holding ../", "1.2.3/../../../escape"),
        ("SOP Instance UID longer than 64 characters", "1.2.840." + "1" * 70),
    ):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = bad_uid
        path = folder / f"bad-uid-{len(cases)}.dcm"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # pynetdicom sends this one
        ds.preamble = b"\x00" * 128
        pydicom.dcmwrite(path, ds, enforce_file_format=False)  # keeps the meta as set
        add(BadCase(name, (path,), True, str(ds.file_meta.MediaStorageSOPInstanceUID)))

    uid = generate_uid()
    path = _broken_file(base, folder, "nested.dcm", uid)
    data = path.read_bytes()
    at = _pixel_data_offset(data)
    path.write_bytes(data[:at] + _nested_sequence(NESTING_LEVELS) + data[at:])
    add(BadCase(f"{NESTING_LEVELS}-level nested sequences", (path,), None, uid))

    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.Modality = "MR"
    add(
        BadCase(
            "a SOP class the node does not accept (MR)",
            (save(ds, folder / "mr.dcm"),),
            True,
            MR_IMAGE_STORAGE,
            sop_classes=(MR_IMAGE_STORAGE,),
        )
    )

    uid = generate_uid()
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE_NAME
    path = save(ds, folder / "japanese.dcm")
    add(BadCase("Patient Name in ISO 2022 IR 87 (Japanese)", (path,), False, uid))

    # --- series the analysis must skip with a reason (thinner than the valid CT: tried first)
    bad_pixels = _copy_series(ct[:8], 2.0, "corrupt codestream")
    folder_j2k = folder / "j2k"
    paths = list(_save_series(bad_pixels[1:], folder_j2k))
    paths.append(_compressed_corrupt(bad_pixels[0], folder_j2k, JPEG2000Lossless))
    add(
        BadCase(
            "JPEG 2000 with a corrupt codestream",
            tuple(paths),
            None,
            bad_pixels[0].SeriesInstanceUID,
        )
    )

    rle = _copy_series(ct[:8], 2.5, "corrupt RLE")
    paths = list(_save_series(rle[1:], folder / "rle"))
    paths.append(_compressed_corrupt(rle[0], folder / "rle", RLELossless))
    add(BadCase("RLE with a corrupt codestream", tuple(paths), None, rle[0].SeriesInstanceUID))

    mixed = _copy_series(ct[:10], 1.0, "mixed orientations")
    for ds in mixed[::2]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal among axial slices
    add(
        BadCase(
            "CT series with mixed orientations",
            _save_series(mixed, folder / "mixed"),
            False,
            mixed[0].SeriesInstanceUID,
            reason="different orientations",
        )
    )

    dup = _copy_series(ct[:10], 1.5, "duplicate positions")
    dup[3].ImagePositionPatient = list(dup[2].ImagePositionPatient)
    add(
        BadCase(
            "CT series with duplicate positions",
            _save_series(dup, folder / "dup"),
            False,
            dup[0].SeriesInstanceUID,
            reason="share a position",
        )
    )

    single = _copy_series(ct[:1], 1.0, "single slice")
    add(
        BadCase(
            "CT series with a single slice",
            _save_series(single, folder / "single"),
            False,
            single[0].SeriesInstanceUID,
            reason="1 slice(s)",
        )
    )

    no_suv = _copy_series(pet, float(pet[0].SliceThickness), "PET without SUV tags")
    for ds in no_suv:
        del ds.RadiopharmaceuticalInformationSequence
        if "NumberOfSlices" in ds:  # else a complete PET series makes the study READY early
            del ds.NumberOfSlices
    add(
        BadCase(
            "PET without the tags SUV needs",
            _save_series(no_suv, folder / "pet-no-suv"),
            False,
            no_suv[0].SeriesInstanceUID,
            reason="analysed without PET",
        )
    )
    return cases


# --- fuzzing --------------------------------------------------------------------------------


def _element_offsets(data: bytes, start: int) -> list[int]:
    """Offsets of the top-level Explicit VR LE element headers of the dataset from `start`."""
    offsets = []
    pos = start
    while pos + 8 <= len(data):
        offsets.append(pos)
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12 + (0 if length == 0xFFFFFFFF else length)
            if length == 0xFFFFFFFF:
                break  # undefined length: stop at the first one
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
    return offsets


def mutations(
    valid: bytes, dataset_start: int, count: int, seed: int
) -> Iterator[tuple[str, bytes]]:
    """`count` seeded mutations of the DICOM file `valid` whose dataset starts at byte
    `dataset_start` (the file meta is kept so the file can be sent): bit flips, rewritten length
    fields, truncated elements, duplicated or deleted byte runs. Yields (kind, file bytes)."""
    rng = random.Random(seed)
    elements = _element_offsets(valid, dataset_start)
    for _ in range(count):
        data = bytearray(valid)
        kind = rng.choice(("bitflip", "length", "truncate", "splice", "zero-run"))
        if kind == "bitflip":
            for _flip in range(rng.randint(1, 8)):
                i = rng.randrange(dataset_start, len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "length":
            pos = rng.choice(elements)
            value = rng.choice((0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << 16), 0x7FFFFFFF))
            if data[pos + 4 : pos + 6] in (b"OB", b"OW", b"SQ", b"UT", b"UN"):
                struct.pack_into("<I", data, pos + 8, value & 0xFFFFFFFF)
            else:
                struct.pack_into("<H", data, pos + 6, value & 0xFFFF)
        elif kind == "truncate":
            pos = rng.choice(elements)
            data = data[: pos + rng.randrange(1, 12)]
        elif kind == "splice":
            a = rng.randrange(dataset_start, len(data))
            b = min(len(data), a + rng.randrange(1, 64))
            data[a:a] = data[a:b] * rng.randint(1, 4)
        else:
            a = rng.randrange(dataset_start, len(data))
            data[a : a + rng.randrange(1, 32)] = b"\x00" * rng.randrange(1, 32)
        yield kind, bytes(data)
