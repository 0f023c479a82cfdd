"""`lungnode check-config`: every problem of a configuration at once, before `serve` meets the
first one.

Checks, each reported as OK, WARNING or ERROR with the key or peer it concerns:
- values: every key through the config loader's own parsers (all bad keys, not the first), then
  the loader's checks across keys, repeated with the offending key left at its default until none
  is left, so every cross-key problem is named too;
- folders: the store root, its .incoming folder, the audit log's folder and the SQLite file's
  folder are writable (a file is created and removed in each), or can be created;
- the database answers (a connection and SELECT 1; nothing is migrated or written);
- free space on the store against min_free_mb and emergency_free_mb;
- the console: a WARNING for plain HTTP beyond loopback ([web] insecure_http) and for a [web]
  token that is easy to guess (scp_node.credentials.weak_token_reason);
- TLS: the node's certificate and key load together, every certificate (own and CA file) parses,
  and its expiry: a WARNING within 30 days, an ERROR once expired or not yet valid;
- the model file exists, is a Keras archive with lungnode metadata, and its SHA-256 matches the
  checksum recorded beside it by `lungnode train` (<stem>-report/metrics.json, or <file>.sha256);
  its lesion-score calibration (<file>.calibration.json) is for these weights (a WARNING
  without one: the certainty is then the raw score);
- C-ECHO to every destination (over TLS where marked; a DICOMweb one: a QIDO-RS search), all at
  once, each with a timeout; but the one named `selftest`, where `lungnode selftest` itself
  listens while it runs;
- Storage Commitment: a WARNING for a destination with commit=yes whose AE title may not call
  the node (its report on an association of its own would be rejected).

The exit status is 1 when any check is an ERROR, else 0.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import ssl
import tempfile
import time
import uuid
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scp_node import config as cfg
from scp_node.config import Config, ConfigError, Destination
from scp_node.credentials import weak_token_reason

OK, WARNING, ERROR = "OK", "WARNING", "ERROR"
EXPIRY_WARNING_DAYS = 30
DEFAULT_ECHO_TIMEOUT = 5.0
_KEY = re.compile(r"config keys? \[(\w+)\] (\S+?)(?: =|:|\s|$)")
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARNING or ERROR
    check: str  # values, folders, database, disk, tls, model, echo
    subject: str  # the key, file or destination concerned
    message: str


def check_config(
    path: Path | str | None,
    environ: Mapping[str, str] | None = None,
    *,
    echo_timeout: float = DEFAULT_ECHO_TIMEOUT,
    now: float | None = None,
) -> list[Finding]:
    """Every finding for the configuration at `path` (None: built-in defaults) with `environ`'s
    LUNGNODE__ variables (default: os.environ)."""
    findings: list[Finding] = []
    config = _values(path, os.environ if environ is None else environ, findings)
    if config is None:
        return findings
    now = time.time() if now is None else now
    _folders(config, findings)
    _database(config, findings)
    _disk(config, findings)
    _web(config, findings)
    _tls(config, findings, now)
    _model(config, findings)
    _commitment_reports(config, findings)
    _echo(config, findings, echo_timeout)
    return findings


def _commitment_reports(config: Config, findings: list[Finding]) -> None:
    """Destinations with commit=yes must be allowed to call in, for reports on a new association."""
    security = config.security
    for d in config.destinations.values():
        if not d.commit or security.allow_any_calling_aet:
            continue
        if d.ae_title not in security.allowed_calling_aets:
            findings.append(
                Finding(
                    WARNING,
                    "commitment",
                    f"[destinations] {d.name}",
                    f"{d}: commit=yes, but {d.ae_title} is not in [security] "
                    "allowed_calling_aets: a Storage Commitment report it sends on an "
                    "association of its own is rejected (add it there)",
                )
            )


# ---- values ----------------------------------------------------------------------------------


def _values(
    path: Path | str | None, environ: Mapping[str, str], findings: list[Finding]
) -> Config | None:
    def bad(subject: str, exc: Exception) -> None:
        findings.append(Finding(ERROR, "values", subject, str(exc)))

    if path is None:
        raw: dict[str, dict[str, str]] = {}
        source, base = None, Path.cwd().resolve()
    else:
        source = Path(path).resolve()
        try:
            raw = cfg._read_ini(source)
        except ConfigError as exc:
            bad(str(source), exc)
            return None
        base = source.parent
    try:
        cfg._apply_environment(raw, environ)
    except ConfigError as exc:
        bad("environment", exc)
        return None

    def collect(error: ConfigError) -> None:
        key, section = _KEY.search(str(error)), re.search(r"\[(\w+)\]", str(error))
        where = f"[{key.group(1)}] {key.group(2)}" if key else None
        bad(where or (f"[{section.group(1)}]" if section else "config"), error)

    values = cfg.parse_values(raw, collect)
    # The checks across keys stop at the first; leave the key it names at its default and
    # build again, until the configuration builds (or nothing more can be learnt).
    for _ in range(50):
        try:
            config = cfg._build(values, base, source)
        except ConfigError as exc:
            match = _KEY.search(str(exc))
            section, key = (match.group(1), match.group(2)) if match else ("?", "?")
            bad(f"[{section}] {key}", exc)
            if match is None or key not in values.get(section, {}):
                return None
            del values[section][key]
            continue
        if not any(f.level == ERROR for f in findings):
            findings.append(Finding(OK, "values", str(source or "built-in defaults"), "valid"))
        return config
    return None


# ---- folders, database, disk -----------------------------------------------------------------


def _writable(folder: Path) -> str | None:
    """None when a file can be created in `folder` (or `folder` can be created), else why."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return "no existing parent folder"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    probe = existing / f".lungnode-check-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write in {existing}: {exc.strerror or exc}"
    return None


