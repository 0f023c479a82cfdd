"""The storage SOP classes and transfer syntaxes the node accepts, as data.

The receiver builds its presentation contexts from these tables and the DICOM Conformance
Statement (docs/) is checked against them, so there is one source of truth.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")

# SCP role: images of a lung CT or PET/CT study. SR and SEG are what the node *sends*; it does
# not accept them, so a PACS cannot loop results back into the analysis.
STORAGE_SOP_CLASSES: dict[str, UID] = {
    "CT Image Storage": UID("1.2.840.10008.5.1.4.1.1.2"),
    "Enhanced CT Image Storage": UID("1.2.840.10008.5.1.4.1.1.2.1"),
    "Positron Emission Tomography Image Storage": UID("1.2.840.10008.5.1.4.1.1.128"),
    "Enhanced PET Image Storage": UID("1.2.840.10008.5.1.4.1.1.130"),
    "Secondary Capture Image Storage": UID("1.2.840.10008.5.1.4.1.1.7"),
}

# Accepted for every storage SOP class; instances are stored as received (no transcoding).
# Order is preference order when a peer proposes several in one presentation context.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "Explicit VR Little Endian": ExplicitVRLittleEndian,
    "Implicit VR Little Endian": ImplicitVRLittleEndian,
    "Deflated Explicit VR Little Endian": DeflatedExplicitVRLittleEndian,
    "JPEG Baseline (Process 1)": JPEGBaseline8Bit,
    "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [SV1])": JPEGLosslessSV1,
    "JPEG Lossless, Non-Hierarchical (Process 14)": JPEGLossless,
    "JPEG-LS Lossless Image Compression": JPEGLSLossless,
    "JPEG-LS Lossy (Near-Lossless) Image Compression": JPEGLSNearLossless,
    "JPEG 2000 Image Compression (Lossless Only)": JPEG2000Lossless,
    "JPEG 2000 Image Compression": JPEG2000,
    "RLE Lossless": RLELossless,
}

# Transfer syntaxes the SCU proposes besides a file's own, so any peer can take the object.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def sop_class_name(uid: str) -> str:
    """The name of an accepted storage SOP class, or the UID itself when it is not one of ours."""
    for name, value in STORAGE_SOP_CLASSES.items():
        if value == uid:
            return name
    return str(uid)
