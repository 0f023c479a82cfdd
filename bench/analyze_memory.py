"""Peak RSS and time of each stage of `analyze_study` + `encode` on one study folder.

A thread samples the process' resident set size (/proc/self/statm) every 5 ms and charges it
to the stage running at that moment (the stages of `classifier.analyze.STAGES`, plus model
loading and encoding), so the table shows which stage holds the peak.

    .venv/bin/python bench/analyze_memory.py STUDY_DIR [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import classifier.analyze as analyze_module  # noqa: E402

T = TypeVar("T")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class StageSampler:
    """Samples RSS in a thread; `stage(name)` charges the samples to a stage."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.current = "setup"
        self.peak_mb: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20

    def _note(self) -> None:
        rss = self.rss_mb()
        self.peak_mb[self.current] = max(self.peak_mb.get(self.current, 0.0), rss)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._note()

    def __enter__(self) -> StageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer = self.current
        self._note()
        self.current = name
        started = time.perf_counter()
        try:
            yield
        finally:
            self._note()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.current = outer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from classifier.datasets.study_folder import scan_folder
    from classifier.model.inference import LesionClassifier
    from classifier.results.encode import encode
    from scp_node.config import DEFAULT_CONFIG, load_config

    with StageSampler() as sampler:
        original = analyze_module._Clock.run

        def run(self: analyze_module._Clock, stage: str, work: Callable[[], T]) -> T:
            with sampler.stage(stage):
                return original(self, stage, work)

        analyze_module._Clock.run = run  # type: ignore[method-assign]
        config = load_config(DEFAULT_CONFIG, environ={})
        with sampler.stage("model"):
            model = LesionClassifier.load(config.classifier.model)
        (study,), _ = scan_folder(args.folder)
        started = time.perf_counter()
        with sampler.stage("analysis (all)"):
            analysis = analyze_module.analyze_study(study, config.classifier, model)
        result, sources, ct = analysis.result, analysis.sources, analysis.ct
        key = {x.key_slice_index: ct.array[x.key_slice_index].copy() for x in result.lesions}
        del analysis, ct
        with sampler.stage("encode"):
            encode(result, sources, key_pixels=key)
        total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    stages = [
        "model",
        *analyze_module.STAGES,
        "analysis (all)",
        "encode",
    ]
    print(f"{'stage':18} {'time s':>8} {'peak RSS MB':>12}")
    for name in stages:
        seconds, peak_mb = sampler.seconds.get(name, 0.0), sampler.peak_mb.get(name, 0.0)
        print(f"{name:18} {seconds:8.2f} {peak_mb:12.0f}")
    lesions = len(result.lesions)
    print(f"analysis+encode {total:.2f} s, process peak RSS {peak:.0f} MB, lesions {lesions}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "total_s": round(total, 2),
                    "peak_rss_mb": round(peak),
                    "stages": {
                        n: {
                            "s": round(sampler.seconds.get(n, 0.0), 3),
                            "peak_mb": round(sampler.peak_mb.get(n, 0.0)),
                        }
                        for n in stages
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
