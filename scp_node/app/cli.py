"""The `lungnode` command line: serve, status, resend, retention, check-config, selftest, synth,
train, evaluate, evaluate-detector, real-ct-protocol, predict."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from scp_node.config import Config, ConfigError, load_config
from scp_node.logs import configure_logging, escape_text
from storage.private_files import restrict_umask
from storage.redaction import redact_secrets

log = logging.getLogger("lungnode")


def _load(path: str | None) -> Config:
    """The node's configuration: `-c` file (or none: the built-in defaults), then LUNGNODE__
    environment variables."""
    return load_config(Path(path) if path else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from scp_node.app.service import serve

    return serve(_load(args.config), role=args.role)


def _open_index(config: Config):  # -> storage.index.Index
    from storage.index import open_index

    return open_index(config.storage.database_url, pool_size=config.storage.database_pool_size)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    status: dict[str, Any] = dict(_open_index(config).status())
    status["destinations"] = destination_summary(config, status["outbox"])
    if args.json:  # json.dumps escapes every control character (ensure_ascii)
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    # Reasons and errors hold peers' Error Comments and datasets' Series Descriptions: every
    # value is escaped (no control character reaches the terminal) and bounded.
    e = escape_text
    print(
        f"{'STATE':<10} {'INST':>5} {'SER':>3} {'MOD':<6} {'ACCESSION':<16} {'DATE':<8} "
        f"{'SENDER':<16} {'UPDATED':<20} STUDY / REASON"
    )
    for s in status["studies"]:
        print(
            f"{e(s.get('shown_state', s['state']), 24):<10} {s['instances']:>5} {s['series']:>3} "
            f"{e(','.join(s.get('modalities', [])), 16):<6} "
            f"{e(s.get('accession_number', ''), 16):<16} "
            f"{e(s.get('study_date', ''), 8):<8} {e(s.get('sender', ''), 16):<16} "
            f"{e(s['updated_at'], 19):<20} {e(s['study_uid'], 64)}"
            + (f"  ({e(s['reason'])})" if s.get("reason") else "")
        )
    if status["outbox"]:
        print(
            f"\n{'OUTBOX':<10} {'OUTCOME':<26} {'TRY':>3}  {'DESTINATION':<16} "
            "SOP INSTANCE / REASON"
        )
        for o in status["outbox"]:
            due = o.get("commit_due_at") if o["state"] == "COMMITTING" else None
            print(
                f"{e(o['state'], 16):<10} {e(o.get('outcome', ''), 32):<26} {o['attempts']:>3}  "
                f"{e(o['destination'], 64):<16} {e(o['sop_instance_uid'], 64)}"
                + (f"  ({e(o['last_error'])})" if o.get("last_error") else "")
                + (f"  (commitment due {due})" if due else "")
            )
    if status["destinations"]:
        print(f"\n{'DESTINATION':<16} {'PROTOCOL':<32} {'PEER':<40} RESULTS")
        for d in status["destinations"]:
            counts = ", ".join(f"{n} {word}" for word, n in sorted(d["results"].items()))
            print(
                f"{e(d['name'], 64):<16} {d['protocol']:<32} {e(d['peer'], 200):<40} "
                f"{e(counts) or 'none yet'}"
            )
    return 0


def destination_summary(config: Config, outbox: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configured destination (and any the outbox names that is no longer configured):
    its protocol, peer and how many results ended each way (sent, committed, ...)."""
    summary: dict[str, dict[str, Any]] = {}
    for name, d in config.destinations.items():
        summary[name.casefold()] = {
            "name": name,
            "protocol": d.protocol + (" + Storage Commitment" if d.commit else ""),
            "peer": str(d),
            "results": {},
        }
    for o in outbox:
        entry = summary.setdefault(
            o["destination"].casefold(),
            {"name": o["destination"], "protocol": "", "peer": "not in [destinations]",
             "results": {}},
        )  # fmt: skip
        outcome = o.get("outcome", o["state"])
        entry["results"][outcome] = entry["results"].get(outcome, 0) + 1
    return list(summary.values())


