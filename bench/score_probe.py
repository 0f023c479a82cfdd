"""What the lesion score sees of an inserted tumour: stress-grid insertions rebuilt from their
seed, their candidates scored, and the same tumours moved into free lung or grown
(`python bench/score_probe.py --data D --annotations A --out DIR --patient P --scan-number N
--insertion POSITION INDEX [--shift-mm 10 20] [--diameters-mm 40] [--model M]`; N is the
patient's place in the grid's sorted patient list, 0 for the first).

For each insertion: the candidate(s) on the tumour (axis, where the patch is taken, raw score),
the same tumour (same look, same draws) with its centre moved `--shift-mm` from the wall into the
lung, or drawn at another diameter against the same wall point, each scored the same way, and the
score of the patch at the tumour's own centre. Writes the patches' channels as PNGs into --out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from classifier.datasets.insertion import CENTRE_DEPTH, insert, place, study_anatomy
from classifier.datasets.wall_positions import POSITIONS
from classifier.imaging.lesions import find_candidates
from classifier.model.detector_eval import _annotations_by_patient, evaluate_study_folder
from classifier.model.inference import LesionClassifier
from classifier.model.patches import extract_patch
from classifier.model.stress import spec_for
from classifier.settings import AnalysisSettings


def _on(c: Any, tumour: Any) -> int:
    local = np.argwhere(c.mask) + np.array(c.mask_origin) - np.array(tumour.origin)
    ok = np.all((local >= 0) & (local < np.array(tumour.mask.shape)), axis=1)
    return int(np.count_nonzero(tumour.mask[tuple(local[ok].T)]))


def _score(ct: Any, model: LesionClassifier, tumour: Any, settings: AnalysisSettings) -> list[Any]:
    found = find_candidates(
        ct, None, settings.mtv_threshold, mass_radius_mm=settings.mass_radius_mm
    )
    on = [c for c in found if _on(c, tumour)]
    if not on:
        return []
    p, _ = model.predict(np.stack([extract_patch(ct, c.center_index, None) for c in on]))
    return [
        {
            "p": round(float(q), 3),
            "axis_mm": c.long_axis_mm,
            "centre": list(c.center_index),
            "box_rc": list(c.box_rc),
            "on_tumour": _on(c, tumour),
            "voxels": int(np.count_nonzero(c.mask)),
        }
        for c, q in zip(on, p, strict=True)
    ]


def _save(patch: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.6), dpi=70)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4)
    for ax, ch, name in zip(
        axes, (0, 1, 2, 4), ("lung -5", "lung 0", "lung +5", "med 0"), strict=True
    ):
        ax.imshow(patch[..., ch], cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=7)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=8)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--annotations", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--patient", required=True)
    parser.add_argument("--scan-number", type=int, required=True)
    parser.add_argument(
        "--insertion", nargs=2, action="append", required=True, metavar=("POSITION", "INDEX")
    )
    parser.add_argument("--shift-mm", type=float, nargs="+", default=[20.0])
    parser.add_argument("--diameters-mm", type=float, nargs="*", default=[])
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = AnalysisSettings()
    if args.model:
        settings = dataclasses.replace(settings, model=Path(args.model))
    model = LesionClassifier.load(settings.model)
    annotated, folders, _ = _annotations_by_patient(
        Path(args.data), [Path(a) for a in args.annotations]
    )
    study = evaluate_study_folder(
        args.patient, folders[args.patient], annotated.get(args.patient, []), settings, model
    )[0]
    if study.ct is None:
        raise SystemExit(f"{args.patient}: no CT analysed ({'; '.join(study.skipped)})")
    ct = study.ct.with_array(np.array(study.ct.array, copy=True))
    anatomy = study_anatomy(ct, [(r.lesion.lo_mm, r.lesion.hi_mm) for r in study.references])
    original = ct.array.copy()
    results = []
    for position, index in args.insertion:
        index = int(index)
        key = [args.seed, zlib.crc32(study.scan_id.encode()), POSITIONS.index(position), index]
        rng = np.random.default_rng(key)
        spec = spec_for(args.scan_number, position, index, rng)
        placement = place(ct, anatomy, spec, rng)
        if placement is None:
            spec = dataclasses.replace(spec, side="left" if spec.side == "right" else "right")
            placement = place(ct, anatomy, spec, rng)
        assert placement is not None
        after_place = copy.deepcopy(rng)
        row: dict[str, Any] = {"position": position, "index": index, "spec": str(spec)}
        variants = [("as placed", 0.0, None)]
        variants += [(f"moved {s:g} mm into lung", s, None) for s in args.shift_mm]
        variants += [(f"diameter {d:g} mm", 0.0, d) for d in args.diameters_mm]
        for name, shift, diameter in variants:
            normal = np.array(placement.normal)
            if diameter:  # the same wall point, the centre as deep as place() puts it
                shift = CENTRE_DEPTH * (diameter - spec.diameter_mm) / 2.0
            c_mm = np.array(placement.centre_mm) - normal * shift
            w_mm = np.array(placement.wall_mm) - normal * shift
            moved = dataclasses.replace(
                placement,
                spec=dataclasses.replace(placement.spec, diameter_mm=diameter or spec.diameter_mm),
                centre_mm=(float(c_mm[0]), float(c_mm[1]), float(c_mm[2])),
                wall_mm=(float(w_mm[0]), float(w_mm[1]), float(w_mm[2])),
            )
            tumour = insert(ct, anatomy, moved, copy.deepcopy(after_place))
            cands = _score(ct, model, tumour, settings)
            ci = np.rint(ct.patient_to_index(np.array(moved.centre_mm))).astype(int)
            centre = (int(ci[0]), int(ci[1]), int(ci[2]))
            own = extract_patch(ct, centre, None)
            p_own = float(model.predict(own[None])[0][0])
            tag = f"{args.patient[-5:]}-{position}{index}-{shift:g}-{diameter or 0:g}"
            _save(own, out / f"{tag}-centre.png", f"{tag} patch at tumour centre p {p_own:.3f}")
            for k, c in enumerate(cands):
                patch = extract_patch(ct, (c["centre"][0], c["centre"][1], c["centre"][2]), None)
                _save(patch, out / f"{tag}-cand{k}.png", f"{tag} candidate {k} p {c['p']}")
            row[name] = {
                "true_axis_mm": tumour.long_axis_mm,
                "mean_hu": round(tumour.mean_hu, 1),
                "candidates": cands,
                "p_at_tumour_centre": round(p_own, 3),
                "tumour_centre": list(centre),
            }
            ct.array[...] = original
        print(json.dumps(row), flush=True)
        results.append(row)
    (out / f"probe-{args.patient}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
