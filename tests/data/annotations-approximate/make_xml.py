"""Write the PASCAL-VOC XML files of this folder from boxes.csv (one file per annotated slice).

The files have exactly the layout of the collection's LabelImg files (see Annotation/A0002 of
the TCIA archive); only <source><database> says they are lungnode's own approximate boxes.
Run from the project root: python tests/data/annotations-approximate/make_xml.py
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATABASE = "lungnode approximate annotation, not TCIA"

_HEAD = """<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>{database}</database>
  </source>
  <size>
    <width>512</width>
    <height>512</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
"""
_OBJECT = """  <object>
    <name>{label}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{xmin}</xmin>
      <ymin>{ymin}</ymin>
      <xmax>{xmax}</xmax>
      <ymax>{ymax}</ymax>
    </bndbox>
  </object>
"""


def main() -> None:
    per_slice: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with open(HERE / "boxes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            per_slice[(row["patient"], row["sop_instance_uid"])].append(row)
    for (patient, sop), rows in sorted(per_slice.items()):
        text = _HEAD.format(database=DATABASE)
        text += "".join(_OBJECT.format(**row) for row in rows)
        text += "</annotation>"
        folder = HERE / patient
        folder.mkdir(exist_ok=True)
        (folder / f"{sop}.xml").write_text(text)


if __name__ == "__main__":
    main()
