"""Where the stress test loses its tumours: each inserted tumour followed through the
detector's stages (`python bench/stress_diagnosis.py --data ... --annotations ... --out DIR`).

Runs `classifier.model.stress.run_stress` unchanged, with the stages of
`classifier.imaging.lesions.find_candidates` and the CNN call wrapped so that each records what
it kept of the tumour (working-grid overlap with the tumour's mask). Each insertion that is not a
hit gets the first stage that lost it or cut it short, one of:
region (the lung/cavity region holds < 30 % of it), thick (no soft-tissue component on it
passes the size/thickness filters), cap (its component fell behind MAX_CANDIDATES),
cavity-join (`_grow_in_cavity` kept only the part of it beside larger cavity tissue), mass-cut
(`_mass_parts` dropped it), edge (dropped as an edge fragment), apex, anatomy (`is_anatomy`
and its reason), refine (lost at full resolution), score (a candidate on it below the
threshold: its probability), several (found as several findings), beside (one finding on it,
mostly its collapse or vessels: under stress.HIT_MIN_ON_TUMOUR on the tumour), short/long (one
finding, axis off: the stage whose coverage of the tumour fell most is named). Each candidate on the
tumour is listed with its raw score, long axis and share of its voxels on the tumour and on its
collapse (a hit may be a vessel or wedge finding touching the tumour). Writes diagnosis.json and
prints a table per position and stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from classifier import analyze
from classifier.imaging import lesions as L
from classifier.model import stress

_record: dict[str, Any] = {}


def _wrap(module: Any, name: str, after: Any) -> None:
    """Replace module.name by a call that records (args, result) through `after`."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after(args, result)
        return result

    setattr(module, name, wrapper)


def _push(stage: str) -> Any:
    def after(args: Any, result: Any) -> None:
        _record.setdefault(stage, []).append((args, result))

    return after


def _coverage(blob: Any, points: np.ndarray, origin: tuple[int, ...]) -> int:
    """How many tumour working-grid points (`points`, a full working-grid mask) a blob (crop
    coordinates, crop at `origin`) holds."""
    box = tuple(slice(b.start + o, b.stop + o) for b, o in zip(blob.box, origin, strict=True))
    return int(np.count_nonzero(points[box] & blob.mask))


