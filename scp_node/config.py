"""Configuration: `config.ini` read once into frozen dataclasses.

Every key has a parser; unknown sections or keys and bad values raise `ConfigError` with one
line naming the key, the value and what was expected. `LUNGNODE__<SECTION>__<KEY>` environment
variables override keys of the file.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.model.bundled import BUNDLED_MODEL
from classifier.settings import AnalysisSettings, MtvThreshold

ENV_PREFIX = "LUNGNODE__"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.ini"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


class ConfigError(ValueError):
    """A configuration problem a person can fix; the message names key, value and expectation."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives results."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{' tls' if self.tls else ''})"


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str
    host: str
    port: int
    max_associations: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float


@dataclass(frozen=True)
class SecurityConfig:
    allowed_calling_aets: tuple[str, ...]
    allow_any_calling_aet: bool
    require_called_aet: bool
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None
    tls_require_client_certificate: bool = True
    audit_log: Path | None = None

    @property
    def tls_enabled(self) -> bool:
        """True when the SCP speaks DICOM TLS (a certificate and key are configured)."""
        return self.tls_certificate is not None


@dataclass(frozen=True)
class StorageConfig:
    root: Path
    database_url: str
    min_free_mb: int
    retention_days: int


@dataclass(frozen=True)
class PipelineConfig:
    study_quiet_seconds: float
    tick_seconds: float
    job_lease_seconds: float
    max_job_attempts: int


@dataclass(frozen=True)
class SenderConfig:
    max_attempts: int
    initial_backoff_seconds: float
    max_backoff_seconds: float
    timeout_seconds: float
    calling_ae_title: str


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    security: SecurityConfig
    storage: StorageConfig
    pipeline: PipelineConfig
    classifier: AnalysisSettings
    sender: SenderConfig
    destinations: Mapping[str, Destination]
    send_results_to: tuple[str, ...]
    source: Path | None = field(default=None, compare=False)


# --- value parsers: each takes (key, raw) and raises ConfigError naming both ---------------


