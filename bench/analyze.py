"""Benchmark of `analyze` + `encode` on generated PET/CT studies: a 300-slice and a 1,000-slice
512 x 512 CT (1 mm slices), each with a 250-slice PET.

Prints, per case, the time of each stage (reading and decoding, volumes and SUV, resampling, lung
mask and candidates, CNN, encoding), the CNN's share of the whole, and the peak RSS of the
process that ran it (each case runs in its own spawned process, model loaded there).
Targets on a 2-core machine: 300 slices whole < 10 s and CNN < 20 % of it; peak RSS < 2 GB for
both (memory does not grow with the study beyond the CT itself, int16 HU).

    .venv/bin/python bench/analyze.py [--ct-slices 300 1000] [--ct-size 512] [--repeats 2]
                                      [--study-dir DIR]  (reuse or keep the generated studies,
                                                          one folder per case below it)

The studies are generated and written in a child process, so the generator's arrays do not count
in the analysis' peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from classifier.analyze import analyze_study  # noqa: E402
from classifier.datasets.phantom import generate_study  # noqa: E402
from classifier.datasets.study_folder import scan_folder  # noqa: E402
from classifier.model.inference import LesionClassifier  # noqa: E402
from classifier.results.encode import encode  # noqa: E402
from scp_node.config import DEFAULT_CONFIG, load_config  # noqa: E402

STAGES = ("read", "volumes", "resample", "candidates", "cnn", "encode")


def _write_study(folder: Path, ct_size: int, ct_slices: int, pet_slices: int) -> None:
    study = generate_study(
        seed=2024,
        histology="G",
        ct_size=ct_size,
        ct_slices=ct_slices,
        slice_thickness_mm=1.0,
        pet=True,
        pet_size=192,
        pet_slices=pet_slices,
        n_lesions=2,
    )
    for ds in study.ct + study.pet:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def _ensure_study(folder: Path, ct_size: int, ct_slices: int, pet_slices: int) -> None:
    """Generate the study into `folder` in a child process unless it already holds one."""
    if any(folder.glob("*.dcm")):
        print(f"reusing the study in {folder}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=_write_study, args=(folder, ct_size, ct_slices, pet_slices)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"generating the study in {folder} failed (exit code {child.exitcode})")
    print(
        f"generated study in {time.perf_counter() - started:.1f} s "
        f"(CT {ct_slices} x {ct_size}^2, PET {pet_slices} slices)"
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _case(args: argparse.Namespace, ct_slices: int, folder: Path, out: Path) -> None:
    """One case in this (spawned) process: analyse and encode `repeats` times; figures to `out`."""
    config = load_config(DEFAULT_CONFIG, environ={})
    model = LesionClassifier.load(config.classifier.model)
    (study,), _ = scan_folder(folder)
    rss_before = peak_rss_mb()
    runs = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        analysis = analyze_study(study, config.classifier, model)
        result, sources, ct = analysis.result, analysis.sources, analysis.ct
        # As the worker does: keep the key slices' pixels, free the volumes before encoding.
        key = {x.key_slice_index: ct.array[x.key_slice_index].copy() for x in result.lesions}
        del analysis, ct
        t_encode = time.perf_counter()
        encode(result, sources, key_pixels=key)
        timings = dict(result.timings_s)
        timings["encode"] = time.perf_counter() - t_encode
        timings["total"] = time.perf_counter() - started
        runs.append(timings)
        print(
            f"CT {ct_slices} slices, run {repeat + 1}: "
            + "  ".join(f"{k} {timings.get(k, 0):.2f}s" for k in (*STAGES, "total"))
            + f"  lesions {len(result.lesions)}",
            flush=True,
        )
    best = min(runs, key=lambda t: t["total"])
    figures = {
        "ct_slices": ct_slices,
        "total_s": round(best["total"], 2),
        "cnn_share": round(best.get("cnn", 0.0) / best["total"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 0),
        "peak_rss_before_analysis_mb": round(rss_before, 0),
        "stages_s": {k: round(best.get(k, 0.0), 3) for k in STAGES},
        "lesions": len(result.lesions),
    }
    out.write_text(json.dumps(figures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-slices", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--pet-slices", type=int, default=250)
    parser.add_argument("--ct-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--study-dir",
        type=Path,
        help="folder for the generated studies (ct<slices> below it): reused when they hold "
        ".dcm files, kept afterwards",
    )
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    cases = []
    with tempfile.TemporaryDirectory(prefix="lungnode-bench-") as tmp:
        base = args.study_dir or Path(tmp)
        for ct_slices in args.ct_slices:
            folder = base / f"ct{ct_slices}"
            _ensure_study(folder, args.ct_size, ct_slices, args.pet_slices)
            out = Path(tmp) / f"figures-{ct_slices}.json"
            child = spawn.Process(target=_case, args=(args, ct_slices, folder, out))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the {ct_slices}-slice case failed (exit code {child.exitcode})")
            cases.append(json.loads(out.read_text()))
    print(json.dumps(cases, indent=2))
    for figures in cases:
        time_target = " (target < 10 s)" if figures["ct_slices"] <= 300 else ""
        print(
            f"CT {figures['ct_slices']} slices: whole {figures['total_s']:.2f} s{time_target}, "
            f"CNN {figures['cnn_share'] * 100:.1f}% (target < 20%), "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB (target < 2048 MB)"
        )
    if args.json:
        args.json.write_text(json.dumps(cases, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