def _tumour_points(tumour: Any, lungs: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """The tumour's voxels on the working grid (a mask of it) and find_candidates' crop origin."""
    f = lungs.factor
    spacing = lungs.spacing
    region_box = L.bounding_box(lungs.region)
    margin = int(np.ceil(L.MEDIASTINAL_BAND_MM / min(spacing[1:]))) + 4
    shape = lungs.labels.shape
    origin = (
        region_box[0].start,
        max(0, region_box[1].start - margin),
        max(0, region_box[2].start - margin),
    )
    pts = np.argwhere(tumour.mask) + np.array(tumour.origin)
    small = pts // np.array([1, f, f])
    small = np.minimum(small, np.array(shape) - 1)
    points = np.zeros(shape, dtype=bool)
    points[tuple(small.T)] = True
    return points, origin


def _diagnose(row: dict[str, Any], tumour: Any, threshold: float) -> dict[str, Any]:
    """The stages' coverage of one tumour and the first stage that lost it."""
    lungs = _record["lung_mask"][-1][1]
    points, origin = _tumour_points(tumour, lungs)
    n = int(np.count_nonzero(points))
    in_region = int(np.count_nonzero(points & lungs.region))
    in_cavity = int(np.count_nonzero(points & lungs.cavity)) if lungs.cavity is not None else 0

    def cover(blobs: list[Any]) -> list[int]:
        return sorted((c for c in (_coverage(b, points, origin) for b in blobs) if c), reverse=True)

    thick_in = [a[1] for a, r in _record.get("thick", [])]
    thick_ok = [a[1] for a, r in _record.get("thick", []) if r]
    grown = [r for a, r in _record.get("grow_cavity", [])] or [
        r for a, r in _record.get("grow", [])
    ]
    merged = _record.get("merge", [([], [])])[-1][1]
    parts = [p for a, r in _record.get("mass", []) for p in r]
    edge = _record.get("edge", [([], [])])[-1][1]
    apex = _record.get("apex", [([], [])])[-1][1]
    anatomy = [(a[1], r) for a, r in _record.get("anatomy", [])]
    found = _record.get("found", [([], [])])[-1][1]
    probs = _record.get("predict", [([], (np.zeros(0), None))])[-1][1][0]

    def on(c: Any, mask: np.ndarray | None = None) -> int:
        mask = tumour.mask if mask is None else mask
        tz = tumour.origin
        local = np.argwhere(c.mask) + np.array(c.mask_origin) - np.array(tz)
        ok = np.all((local >= 0) & (local < np.array(mask.shape)), axis=1)
        return int(np.count_nonzero(mask[tuple(local[ok].T)]))

    stages = {
        "tumour_working_voxels": n,
        "in_region": round(in_region / n, 2),
        "in_cavity": round(in_cavity / n, 2),
        "soft_components": [round(c / n, 2) for c in cover(thick_in)],
        "thick": [round(c / n, 2) for c in cover(thick_ok)],
        "grown": [round(c / n, 2) for c in cover(grown)],
        "merged": [round(c / n, 2) for c in cover(merged)],
        "mass_parts": [round(c / n, 2) for c in cover(parts)],
        "edge_kept": [round(c / n, 2) for c in cover(edge)],
        "below_apex": [round(c / n, 2) for c in cover(apex)],
        "anatomy_dropped": [why for c, why in anatomy if why and on(c)],
        "candidates": [
            {
                "p": round(float(p), 3),
                "axis_mm": round(c.long_axis_mm, 1),
                # What share of the candidate is the tumour: a vessel finding that touches the
                # tumour's edge counts as on it in the grid's hit rule.
                "on_tumour": round(on(c) / max(1, int(np.count_nonzero(c.mask))), 2),
                "on_collapse": round(
                    on(c, tumour.collapse) / max(1, int(np.count_nonzero(c.mask))), 2
                ),
            }
            for c, p in zip(found, probs, strict=False)
            if on(c)
        ],
    }
    if row["hit"]:
        stage = "hit"
    elif row["findings_on_tumour"] > 1:
        stage = "several"
    elif row["found_as_one"] and row["finding_on_tumour_share"] < stress.HIT_MIN_ON_TUMOUR:
        stage = "beside"  # one finding touches it, mostly its collapse or vessels
    elif row["found_as_one"]:
        stage = "short" if row["long_axis_error"] < 0 else "long"
        drops = {
            k: (stages[prev][0] if stages[prev] else 0) - (stages[k][0] if stages[k] else 0)
            for prev, k in (
                ("thick", "merged"),
                ("merged", "mass_parts"),
                ("mass_parts", "below_apex"),
            )
        }
        held = max(stages["in_region"], stages["in_cavity"])
        worst = max(drops, key=lambda k: drops[k])
        stage += " (region)" if held < 0.5 else f" ({worst})"
    elif stages["in_region"] < 0.3 and not stages["thick"]:
        stage = "region"
    elif not stages["thick"]:
        stage = "thick"
    elif not stages["grown"]:
        grown_in_plane = [r for a, r in _record.get("grow", [])]
        stage = "cavity-join" if cover(grown_in_plane) else "cap"
    elif not stages["mass_parts"]:
        stage = "mass-cut"
    elif not stages["edge_kept"]:
        stage = "edge"
    elif not stages["below_apex"]:
        stage = "apex"
    elif stages["anatomy_dropped"] and not stages["candidates"]:
        stage = "anatomy: " + stages["anatomy_dropped"][0].split(" (")[0]
    elif not stages["candidates"]:
        stage = "refine"
    elif max(c["p"] for c in stages["candidates"]) < threshold:
        stage = "score"
    else:
        stage = "other"
    return {**stages, "stage": stage}


def main(argv: list[str] | None = None) -> int:
    """Run the stress test with the stages recorded; print and write the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--annotations", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-position", type=int, default=3)
    parser.add_argument("--patients", nargs="+")
    parser.add_argument("--positions", nargs="+", default=list(stress.POSITIONS))
    args = parser.parse_args(argv)

    _wrap(L, "lung_mask", _push("lung_mask"))
    _wrap(L, "_thick_enough", _push("thick"))
    _wrap(L, "_grow", _push("grow"))
    _wrap(L, "_grow_in_cavity", _push("grow_cavity"))
    _wrap(L, "_merge_overlapping", _push("merge"))
    _wrap(L, "_mass_parts", _push("mass"))
    _wrap(L, "_without_edge_fragments", _push("edge"))
    _wrap(L, "_below_apex", _push("apex"))
    _wrap(L, "is_anatomy", _push("anatomy"))
    _wrap(analyze, "find_candidates", _push("found"))
    diagnoses: list[dict[str, Any]] = []
    evaluate = stress.evaluate_insertion

    def evaluate_traced(ct: Any, anatomy: Any, tumour: Any, settings: Any, model: Any, uid: str):  # type: ignore[no-untyped-def]
        _record.clear()
        if not hasattr(model, "_traced"):
            predict = model.predict

            def traced(patches: np.ndarray) -> Any:
                out = predict(patches)
                _record.setdefault("predict", []).append(((), out))
                return out

            model.predict = traced
            model._traced = True
        row, lesions, kinds = evaluate(ct, anatomy, tumour, settings, model, uid)
        d = _diagnose(row, tumour, settings.lesion_probability_threshold)
        keep = ("position", "side", "size_band", "shape", "collapse", "true_long_axis_mm")
        diagnoses.append({k: row[k] for k in keep} | {"found_mm": row["finding_long_axis_mm"]} | d)
        print(f"{row['position']:12} {row['true_long_axis_mm']:6.1f} -> {d['stage']}", flush=True)
        return row, lesions, kinds

    stress.evaluate_insertion = evaluate_traced
    out = Path(args.out)
    stress.run_stress(
        Path(args.data),
        [Path(a) for a in args.annotations],
        out,
        per_position=args.per_position,
        positions=args.positions,
        patients=args.patients,
    )
    (out / "diagnosis.json").write_text(json.dumps(diagnoses, indent=1))
    by = Counter((d["position"], d["stage"].split(" (")[0]) for d in diagnoses)
    for (position, stage), count in sorted(by.items()):
        print(f"{position:12} {stage:40} {count}")
    print(Counter(d["stage"].split(" (")[0] for d in diagnoses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