def _fail(key: str, raw: str, expected: str) -> ConfigError:
    return ConfigError(f"config key {key} = {raw!r}: expected {expected}")


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(key: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _fail(key, raw, f"a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _fail(key, raw, f"a whole number from {lo} to {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(key: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _fail(key, raw, f"a number from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:
            raise _fail(key, raw, f"a number from {lo:g} to {hi:g}")
        return value

    return parse


def _bool(key: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in {"yes", "true", "on", "1"}:
        return True
    if word in {"no", "false", "off", "0"}:
        return False
    raise _fail(key, raw, "yes or no")


def _ae_title(key: str, raw: str) -> str:
    value = raw.strip()
    if not _AE_RE.match(value) or not value.strip():
        raise _fail(key, raw, "an AE title of 1 to 16 printable characters without backslash")
    return value


def _optional_ae_title(key: str, raw: str) -> str:
    return _ae_title(key, raw) if raw.strip() else ""


def _host(key: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise _fail(key, raw, "a host name or IP address")
    return value


def _text(key: str, raw: str) -> str:
    return raw.strip()


def _ae_list(key: str, raw: str) -> tuple[str, ...]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    return tuple(_ae_title(key, item) if item != "*" else "*" for item in items)


def _names(key: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _mtv(key: str, raw: str) -> MtvThreshold:
    text = raw.strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100.0
            if not 0.0 < value < 1.0:
                raise ValueError
            return MtvThreshold(value, relative=True)
        value = float(text)
        if value <= 0:
            raise ValueError
        return MtvThreshold(value, relative=False)
    except ValueError:
        raise _fail(
            key, raw, "an SUVbw above 0 (e.g. 2.5) or a percentage of SUVmax (e.g. 41%)"
        ) from None


def _range_mm(key: str, raw: str) -> tuple[float, float]:
    match = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", raw)
    try:
        lo, hi = float(match.group(1)), float(match.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise _fail(key, raw, "a range in millimetres such as 0.5-10") from None
    if not 0 <= lo <= hi:
        raise _fail(key, raw, "a range in millimetres with low <= high, such as 0.5-10")
    return lo, hi


def _destination(key: str, raw: str) -> tuple[str, str, int, bool]:
    match = re.fullmatch(r"\s*([^@]{1,16})@([^:\s]+):(\d{1,5})(\s+tls)?\s*", raw)
    if not match:
        raise _fail(
            key, raw, "AETITLE@host:port, optionally followed by tls, e.g. ORTHANC@127.0.0.1:4242"
        )
    ae = _ae_title(key, match.group(1))
    port = _int(1, 65535)(key, match.group(3))
    return ae, match.group(2), port, bool(match.group(4))


# section -> key -> parser
_SCHEMA: dict[str, dict[str, Callable[[str, str], Any]]] = {
    "node": {
        "ae_title": _ae_title,
        "host": _host,
        "port": _int(1, 65535),
        "max_associations": _int(1, 1000),
        "acse_timeout": _float(0.1, 3600),
        "dimse_timeout": _float(0.1, 3600),
        "network_timeout": _float(0.1, 3600),
    },
    "security": {
        "allowed_calling_aets": _ae_list,
        "require_called_aet": _bool,
        "tls_certificate": _text,
        "tls_private_key": _text,
        "tls_ca_certificates": _text,
        "tls_require_client_certificate": _bool,
        "audit_log": _text,
    },
    "storage": {
        "root": _text,
        "database_url": _text,
        "min_free_mb": _int(0, 10**9),
        "retention_days": _int(0, 100000),
    },
    "pipeline": {
        "study_quiet_seconds": _float(0, 86400),
        "tick_seconds": _float(0.05, 3600),
        "job_lease_seconds": _float(1, 86400),
        "max_job_attempts": _int(1, 100),
    },
    "classifier": {
        "model": _text,
        "lesion_probability_threshold": _float(0, 1),
        "mtv_threshold": _mtv,
        "ct_slice_thickness_range_mm": _range_mm,
        "ct_min_slices": _int(1, 100000),
        "pet_min_slices": _int(1, 100000),
    },
    "routing": {"send_results_to": _names},
    "sender": {
        "max_attempts": _int(1, 1000),
        "initial_backoff_seconds": _float(0, 86400),
        "max_backoff_seconds": _float(0, 86400),
        "timeout_seconds": _float(0.1, 3600),
        "calling_ae_title": _optional_ae_title,
    },
    "destinations": {},  # free keys: NAME = AETITLE@host:port
}


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=None, comment_prefixes=(";", "#")
    )
    parser.optionxform = str.lower  # type: ignore[assignment, method-assign]
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found; pass an existing file with -c") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: not a valid INI file ({first})") from None
    return parser


def _apply_environment(raw: dict[str, dict[str, str]], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        raw.setdefault(parts[0], {})[parts[1]] = value


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate a configuration file."""
    path = Path(path).resolve()
    parser = _read_ini(path)
    raw: dict[str, dict[str, str]] = {s: dict(parser.items(s)) for s in parser.sections()}
    _apply_environment(raw, os.environ if environ is None else environ)

    values: dict[str, dict[str, Any]] = {}
    for section, keys in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(
                f"config section [{section}]: unknown; expected one of "
                + ", ".join(f"[{s}]" for s in _SCHEMA)
            )
        schema = _SCHEMA[section]
        parsed: dict[str, Any] = {}
        for key, value in keys.items():
            full = f"[{section}] {key}"
            if section == "destinations":
                parsed[key] = _destination(full, value)
                continue
            if key not in schema:
                raise ConfigError(
                    f"config key {full}: unknown; expected one of {', '.join(schema)}"
                )
            parsed[key] = schema[key](full, value)
        values[section] = parsed

    for section, schema in _SCHEMA.items():
        missing = [k for k in schema if k not in values.get(section, {})]
        if missing:
            raise ConfigError(
                f"config key [{section}] {missing[0]}: missing; every key of config.ini is required"
            )
    return _build(values, path)


def _existing_file(key: str, raw: str, base: Path) -> Path | None:
    """An optional file path (relative to the config file's folder) that must exist when set."""
    if not raw:
        return None
    path = Path(raw)
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.is_file():
        raise _fail(key, raw, "an existing PEM file (path relative to the config file's folder)")
    return path


def _build(v: dict[str, dict[str, Any]], path: Path) -> Config:
    base = path.parent
    storage_root = Path(v["storage"]["root"] or "data")
    if not storage_root.is_absolute():
        storage_root = (base / storage_root).resolve()
    database_url = v["storage"]["database_url"] or f"sqlite:///{storage_root / 'index.sqlite'}"
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise _fail(
            "[storage] database_url", database_url, "sqlite:///PATH or postgresql://user@host/db"
        )
    model = Path(v["classifier"]["model"]) if v["classifier"]["model"] else BUNDLED_MODEL
    if not model.is_absolute():
        model = (base / model).resolve()

    destinations = {
        name: Destination(name, ae, host, port, tls)
        for name, (ae, host, port, tls) in v.get("destinations", {}).items()
    }
    send_to = v["routing"]["send_results_to"]
    for name in send_to:
        if name != "sender" and name not in destinations:
            raise _fail(
                "[routing] send_results_to",
                ",".join(send_to),
                f"names from [destinations] ({', '.join(destinations) or 'none defined'}) "
                "or the word sender",
            )

    node = NodeConfig(**v["node"])
    allowed = v["security"]["allowed_calling_aets"]
    tls = {
        k: _existing_file(f"[security] {k}", v["security"][k], base)
        for k in ("tls_certificate", "tls_private_key", "tls_ca_certificates")
    }
    if (tls["tls_certificate"] is None) != (tls["tls_private_key"] is None):
        raise _fail(
            "[security] tls_private_key",
            v["security"]["tls_private_key"],
            "a key together with tls_certificate (both set for TLS, both empty without)",
        )
    if any(d.tls for d in destinations.values()) and tls["tls_ca_certificates"] is None:
        raise _fail(
            "[security] tls_ca_certificates",
            "",
            "the CA certificates that sign the TLS destinations' certificates",
        )
    audit_log = Path(v["security"]["audit_log"] or "audit.log")
    security = SecurityConfig(
        allowed_calling_aets=tuple(a for a in allowed if a != "*"),
        allow_any_calling_aet="*" in allowed,
        require_called_aet=v["security"]["require_called_aet"],
        tls_require_client_certificate=v["security"]["tls_require_client_certificate"],
        audit_log=audit_log if audit_log.is_absolute() else storage_root / audit_log,
        **tls,
    )
    sender = SenderConfig(
        **{**v["sender"], "calling_ae_title": v["sender"]["calling_ae_title"] or node.ae_title}
    )
    if sender.initial_backoff_seconds > sender.max_backoff_seconds:
        raise _fail(
            "[sender] initial_backoff_seconds",
            str(sender.initial_backoff_seconds),
            f"at most [sender] max_backoff_seconds ({sender.max_backoff_seconds:g})",
        )
    return Config(
        node=node,
        security=security,
        storage=StorageConfig(
            root=storage_root,
            database_url=database_url,
            min_free_mb=v["storage"]["min_free_mb"],
            retention_days=v["storage"]["retention_days"],
        ),
        pipeline=PipelineConfig(**v["pipeline"]),
        classifier=AnalysisSettings(**{**v["classifier"], "model": model}),
        sender=sender,
        destinations=destinations,
        send_results_to=send_to,
        source=path,
    )
