"""The demo model that ships in the wheel: the one place its path is defined."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "lungnode-demo.keras"