def cmd_resend(args: argparse.Namespace) -> int:
    count = _open_index(_load(args.config)).resend_dead(args.study)
    print(f"{count} dead-letter result(s) queued for sending again")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    import getpass

    from scp_node.pipeline.retention import format_report, run_retention

    now = None
    if args.as_of:
        from datetime import UTC, datetime

        if not args.dry_run:
            raise ConfigError("--as-of previews a later date: use it with --dry-run")
        try:
            now = datetime.fromisoformat(args.as_of).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise ConfigError(
                f"--as-of {args.as_of!r}: expected a date such as 2025-06-30"
            ) from None
    config = _load(args.config)
    index = _open_index(config)
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    try:
        report = run_retention(config, index, dry_run=args.dry_run, actor=f"cli:{user}", now=now)
    finally:
        index.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(format_report(report, escape_text))
    return 1 if report.errors else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from scp_node.app.check_config import as_json, as_text, check_config, failed

    findings = check_config(args.config, echo_timeout=args.timeout)
    print(as_json(findings) if args.json else as_text(findings, escape_text))
    return 1 if failed(findings) else 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the salted hash of a password for [web] users (asked twice on a terminal, else one
    line read from standard input); the password itself is never printed or stored."""
    import getpass

    from scp_node.credentials import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("lungnode: the two passwords differ; nothing printed", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        print("lungnode: a console password needs at least 12 characters", file=sys.stderr)
        return 2
    name = args.user
    print(f"{name}:{hash_password(password)}" if name else hash_password(password))
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from scp_node.app.selftest import SelftestError, run_selftest

    config = _load(args.config)
    try:
        result = run_selftest(config, destination=args.destination, timeout=args.timeout)
    except SelftestError as exc:
        print(f"lungnode selftest: {escape_text(str(exc), None)}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.text())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from classifier.datasets.phantom import write_tcia_layout

    studies = write_tcia_layout(
        Path(args.out), args.patients, args.seed, ct_size=args.ct_size, ct_slices=args.ct_slices
    )
    print(f"wrote {len(studies)} phantom patients to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from classifier.model.training import train

    command = "lungnode " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = train(
        Path(args.data),
        Path(args.annotations) if args.annotations else None,
        Path(args.out),
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        command=command,
    )
    print(f"model written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The model's patch report, then (unless --no-detector) the detector's FROC/CPM with this
    model: `evaluate-detector` on the same folder into <report>/detector (froc.png, pictures)."""
    from classifier.model.detector_eval import FROC_PNG, evaluate_detector
    from classifier.model.evaluate_folder import evaluate
    from classifier.settings import AnalysisSettings

    report = Path(args.report)
    metrics = evaluate(
        Path(args.model),
        Path(args.data),
        Path(args.annotations) if args.annotations else None,
        report,
    )
    if not args.no_detector:
        out = report / "detector"
        summary = evaluate_detector(
            Path(args.data),
            [Path(args.annotations)] if args.annotations else [],
            out,
            settings=AnalysisSettings(model=Path(args.model)),
            progress=lambda line: log.info("evaluate (detector) %s", line),
        )
        metrics["detector"] = {
            "cpm": summary["froc"].get("cpm"),
            "froc": summary["froc"],
            "studies": summary["studies"],
            "froc_png": str(out / FROC_PNG),
        }
    print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return 0


def cmd_evaluate_detector(args: argparse.Namespace) -> int:
    from classifier.model.detector_eval import REPORT_MD, evaluate_detector

    evaluate_detector(
        Path(args.data),
        [Path(a) for a in args.annotations or []],
        Path(args.out),
        progress=lambda line: log.info("evaluate-detector %s", line),
    )
    print((Path(args.out) / REPORT_MD).read_text())
    return 0


def cmd_real_ct_protocol(args: argparse.Namespace) -> int:
    from classifier.model import real_ct_protocol

    argv = ["--data", args.data, "--out", args.out]
    argv += [a for path in args.annotations or [] for a in ("--annotations", path)]
    argv += ["--install"] if args.install else []
    argv += ["--from-json"] if args.from_json else []
    return real_ct_protocol.main(argv)


