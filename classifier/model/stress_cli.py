"""The stress test's command line (`lungnode stress-test`, `python -m
classifier.model.stress_cli`): arguments declared without importing the science
(classifier.model.stress), which loads only when it runs."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from classifier.datasets.wall_positions import POSITIONS

log = logging.getLogger("lungnode.stress")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    return run_from_args(
        args, "python -m classifier.model.stress_cli " + shlex.join(argv or sys.argv[1:])
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of the stress test (here and in `lungnode stress-test`)."""
    parser.add_argument("--data", required=True, help="TCIA-layout folder of real CT studies")
    parser.add_argument(
        "--annotations",
        action="append",
        default=[],
        help="annotation folder (the studies' own tumour boxes, kept away from); repeatable",
    )
    parser.add_argument("--out", required=True, help="folder for stress.json, .md and pictures")
    parser.add_argument("--per-position", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positions", nargs="+", choices=POSITIONS, default=list(POSITIONS))
    parser.add_argument("--patients", nargs="+", help="patient folders (default: all)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="patient folders analysed at once, each in its own process that loads the model "
        "and holds one study's CT (about 1.2 GB at peak); the results are the serial run's "
        "(default 1)",
    )
    parser.add_argument(
        "--card",
        help="MODEL_CARD.md to put the section in (the pictures are copied beside it, into "
        "stress-test/)",
    )


def run_from_args(args: argparse.Namespace, command: str) -> int:
    """Run from parsed arguments; print the Markdown report."""
    from classifier.model.stress import REPORT_MD, install_card, run_stress

    out = Path(args.out)
    summary = run_stress(
        Path(args.data),
        [Path(a) for a in args.annotations],
        out,
        per_position=args.per_position,
        seed=args.seed,
        positions=args.positions,
        patients=args.patients,
        progress=lambda line: log.info("stress %s", line),
        workers=args.workers,
    )
    if args.card:
        install_card(summary, out, Path(args.card), command)
    print((out / REPORT_MD).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