def _folders(config: Config, findings: list[Finding]) -> None:
    root = config.storage.root
    folders = {
        "[storage] root": root,
        "[storage] root/.incoming": root / ".incoming",
        "[security] audit_log": (config.security.audit_log or root / "audit.log").parent,
    }
    if config.storage.database_url.startswith("sqlite:///"):
        folders["[storage] database_url"] = Path(
            config.storage.database_url.removeprefix("sqlite:///")
        ).parent
    for subject, folder in folders.items():
        why = _writable(folder)
        if why is None:
            note = "writable" if folder.exists() else "will be created (parent writable)"
            findings.append(Finding(OK, "folders", subject, f"{folder}: {note}"))
        else:
            findings.append(Finding(ERROR, "folders", subject, f"{folder}: {why}"))


def _database(config: Config, findings: list[Finding]) -> None:
    from storage.database import Database
    from storage.redaction import redact_database_url

    url = config.storage.database_url
    shown = redact_database_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        findings.append(Finding(OK, "database", shown, "SQLite file will be created"))
        return
    try:
        db = Database.connect(url, pool_size=1)
        try:
            db.run(lambda cur: cur.execute("SELECT 1").fetchone(), write=False)
        finally:
            db.close()
    except Exception as exc:
        findings.append(Finding(ERROR, "database", shown, f"{type(exc).__name__}: {exc}"))
        return
    findings.append(Finding(OK, "database", shown, "answers"))


def _disk(config: Config, findings: list[Finding]) -> None:
    storage = config.storage
    folder = storage.root
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        findings.append(Finding(ERROR, "disk", "[storage] root", str(exc)))
        return
    mib = free // 2**20
    if mib < storage.min_free_mb:
        findings.append(
            Finding(
                ERROR,
                "disk",
                "[storage] min_free_mb",
                f"{mib} MiB free, below {storage.min_free_mb}: C-STORE answers 0xA700",
            )
        )
    else:
        findings.append(Finding(OK, "disk", "[storage] min_free_mb", f"{mib} MiB free"))
    if storage.emergency_free_mb and storage.emergency_free_mb <= storage.min_free_mb:
        findings.append(
            Finding(
                WARNING,
                "disk",
                "[storage] emergency_free_mb",
                f"{storage.emergency_free_mb} is not above min_free_mb = {storage.min_free_mb}: "
                "intake stops before retention makes space",
            )
        )
    elif storage.emergency_free_mb and mib < storage.emergency_free_mb:
        findings.append(
            Finding(
                WARNING,
                "disk",
                "[storage] emergency_free_mb",
                f"{mib} MiB free, below {storage.emergency_free_mb}: retention will remove the "
                "oldest delivered studies (see lungnode retention --dry-run)",
            )
        )


def _web(config: Config, findings: list[Finding]) -> None:
    for level, subject, message in web_warnings(config):
        findings.append(Finding(level, "web", subject, message))


def web_warnings(config: Config) -> list[tuple[str, str, str]]:
    """(WARNING, key, why) for each weakness of the console's configuration the node starts
    with all the same: plain HTTP beyond loopback, a token that is easy to guess. Also logged
    by `lungnode serve` when it starts the console."""
    web = config.web
    if not web.enabled:
        return []
    found = []
    if web.insecure_http and not web.tls and not cfg.is_loopback(web.host):
        found.append(
            (
                WARNING,
                "[web] insecure_http",
                f"the console listens on {web.host} over plain HTTP: the token, session cookies "
                "and patient data cross the network in clear unless a TLS proxy fronts it",
            )
        )
    weak = weak_token_reason(web.token)
    if weak is not None:
        found.append(
            (
                WARNING,
                "[web] token",
                f"easy to guess ({weak}); make one with: openssl rand -hex 24",
            )
        )
    weak = weak_token_reason(web.stow_token) if web.stow_token else None
    if weak is not None:
        found.append(
            (
                WARNING,
                "[web] stow_token",
                f"easy to guess ({weak}); make one with: openssl rand -hex 24",
            )
        )
    security = config.security
    senders = [web.stow_calling_aet] if web.stow_token else []
    senders += [ae for _, ae in web.stow_users]
    for ae in senders:
        if not security.allow_any_calling_aet and ae not in security.allowed_calling_aets:
            found.append(
                (
                    WARNING,
                    "[web] stow_calling_aet" if ae == web.stow_calling_aet else "[web] stow_users",
                    f"STOW-RS clients stored as {ae} are refused (403): add it to "
                    "[security] allowed_calling_aets",
                )
            )
    return found