def cmd_stress_test(args: argparse.Namespace) -> int:
    from classifier.model.stress_cli import run_from_args

    return run_from_args(args, "lungnode " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


def cmd_predict(args: argparse.Namespace) -> int:
    from classifier.predict_folder import predict_folder

    config = _load(args.config)
    written = predict_folder(
        Path(args.folder),
        Path(args.out),
        config=config.classifier,
        png=args.png,
        histology=config.results.histology,
        histology_min_probability=config.results.histology_min_probability,
    )
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungnode",
        description="DICOM node that finds and characterises lung lesions (not for clinical use).",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="config.ini of the node (only the keys that differ from the built-in "
            "defaults; relative paths in it are taken from its folder). Without -c: the "
            "built-in defaults and LUNGNODE__<SECTION>__<KEY> environment variables, with "
            "relative paths (e.g. [storage] root = data) taken from the current directory",
        )

    p = sub.add_parser("serve", help="run the node (receiver, scheduler, worker, sender)")
    with_config(p)
    p.add_argument("--role", default="all", choices=["all", "receiver", "worker"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="studies and result deliveries")
    with_config(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("resend", help="send dead-letter results again")
    with_config(p)
    p.add_argument("--study", help="only this Study Instance UID")
    p.set_defaults(func=cmd_resend)

    p = sub.add_parser(
        "retention",
        help="remove the received instances of delivered studies past [storage] retention_days "
        "(and the oldest first below emergency_free_mb); --dry-run lists them and why",
    )
    with_config(p)
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.add_argument(
        "--as-of", metavar="DATE", help="with --dry-run: what would go on that day (UTC)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_retention)

    p = sub.add_parser(
        "check-config",
        help="check values, folders, database, TLS certificates, model checksum and C-ECHO every "
        "destination; every problem at once; exit status 1 on any error",
    )
    with_config(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per C-ECHO (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "selftest",
        help="send a generated phantom study through the running node's C-STORE to a loopback "
        "destination ([destinations] selftest = AE@127.0.0.1:PORT) and print its turnaround",
    )
    with_config(p)
    p.add_argument(
        "--destination",
        metavar="NAME",
        help="send the results to this configured destination instead of the loopback one",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser(
        "hash-password",
        help="print a salted scrypt hash of a console password, for [web] users "
        "(name:hash); the password is asked twice, or read as one line from standard input",
    )
    p.add_argument("--user", metavar="NAME", help="print name:hash, ready for [web] users")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("synth", help="write synthetic PET/CT phantom studies (TCIA layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ct-size", type=int, default=128, help="CT rows and columns")
    p.add_argument("--ct-slices", type=int, default=40)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train the CNN on a Lung-PET-CT-Dx style collection")
    p.add_argument("--data", required=True, help="TCIA download (manifest folder or its parent)")
    p.add_argument("--annotations", help="annotation folder (default: <data>/Annotation)")
    p.add_argument("--out", required=True, help="model file to write (.keras)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluation report of a model on a data folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--annotations")
    p.add_argument("--report", required=True, help="folder for the report")
    p.add_argument(
        "--no-detector",
        action="store_true",
        help="patch report only: skip the detector's FROC/CPM (<report>/detector)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "evaluate-detector",
        help="run the analysis on every patient of a TCIA-layout folder; FROC, CPM, pictures",
    )
    p.add_argument("--data", required=True, help="TCIA download (manifest folder or its parent)")
    p.add_argument(
        "--annotations",
        action="append",
        help="annotation folder (A0002/<SOP UID>.xml ...); repeat for several; "
        "default: the Annotation folder beside the download",
    )
    p.add_argument("--out", required=True, help="folder for the report and pictures")
    p.set_defaults(func=cmd_evaluate_detector)

    p = sub.add_parser(
        "real-ct-protocol",
        help="judge the detector on the real studies leave one patient out; the model card's "
        "real-CT table (classifier.model.real_ct_protocol)",
    )
    p.add_argument("--data", required=True, help="TCIA download (manifest folder or its parent)")
    p.add_argument("--annotations", action="append", help="annotation folder; repeat for several")
    p.add_argument("--out", required=True, help="folder for the summary and pictures")
    p.add_argument("--install", action="store_true", help="write the bundled model's card")
    p.add_argument(
        "--from-json", action="store_true", help="install from OUT of an earlier run, no analysis"
    )
    p.set_defaults(func=cmd_real_ct_protocol)

    p = sub.add_parser(
        "stress-test",
        help="insert synthetic tumours against the walls of real CT studies and report how the "
        "analysis finds them (per position class and size band, pictures)",
    )
    from classifier.model.stress_cli import add_arguments as stress_arguments

    stress_arguments(p)
    p.set_defaults(func=cmd_stress_test)

    p = sub.add_parser("predict", help="analyse a folder of DICOM files offline, write SR/SEG")
    p.add_argument("folder")
    p.add_argument("--out", default="lungnode-results")
    p.add_argument("--png", action="store_true", help="also render a picture per lesion")
    with_config(p)
    p.set_defaults(func=cmd_predict)
    return parser


# Commands that run the node or open its store and index: everything they create there (store
# folders, instances, results, audit log, SQLite database and its -wal/-shm) is the node's alone.
NODE_COMMANDS = ("serve", "status", "resend", "retention", "selftest")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.command in NODE_COMMANDS:
        restrict_umask()
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"lungnode: {escape_text(redact_secrets(str(exc)), None)}", file=sys.stderr)
        return 2
    except Exception as exc:
        from storage.database import DatabaseError  # psycopg: imported only when needed

        if not isinstance(exc, DatabaseError):
            raise  # logged by configure_logging's hook: one escaped, redacted line
        print(f"lungnode: {escape_text(redact_secrets(str(exc)), None)}", file=sys.stderr)
        return 2
