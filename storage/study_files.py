"""The instance files of one study as the index lists them: what the classifier analyses.

Shared vocabulary of `storage` (which lists them) and `classifier` (which reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InstanceFile:
    """One stored instance with the header facts the node already indexed."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class SeriesFiles:
    """The stored instances of one series."""

    series_instance_uid: str
    modality: str
    instances: tuple[InstanceFile, ...]


@dataclass(frozen=True)
class StudyFiles:
    """The instance files of one study, grouped by series: the input of `analyze`."""

    study_instance_uid: str
    series: tuple[SeriesFiles, ...]

    @property
    def paths(self) -> list[Path]:
        return [i.path for s in self.series for i in s.instances]