# ---- TLS -------------------------------------------------------------------------------------


def _certificates(path: Path) -> list[dict[str, Any]]:
    """Every certificate in a PEM file, decoded by the ssl module."""
    text = path.read_text(encoding="ascii", errors="replace")
    blocks = re.findall(re.escape(_BEGIN) + r".*?" + re.escape(_END), text, re.DOTALL)
    if not blocks:
        raise ValueError("no PEM certificate in the file")
    decoded = []
    for block in blocks:
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as handle:
            handle.write(block + "\n")
        try:
            decoded.append(ssl._ssl._test_decode_cert(handle.name))  # type: ignore[attr-defined]
        finally:
            os.unlink(handle.name)
    return decoded


def _subject(cert: Mapping[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return "?"


def _tls(config: Config, findings: list[Finding], now: float) -> None:
    security = config.security
    files = {
        "[security] tls_certificate": security.tls_certificate,
        "[security] tls_ca_certificates": security.tls_ca_certificates,
    }
    for subject, path in files.items():
        if path is None:
            continue
        try:
            certs = _certificates(path)
        except (OSError, ValueError, ssl.SSLError) as exc:
            findings.append(Finding(ERROR, "tls", subject, f"{path}: not readable PEM ({exc})"))
            continue
        for cert in certs:
            name = _subject(cert)
            not_after = ssl.cert_time_to_seconds(cert["notAfter"])
            not_before = ssl.cert_time_to_seconds(cert["notBefore"])
            days = (not_after - now) / 86400.0
            when = time.strftime("%Y-%m-%d", time.gmtime(not_after))
            if not_after <= now:
                level, text = ERROR, f"certificate {name!r} expired on {when}"
            elif not_before > now:
                level, text = ERROR, f"certificate {name!r} is not valid before {cert['notBefore']}"
            elif days <= EXPIRY_WARNING_DAYS:
                level, text = WARNING, f"certificate {name!r} expires in {days:.0f} days ({when})"
            else:
                level, text = OK, f"certificate {name!r} valid until {when}"
            findings.append(Finding(level, "tls", subject, f"{path}: {text}"))
    if security.tls_certificate is not None and security.tls_private_key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(security.tls_certificate), str(security.tls_private_key))
        except (ssl.SSLError, OSError) as exc:
            findings.append(
                Finding(
                    ERROR,
                    "tls",
                    "[security] tls_private_key",
                    f"{security.tls_private_key}: does not load with the certificate ({exc})",
                )
            )
        else:
            findings.append(
                Finding(OK, "tls", "[security] tls_private_key", "matches the certificate")
            )
    note = security.unmapped_certificates_note
    if note is not None:
        findings.append(Finding(WARNING, "tls", "[security] tls_client_ae_titles", note))


# ---- model -----------------------------------------------------------------------------------


def _recorded_checksum(model: Path) -> tuple[str, Path] | None:
    """The SHA-256 recorded for `model`, and where: the `<file>.sha256` beside it (written when
    a model is installed), else the report `lungnode train` wrote."""
    sidecar = model.with_name(model.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text(encoding="utf-8", errors="replace").split()
        if words:
            return words[0].lower(), sidecar
    report = model.parent / f"{model.stem}-report" / "metrics.json"
    if report.is_file():
        try:
            sha = json.loads(report.read_text(encoding="utf-8"))["model"]["sha256"]
        except (ValueError, KeyError, TypeError):
            return None
        return str(sha).lower(), report
    return None


def _model(config: Config, findings: list[Finding]) -> None:
    from classifier.model.inference import read_model_metadata, sha256_of

    model = Path(config.classifier.model)
    subject = "[classifier] model"
    if not model.is_file():
        findings.append(Finding(ERROR, "model", subject, f"{model}: no such file"))
        return
    if not zipfile.is_zipfile(model):
        findings.append(Finding(ERROR, "model", subject, f"{model}: not a Keras 3 .keras archive"))
        return
    meta = read_model_metadata(model)
    if not meta:
        findings.append(
            Finding(WARNING, "model", subject, f"{model}: no lungnode metadata (name, version)")
        )
    actual = sha256_of(model)
    recorded = _recorded_checksum(model)
    label = f"{meta.get('name', model.stem)} {meta.get('version', '?')}"
    if recorded is None:
        findings.append(
            Finding(
                WARNING,
                "model",
                subject,
                f"{model} ({label}): sha256 {actual}, but no recorded checksum to compare "
                f"(write it to {model.name}.sha256)",
            )
        )
    elif recorded[0] != actual:
        findings.append(
            Finding(
                ERROR,
                "model",
                subject,
                f"{model} ({label}): sha256 {actual} differs from {recorded[0]} recorded in "
                f"{recorded[1]}: the file was changed or corrupted",
            )
        )
    else:
        findings.append(
            Finding(OK, "model", subject, f"{model} ({label}): sha256 {actual[:16]}... matches")
        )
    _calibration(model, actual, subject, findings)


def _calibration(model: Path, sha256: str, subject: str, findings: list[Finding]) -> None:
    """The lesion score's calibration beside the model: applied or the raw score kept by the
    protocol (OK), absent (the certainty is the raw score: WARNING), or fitted for other weights
    or unreadable (ERROR: start-up fails)."""
    from classifier.model.calibration import calibration_path, read_sidecar

    try:
        calibration, kept = read_sidecar(model, sha256)
    except ValueError as exc:
        findings.append(Finding(ERROR, "model", subject, str(exc)))
        return
    if kept is not None:
        findings.append(Finding(OK, "model", subject, f"{model}: {kept}"))
    elif calibration is None:
        findings.append(
            Finding(
                WARNING,
                "model",
                subject,
                f"{model}: no calibration beside it ({calibration_path(model).name}): a "
                "finding's certainty is the raw lesion score, reported as uncalibrated (fit one "
                "with `lungnode real-ct-protocol ... --install`)",
            )
        )
    else:
        findings.append(Finding(OK, "model", subject, f"{model}: {calibration.describe()}"))


# ---- C-ECHO ----------------------------------------------------------------------------------


def echo(config: Config, destination: Destination, timeout: float) -> str | None:
    """C-ECHO `destination` (a DICOMweb one: a QIDO-RS search); None on success, else why not."""
    if destination.url:
        from scp_node.pipeline.dicomweb_sender import probe

        return probe(config, destination, timeout)
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY

    ae = AE(ae_title=config.sender.calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    tls_args = None
    if destination.tls:
        from scp_node.dicom.tls import client_context

        try:
            tls_args = (client_context(config.security, destination), destination.host)
        except ConfigError as exc:
            return str(exc)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[NO_DELAY],
        )
    except Exception as exc:  # e.g. a TLS handshake that fails
        return f"{type(exc).__name__}: {exc}"
    try:
        if not assoc.is_established:
            if assoc.is_rejected:
                return "association rejected"
            return "no association (refused, unreachable or timed out)"
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            return "no C-ECHO response (timed out)"
        if code != 0:
            return f"C-ECHO status 0x{int(code):04X}"
        return None
    finally:
        if assoc.is_established:
            assoc.release()


def _echo(config: Config, findings: list[Finding], timeout: float) -> None:
    from scp_node.dicom import pynetdicom_adapter

    pynetdicom_adapter.install()
    destinations = []
    for d in config.destinations.values():
        if (
            d.name.casefold() == "selftest"
        ):  # scp_node.app.selftest listens there only while it runs
            findings.append(
                Finding(OK, "echo", f"[destinations] {d.name}", f"{d}: lungnode selftest's own")
            )
        else:
            destinations.append(d)
    if not destinations:
        return
    quiet = logging.getLogger("pynetdicom")  # each failure is a finding, not a log line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(destinations))) as pool:
            answers = list(pool.map(lambda d: echo(config, d, timeout), destinations))
    finally:
        quiet.setLevel(level)
    for destination, why in zip(destinations, answers, strict=True):
        subject = f"[destinations] {destination.name}"
        if why is None:
            answered = "QIDO-RS answered" if destination.url else "C-ECHO answered"
            findings.append(Finding(OK, "echo", subject, f"{destination}: {answered}"))
        else:
            findings.append(Finding(ERROR, "echo", subject, f"{destination}: {why}"))


# ---- output ----------------------------------------------------------------------------------


def failed(findings: list[Finding]) -> bool:
    return any(f.level == ERROR for f in findings)


def as_json(findings: list[Finding]) -> str:
    return json.dumps(
        {"ok": not failed(findings), "findings": [asdict(f) for f in findings]},
        indent=2,
        sort_keys=True,
    )


def as_text(findings: list[Finding], escape: Any) -> str:
    lines = [
        f"{f.level:<8} {f.check:<9} {escape(f.subject, 60)}: {escape(f.message, 400)}"
        for f in findings
    ]
    errors = sum(f.level == ERROR for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)
