"""The detector on the real Lung-PET-CT-Dx patient A0002 against its 18 annotated boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from classifier.imaging.dicom_io import read_series
from classifier.imaging.lesions import find_candidates
from classifier.imaging.volume import load_ct_volume
from classifier.results.overlay import render_annotated_slice_png


def _boxes(data: Path) -> dict[str, tuple[int, int, int, int]]:
    folder = data / "Annotation" / "A0002"
    assert folder.is_dir(), f"shared data is present but {folder} is not"
    out = {}
    for xml in folder.glob("*.xml"):
        box = ET.parse(xml).find("object/bndbox")
        assert box is not None, xml
        out[xml.stem] = tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    return out


@pytest.mark.slow
def test_candidates_overlap_annotations(tmp_path: Path, shared_data: Path) -> None:
    """>= 14 of 18 annotated slices hold a candidate lying at least half inside the box (a
    candidate merely grazing the box does not count), with few other candidates per series.
    (It was 15 while the detector kept candidates 6 mm thick: the tumour's thin cranial tip on
    slices 19-21 of the 8 mm B40f series was then found as separate fragments, reported as extra
    findings; at the 8 mm minimum thickness the tumour is one finding without that tip.)
    Pictures of every annotated slice are written to the test's tmp folder for a person.
    """
    data = shared_data / "lung-pet-ct-dx"
    boxes = _boxes(data)
    series = sorted((data / "Lung-PET-CT-Dx" / "Lung_Dx-A0002").glob("*/*/"))
    assert len(series) == 2
    hits, annotated, others, missed = 0, 0, [], []
    for folder in series:
        volume = load_ct_volume(read_series(sorted(folder.glob("*.dcm"))))
        found = find_candidates(volume)
        index = {ref.sop_instance_uid: i for i, ref in enumerate(volume.slices)}
        matched = set()
        for uid, (x0, y0, x1, y1) in boxes.items():
            if uid not in index:
                continue
            annotated += 1
            s = index[uid]
            detected = []
            hit = False
            for n, c in enumerate(found):
                local = s - c.mask_origin[0]
                if not 0 <= local < c.mask.shape[0] or not c.mask[local].any():
                    continue
                rows, cols = np.nonzero(c.mask[local])
                rows, cols = rows + c.mask_origin[1], cols + c.mask_origin[2]
                detected.append((rows.min(), cols.min(), rows.max(), cols.max()))
                inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
                if not hit and np.count_nonzero(inside) >= 0.5 * rows.size:
                    hit = True
                    matched.add(n)
            hits += hit
            if not hit:
                missed.append(f"{folder.name} slice {s}")
            render_annotated_slice_png(
                volume,
                s,
                [(x0, y0, x1, y1)],
                detected,
                tmp_path / f"{folder.name[-5:]}-{s:02d}.png",
            )
        others.append(len(found) - len(matched))
    print(
        f"annotated slices {annotated}, hit {hits}, missed {missed}, "
        f"other candidates per series {others}, pictures in {tmp_path}"
    )
    assert annotated == 18
    assert max(others) <= 10, others
    assert hits >= 14, missed
