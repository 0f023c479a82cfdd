"""StudyResult -> Key Object Selection Document (KOS) of the key slices and the result objects.

A PACS that lists key objects shows the findings' key CT slices and the other objects built for
the result (SR, SEG, GSPS, key images) as one selection titled "Of Interest" (DCM 113000), with
a description naming the model, the number of findings and, for a model not for clinical use,
the disclaimer. The KOS is a new series of the same study; its observer is the model as device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code

from classifier.results import codes, sr_encoder
from classifier.types import StudyResult

KEY_OBJECT_TITLE = Code("113000", "DCM", "Of Interest")


def build_ko(
    result: StudyResult,
    referenced: Sequence[Dataset],
    *,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
) -> hd.ko.KeyObjectSelectionDocument:
    """Key Object Selection of the findings' key slices and the other result objects;
    referenced[0] gives the patient and study modules."""
    model = result.model
    description = (
        f"AI lung lesion result by {model.name} {model.version}: key slices of "
        f"{len(result.lesions)} finding(s) and the result objects"
    )
    if not model.clinical_use:
        description += f". {codes.NOT_CLINICAL}"
    content = hd.ko.KeyObjectSelection(
        document_title=KEY_OBJECT_TITLE,
        referenced_objects=list(referenced),
        observer_device_context=sr_encoder.device_observer(model),
        description=description,
    )
    kwargs: dict[str, Any] = {}
    if specific_character_set is not None:
        kwargs["specific_character_set"] = specific_character_set
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(referenced),
        content=content,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        contributing_equipment=[codes.algorithm_equipment(model)],
        series_description=codes.series_description("key objects", model),
        **codes.equipment(model),
        **kwargs,
    )
