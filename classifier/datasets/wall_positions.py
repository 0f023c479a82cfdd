"""The position classes of the stress test's inserted tumours: the walls a tumour abuts
(`classifier.datasets.insertion` places them; names only, cheap to import for the CLI)."""

from __future__ import annotations

POSITION_NAMES = {
    "posterior": "posterior chest wall beside the spine",
    "lateral": "lateral chest wall",
    "mediastinum": "mediastinum",
    "hilum": "hilum",
    "apex": "lung apex",
    "diaphragm": "diaphragm",
}
POSITIONS = tuple(POSITION_NAMES)
