"""Configuration: built-in defaults, optionally a `config.ini`, read once into frozen dataclasses.

Every key's default lives here, on the field of its dataclass (the `[classifier]` keys on
`classifier.settings.AnalysisSettings`, the science's own settings); `config.ini` documents every
key with that default written in it, and a file only needs the keys that differ (an empty file
is the built-in defaults). `LUNGNODE__<SECTION>__<KEY>` environment variables override both.
Unknown sections or keys and bad values raise `ConfigError` with one line naming the key, the
value and what was expected.

Relative paths are taken from the config file's folder, or from the current directory when no
file is given (`load_config(None)`, `lungnode ... ` without `-c`).
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.model.bundled import BUNDLED_MODEL
from classifier.results.histology_gate import HISTOLOGY_MODES
from classifier.settings import AnalysisSettings, MtvThreshold
from scp_node.credentials import USER_NAME, is_password_hash
from storage.redaction import redact_database_url
from storage.states import ResultKind

ENV_PREFIX = "LUNGNODE__"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.ini"  # the documented example, in a source checkout
SENDER = "sender"  # the word of [routing] send_results_to for "the AE that sent the study"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


class ConfigError(ValueError):
    """A configuration problem a person can fix; the message names key, value and expectation."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives results; `name` as written in [destinations]. A DICOMweb
    destination (STOW-RS) has a `url`; its `ae_title` is "" unless its line names one (to
    match [routing] send_results_to = sender), and host/port are the URL's."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    result_objects: tuple[ResultKind, ...] | None = None  # None: [routing] result_objects
    # TLS only: check that the certificate names `host` (verify_hostname), and/or accept only
    # the certificate whose SHA-256 fingerprint (64 lower-case hex digits) is this (sha256=)
    tls_verify_hostname: bool = False
    tls_pin_sha256: str | None = None
    # commit=yes: results count as delivered only once the destination commits them by Storage
    # Commitment (scp_node.dicom.storage_commitment), not when it answers the C-STORE
    commit: bool = False
    # DICOMweb: the service's base URL (STOW-RS posts to <url>/studies) and its credentials,
    # a bearer token or basic user and password (never shown in messages)
    url: str | None = None
    bearer_token: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def protocol(self) -> str:
        """How results reach it: "DICOMweb" (STOW-RS) or "DIMSE" (C-STORE)."""
        return "DICOMweb" if self.url else "DIMSE"

    def __str__(self) -> str:
        if self.url:
            return f"{self.name} ({self.url})"
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{' tls' if self.tls else ''})"


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "LUNGNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 16
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu_length: int = 4 * 1024 * 1024
    max_pending_per_address: int = 4
    max_associations_per_ae: int = 8
    receiver_processes: int = 0  # 0: auto, see receiver_process_count

    def receiver_process_count(self, cores: int | None = None) -> int:
        """The receiver processes to run: receiver_processes, or for auto (0) one per core
        this process may use, at least 2, at most max_associations."""
        if self.receiver_processes:
            return self.receiver_processes
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
            cores = cores or os.cpu_count() or 1
        return max(1, min(max(cores, 2), self.max_associations))


@dataclass(frozen=True)
class SecurityConfig:
    """[security]; `allowed_calling_aets` without the word *, which sets allow_any_calling_aet.

    `audit_log` None means audit.log in [storage] root (load_config fills it in)."""

    allowed_calling_aets: tuple[str, ...] = ("ORTHANC", "STORESCU")
    allow_any_calling_aet: bool = False
    require_called_aet: bool = True
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None
    tls_require_client_certificate: bool = True
    # (normalised certificate subject, AE titles it may present); see normalise_subject
    tls_client_ae_titles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    audit_log: Path | None = None
    max_new_studies_per_hour: int = 1000  # per calling AE; 0: no limit

    def ae_titles_of_subject(self, subject: str) -> tuple[str, ...] | None:
        """The AE titles a client certificate with `subject` may present, None when
        tls_client_ae_titles is empty (any trusted certificate, any allowed AE title); a
        subject not listed gets ()."""
        if not self.tls_client_ae_titles:
            return None
        wanted = normalise_subject(subject)
        return next((aes for subj, aes in self.tls_client_ae_titles if subj == wanted), ())

    @property
    def unmapped_certificates_note(self) -> str | None:
        """Why TLS without [security] tls_client_ae_titles is weaker, None when not the case."""
        if not self.tls_enabled or self.tls_client_ae_titles:
            return None
        return (
            "[security] tls_client_ae_titles is empty: any client certificate that "
            "tls_ca_certificates trusts may present any AE title of allowed_calling_aets; map "
            "each certificate subject to the AE titles it may present"
        )

    @property
    def tls_enabled(self) -> bool:
        """True when the SCP speaks DICOM TLS (a certificate and key are configured)."""
        return self.tls_certificate is not None


@dataclass(frozen=True)
class StorageConfig:
    """[storage]; an empty `database_url` means sqlite:///<root>/index.sqlite (load_config
    fills it in, and makes `root` absolute)."""

    root: Path = Path("data")
    database_url: str = ""
    min_free_mb: int = 512
    max_instance_mb: int = 2048  # 0: no limit
    retention_days: int = 30
    database_pool_size: int = 4  # PostgreSQL connections per process
    emergency_free_mb: int = 0  # 0: off; see scp_node.pipeline.retention
    retention_without_destination: str = "keep"  # keep | remove
    folder_fsync: str = "auto"  # storage.instance_store.FOLDER_FSYNC_MODES


@dataclass(frozen=True)
class PipelineConfig:
    study_quiet_seconds: float = 10.0
    release_quiet_seconds: float = 2.0
    tick_seconds: float = 1.0
    job_lease_seconds: float = 600.0
    max_job_attempts: int = 3
    analysis_processes: int = 1
    analysis_nice: int = (
        10  # 0: the analysis runs at the node's priority (scp_node.pipeline.priority)
    )
    # 1: never paused for receiving (scp_node.pipeline.analysis_yield)
    analysis_share_while_receiving: float = 0.1


@dataclass(frozen=True)
class SenderConfig:
    """[sender]; an empty `calling_ae_title` means [node] ae_title (load_config fills it in)."""

    max_attempts: int = 8
    initial_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 30.0
    calling_ae_title: str = ""
    # Storage Commitment (destinations with commit=yes): how long a result waits for the
    # destination's report before it is sent and asked again; how long the sender keeps its
    # association open after the N-ACTION for a report on that association
    commit_timeout_seconds: float = 600.0
    commit_wait_seconds: float = 2.0


@dataclass(frozen=True)
class ResultsConfig:
    """[results]: what the result objects say."""

    # "auto": histology only from a model whose metadata records real-patient accuracy above
    # the majority-class baseline (classifier.results.histology_gate); "on"; "off".
    histology: str = "auto"
    histology_min_probability: float = 0.5


@dataclass(frozen=True)
class WebConfig:
    """[web]: the console, /metrics, /livez and /readyz (scp_node.web). An empty `token` keeps
    the web server off: every page but /livez needs the token, so there is none without one."""

    host: str = "127.0.0.1"
    port: int = 8104
    token: str = ""
    tls: bool = False  # HTTPS with [security] tls_certificate and tls_private_key
    refresh_seconds: int = 10  # how often the Studies and Deliveries pages reload themselves
    # yes: plain HTTP on a host other than loopback is allowed (with a WARNING); else refused
    insecure_http: bool = False
    # named console users: (name, scrypt hash of the password) (scp_node.credentials)
    users: tuple[tuple[str, str], ...] = ()
    # STOW-RS intake (scp_node.web.stow): its own Bearer token, stored as stow_calling_aet;
    # [web] users allowed to send by HTTP Basic, each with the calling AE it is stored as
    stow_token: str = ""
    stow_calling_aet: str = "DICOMWEB"
    stow_users: tuple[tuple[str, str], ...] = ()
    stow_max_request_mb: int = 8192  # one request's body; parts are bounded by max_instance_mb
    stow_max_parts: int = 10000
    stow_timeout_seconds: float = 600.0  # a request still arriving after this is cut

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @property
    def stow_enabled(self) -> bool:
        """True when some credential may send by STOW-RS (a stow_token or stow_users)."""
        return bool(self.stow_token or self.stow_users)


@dataclass(frozen=True)
class Config:
    """The whole configuration. `Config()` holds the built-in defaults as config.ini documents
    them (relative paths unresolved); `load_config` returns them resolved."""

    node: NodeConfig = field(default_factory=NodeConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    classifier: AnalysisSettings = field(default_factory=AnalysisSettings)
    sender: SenderConfig = field(default_factory=SenderConfig)
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    send_results_to: tuple[str, ...] = (SENDER,)
    # what a destination receives: by default every kind (SR, SEG, GSPS, key images, KOS)
    result_objects: tuple[ResultKind, ...] = tuple(ResultKind)
    results: ResultsConfig = field(default_factory=lambda: ResultsConfig())
    web: WebConfig = field(default_factory=WebConfig)
    source: Path | None = field(default=None, compare=False)

    def destination(self, name: str) -> Destination | None:
        """The destination called `name`, compared case-insensitively (as [destinations] and
        [routing] send_results_to compare names)."""
        wanted = name.casefold()
        return next((d for d in self.destinations.values() if d.name.casefold() == wanted), None)

    def objects_for(self, name: str) -> tuple[ResultKind, ...]:
        """The result objects destination `name` receives: its own result_objects= when its
        [destinations] line has one, else [routing] result_objects."""
        destination = self.destination(name)
        if destination is not None and destination.result_objects is not None:
            return destination.result_objects
        return self.result_objects


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


def _int_or_auto(lo: int, hi: int) -> Callable[[str, str], int]:
    """A whole number from lo to hi, or the word auto (0: the code chooses)."""
    number = _int(lo, hi)

    def parse(key: str, raw: str) -> int:
        if raw.strip().lower() == "auto":
            return 0
        try:
            return number(key, raw)
        except ConfigError:
            raise _fail(key, raw, f"auto or a whole number from {lo} to {hi}") from None

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


def _share(key: str, raw: str) -> float:
    """A share of the time from 0.01 to 1 (0 would starve the analysis)."""
    expected = (
        "a share from 0.01 to 1 (0 would stop the analysis for as long as any association "
        "stays open; 1 never pauses it)"
    )
    try:
        value = float(raw.strip())
    except ValueError:
        raise _fail(key, raw, expected) from None
    if not 0.01 <= value <= 1:
        raise _fail(key, raw, expected)
    return value


def _bool(key: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in {"yes", "true", "on", "1"}:
        return True
    if word in {"no", "false", "off", "0"}:
        return False
    raise _fail(key, raw, "yes or no")


def _choice(*words: str) -> Callable[[str, str], str]:
    def parse(key: str, raw: str) -> str:
        word = raw.strip().lower()
        if word not in words:
            raise _fail(key, raw, " or ".join(words))
        return word

    return parse


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


_SHORT_ATTRIBUTE_NAMES = {
    "COMMONNAME": "CN",
    "ORGANIZATIONNAME": "O",
    "ORGANIZATIONALUNITNAME": "OU",
    "COUNTRYNAME": "C",
    "STATEORPROVINCENAME": "ST",
    "LOCALITYNAME": "L",
}


def normalise_subject(subject: str) -> str:
    """A certificate subject written `CN=ct1.example,O=Hospital` as the node compares it:
    attribute names upper-case and short (CN, O, OU, C, ST, L), pairs sorted, values as
    written (case-sensitive); commas inside values are not supported."""
    pairs: list[str] = []
    for part in subject.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(part)
        key = name.strip().upper()
        pairs.append(f"{_SHORT_ATTRIBUTE_NAMES.get(key, key)}={value.strip()}")
    if not pairs:
        raise ValueError(subject)
    return ",".join(sorted(pairs))


def _subject_ae_titles(key: str, raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    entries: list[tuple[str, tuple[str, ...]]] = []
    for entry in re.split(r"[;\n]", raw):
        if not entry.strip():
            continue
        subject, sep, titles = entry.rpartition("=>")
        try:
            if not sep:
                raise ValueError(entry)
            normalised = normalise_subject(subject)
        except ValueError:
            raise _fail(
                key,
                raw,
                "entries SUBJECT => AE1, AE2 separated by ; or new lines, e.g. "
                "CN=ct1.hospital.example,O=Hospital => CT1",
            ) from None
        aes = tuple(_ae_title(key, t) for t in titles.split(",") if t.strip())
        if not aes:
            raise _fail(key, raw, f"at least one AE title after => for {subject.strip()}")
        entries.append((normalised, aes))
    return tuple(entries)


def _users(key: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`name:hash` pairs separated by commas or white space; each hash from `lungnode
    hash-password` (the password itself is never written anywhere)."""
    users: dict[str, str] = {}
    for item in raw.replace(",", " ").split():
        name, _, hashed = item.partition(":")
        if not USER_NAME.fullmatch(name) or not is_password_hash(hashed):
            shown = f"{name}:{'***' if hashed else ''}"
            raise _fail(
                key,
                shown,
                "name:hash pairs, a name of letters, digits and ._@- and a hash printed by "
                "`lungnode hash-password`",
            )
        if name.casefold() in {n.casefold() for n in users}:
            raise _fail(key, name, "each user name once")
        users[name] = hashed
    return tuple(users.items())


def _user_ae_titles(key: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`name:AE` pairs separated by commas: a [web] user and the calling AE title its STOW-RS
    requests are stored as."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, _, ae = item.partition(":")
        name = name.strip()
        if not USER_NAME.fullmatch(name) or not ae.strip():
            raise _fail(key, item.strip(), "name:AE pairs, e.g. orthanc:ORTHANC_WEB")
        pairs[name] = _ae_title(key, ae)
    return tuple(pairs.items())


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
        if match is None:
            raise ValueError
        lo, hi = float(match.group(1)), float(match.group(2))
    except ValueError:
        raise _fail(key, raw, "a range in millimetres such as 0.5-10") from None
    if not 0 <= lo <= hi:
        raise _fail(key, raw, "a range in millimetres with low <= high, such as 0.5-10")
    return lo, hi


def _result_objects(key: str, raw: str) -> tuple[ResultKind, ...]:
    """The result kinds a comma-separated list of words names, in the order they are built."""
    words = [item.strip() for item in raw.split(",") if item.strip()]
    allowed = f"a comma-separated list from {', '.join(k.word for k in ResultKind)} (at least one)"
    if not words:
        raise _fail(key, raw, allowed)
    kinds = set()
    for word in words:
        try:
            kinds.add(ResultKind.from_word(word))
        except ValueError:
            raise _fail(key, raw, f"{allowed}; {word!r} is not one") from None
    if ResultKind.SR not in kinds:
        # The SR carries what every other object refers to; none makes sense without it.
        raise _fail(key, raw, "a list that includes sr (the other objects refer to it)")
    return tuple(kind for kind in ResultKind if kind in kinds)


def _destination(key: str, raw: str) -> Destination:
    """NAME = AETITLE@host:port [tls [verify_hostname] [sha256=PIN]] [result_objects=LIST]
    [commit=yes|no]; the Destination's name is filled in by the caller."""
    expected = (
        "AETITLE@host:port, optionally followed by tls (then verify_hostname and/or "
        "sha256=<certificate fingerprint>), by result_objects=LIST and by commit=yes|no, e.g. "
        "ORTHANC@127.0.0.1:4242 result_objects=sr,gsps,ko or PACS@pacs.example:2762 tls "
        "verify_hostname"
    )
    if re.match(r"\s*https?://", raw, re.IGNORECASE):
        return _dicomweb_destination(key, raw)
    match = re.fullmatch(
        r"\s*([^@]{1,16})@([^:\s]+):(\d{1,5})((?:\s+[^\s=]+(?:\s*=\s*[\w:, ]+?)?)*)\s*", raw
    )
    if not match:
        raise _fail(key, raw, expected)
    ae = _ae_title(key, match.group(1))
    port = _int(1, 65535)(key, match.group(3))
    options = re.findall(r"([^\s=]+)(?:\s*=\s*([\w:]+(?:\s*,\s*[\w:]+)*))?", match.group(4))
    tls = verify = False
    pin: str | None = None
    objects: tuple[ResultKind, ...] | None = None
    commit: bool | None = None
    for option, value in options:
        if option == "tls" and not value and not tls:
            tls = True
        elif option == "verify_hostname" and not value and tls:
            verify = True
        elif option == "sha256" and value and tls:
            digits = value.replace(":", "").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digits):
                raise _fail(key, raw, "sha256= followed by 64 hex digits (colons allowed)")
            pin = digits
        elif option == "result_objects" and value and objects is None:
            objects = _result_objects(key, value)
        elif option == "commit" and value and commit is None:
            commit = _bool(key, value)
        else:
            raise _fail(key, raw, expected)
    return Destination("", ae, match.group(2), port, tls, objects, verify, pin, bool(commit))


_SECRET_OPTION = re.compile(r"((?:bearer|basic)=)\S+", re.IGNORECASE)


def _dicomweb_destination(key: str, raw: str) -> Destination:
    """NAME = http(s)://host[:port]/path [bearer=TOKEN | basic=USER:PASSWORD]
    [verify_hostname] [sha256=PIN] [ae_title=AE] [result_objects=LIST]; the credentials are
    masked in every message."""
    shown = _SECRET_OPTION.sub(r"\1***", raw)
    expected = (
        "a DICOMweb base URL http(s)://host[:port]/path, optionally followed by bearer=TOKEN or "
        "basic=USER:PASSWORD, verify_hostname and sha256=<certificate fingerprint> (https), "
        "ae_title=AE and result_objects=LIST, e.g. https://pacs.example/dicom-web bearer=s3cret"
    )
    url, *options = raw.split()
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise _fail(key, shown, expected) from None
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise _fail(key, shown, expected)
    https = parts.scheme.lower() == "https"
    values: dict[str, Any] = {}
    for option in options:
        name, sep, value = option.partition("=")
        name = name.lower()
        if name in values or (bool(sep) != (name != "verify_hostname")):
            raise _fail(key, shown, expected)
        if name == "bearer" and value and "basic" not in values:
            values[name] = value
        elif name == "basic" and ":" in value and "bearer" not in values:
            user, _, password = value.partition(":")
            values[name] = (user, password)
        elif name == "verify_hostname" and https:
            values[name] = True
        elif name == "sha256" and https:
            digits = value.replace(":", "").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digits):
                raise _fail(key, shown, "sha256= followed by 64 hex digits (colons allowed)")
            values[name] = digits
        elif name == "ae_title":
            values[name] = _ae_title(key, value)
        elif name == "result_objects":
            values[name] = _result_objects(key, value)
        else:
            raise _fail(key, shown, expected)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not https and not loopback and ("bearer" in values or "basic" in values):
        raise _fail(
            key, shown, "https:// for a destination with credentials (plain http only on loopback)"
        )
    return Destination(
        "",
        values.get("ae_title", ""),
        parts.hostname,
        port,
        result_objects=values.get("result_objects"),
        tls_verify_hostname=values.get("verify_hostname", False),
        tls_pin_sha256=values.get("sha256"),
        url=url.rstrip("/"),
        bearer_token=values.get("bearer"),
        basic_auth=values.get("basic"),
    )


# section -> key -> parser. The defaults are the dataclasses' (see _build); config.ini
# documents each key with its default, and tests/unit/test_config.py keeps the three in step.
_SCHEMA: dict[str, dict[str, Callable[[str, str], Any]]] = {
    "node": {
        "ae_title": _ae_title,
        "host": _host,
        "port": _int(1, 65535),
        "max_associations": _int(1, 1000),
        "acse_timeout": _float(0.1, 3600),
        "dimse_timeout": _float(0.1, 3600),
        "network_timeout": _float(0.1, 3600),
        "max_pdu_length": _int(16 * 1024, 2**31 - 1),
        "max_pending_per_address": _int(1, 1000),
        "max_associations_per_ae": _int(1, 1000),
        "receiver_processes": _int_or_auto(1, 64),
    },
    "security": {
        "allowed_calling_aets": _ae_list,
        "require_called_aet": _bool,
        "tls_certificate": _text,
        "tls_private_key": _text,
        "tls_ca_certificates": _text,
        "tls_require_client_certificate": _bool,
        "tls_client_ae_titles": _subject_ae_titles,
        "audit_log": _text,
        "max_new_studies_per_hour": _int(0, 10**6),
    },
    "storage": {
        "root": _text,
        "database_url": _text,
        "min_free_mb": _int(0, 10**9),
        "max_instance_mb": _int(0, 10**6),
        "retention_days": _int(0, 100000),
        "database_pool_size": _int(1, 100),
        "emergency_free_mb": _int(0, 10**9),
        "retention_without_destination": _choice("keep", "remove"),
        "folder_fsync": _choice("auto", "always"),
    },
    "pipeline": {
        "study_quiet_seconds": _float(0, 86400),
        "release_quiet_seconds": _float(0, 86400),
        "tick_seconds": _float(0.05, 3600),
        "job_lease_seconds": _float(1, 86400),
        "max_job_attempts": _int(1, 100),
        "analysis_processes": _int(1, 64),
        "analysis_nice": _int(0, 19),
        "analysis_share_while_receiving": _share,
    },
    "classifier": {
        "model": _text,
        "lesion_probability_threshold": _float(0, 1),
        "max_findings_per_study": _int(0, 1000),
        "small_nodules": _bool,
        "mtv_threshold": _mtv,
        "ct_slice_thickness_range_mm": _range_mm,
        "ct_min_slices": _int(1, 100000),
        "pet_min_slices": _int(1, 100000),
    },
    "routing": {"send_results_to": _names, "result_objects": _result_objects},
    "results": {
        "histology": _choice(*HISTOLOGY_MODES),
        "histology_min_probability": _float(0, 1),
    },
    "sender": {
        "max_attempts": _int(1, 1000),
        "initial_backoff_seconds": _float(0, 86400),
        "max_backoff_seconds": _float(0, 86400),
        "timeout_seconds": _float(0.1, 3600),
        "calling_ae_title": _optional_ae_title,
        "commit_timeout_seconds": _float(1, 7 * 86400),
        "commit_wait_seconds": _float(0, 60),
    },
    # free keys: NAME = AETITLE@host:port [tls] [result_objects=LIST] [commit=yes]
    "destinations": {},
    "web": {
        "host": _host,
        "port": _int(1, 65535),
        "token": _text,
        "tls": _bool,
        "refresh_seconds": _int(0, 3600),
        "insecure_http": _bool,
        "users": _users,
        "stow_token": _text,
        "stow_calling_aet": _ae_title,
        "stow_users": _user_ae_titles,
        "stow_max_request_mb": _int(1, 10**7),
        "stow_max_parts": _int(1, 10**6),
        "stow_timeout_seconds": _float(1, 86400),
    },
}


def schema_keys() -> dict[str, tuple[str, ...]]:
    """Every section and its keys, in config.ini order ([destinations] has free keys)."""
    return {section: tuple(keys) for section, keys in _SCHEMA.items()}


def _read_ini(path: Path) -> dict[str, dict[str, str]]:
    """The file's sections and keys: key names lower-cased, except in [destinations], whose
    names keep their spelling (they are compared case-insensitively)."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=None, comment_prefixes=(";", "#")
    )
    # keep names as written; typeshed declares optionxform a method, and assigning a function
    # to it is configparser's documented way of changing it
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path}: not found; pass an existing file with -c "
            "(or leave -c out for the built-in defaults)"
        ) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: not a valid INI file ({first})") from None
    raw: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        keys: dict[str, str] = {}
        for key, value in parser.items(section):
            name = key if section == "destinations" else key.lower()
            if _find(keys, name) is not None:
                raise ConfigError(
                    f"config key [{section}] {key}: given twice (names are case-insensitive)"
                )
            keys[name] = value
        raw[section] = keys
    return raw


def _find(keys: Mapping[str, str], name: str) -> str | None:
    """The key of `keys` equal to `name` but for case, if any."""
    wanted = name.casefold()
    return next((k for k in keys if k.casefold() == wanted), None)


def _apply_environment(raw: dict[str, dict[str, str]], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        section, key = parts
        keys = raw.setdefault(section, {})
        keys[_find(keys, key) or key] = value  # a destination keeps the file's spelling


def _raise(error: ConfigError) -> None:
    raise error


def parse_values(
    raw: Mapping[str, Mapping[str, str]], report: Callable[[ConfigError], None] = _raise
) -> dict[str, dict[str, Any]]:
    """Each section's raw strings parsed by the schema. An unknown section or key or a bad value
    goes to `report`, which raises by default (start-up stops at the first); `lungnode
    check-config` passes one that collects, so that it can name every problem at once."""
    values: dict[str, dict[str, Any]] = {}
    for section, keys in raw.items():
        if section not in _SCHEMA:
            report(
                ConfigError(
                    f"config section [{section}]: unknown; expected one of "
                    + ", ".join(f"[{s}]" for s in _SCHEMA)
                )
            )
            continue
        schema = _SCHEMA[section]
        parsed: dict[str, Any] = {}
        for key, value in keys.items():
            full = f"[{section}] {key}"
            try:
                if section == "destinations":
                    parsed[key] = _destination(full, value)
                elif key not in schema:
                    raise ConfigError(
                        f"config key {full}: unknown; expected one of {', '.join(schema)}"
                    )
                else:
                    parsed[key] = schema[key](full, value)
            except ConfigError as error:
                report(error)
        values[section] = parsed
    return values


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The built-in defaults, overridden by the file at `path` (when given), then by
    LUNGNODE__<SECTION>__<KEY> variables of `environ` (default: os.environ); validated.

    Relative paths are taken from the file's folder, or from the current directory without
    a file.
    """
    if path is None:
        raw: dict[str, dict[str, str]] = {}
        source, base = None, Path.cwd().resolve()
    else:
        source = Path(path).resolve()
        raw = _read_ini(source)
        base = source.parent
    _apply_environment(raw, os.environ if environ is None else environ)

    values = parse_values(raw)
    return _build(values, base, source)


def _existing_file(key: str, raw: str, base: Path) -> Path | None:
    """An optional file path (relative to `base`) that must exist when set."""
    if not raw:
        return None
    path = Path(raw)
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.is_file():
        raise _fail(
            key,
            raw,
            "an existing PEM file (a relative path is taken from the config file's folder, "
            "or from the current directory without -c)",
        )
    return path


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _build(v: dict[str, dict[str, Any]], base: Path, source: Path | None) -> Config:
    """The Config of the parsed keys `v` (section -> key -> value), defaults for the rest."""
    defaults = Config()

    given = v.get("storage", {})
    storage_root = _absolute(Path(given.get("root") or defaults.storage.root), base)
    database_url = given.get("database_url") or f"sqlite:///{storage_root / 'index.sqlite'}"
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise _fail(
            "[storage] database_url",
            redact_database_url(database_url),  # a mistyped URL may still hold the password
            "sqlite:///PATH or postgresql://user@host/db",
        )
    storage = StorageConfig(
        **{**_fields(defaults.storage), **given, "root": storage_root, "database_url": database_url}
    )

    given = v.get("classifier", {})
    model = _absolute(Path(given["model"]), base) if given.get("model") else BUNDLED_MODEL
    classifier = AnalysisSettings(**{**_fields(defaults.classifier), **given, "model": model})

    destinations = {
        name: dataclasses.replace(destination, name=name)
        for name, destination in v.get("destinations", {}).items()
    }
    by_name = Config(destinations=destinations)
    send_to_given = v.get("routing", {}).get("send_results_to", defaults.send_results_to)
    send_to: list[str] = []
    for name in send_to_given:
        found = None if name == SENDER else by_name.destination(name)
        if found is not None:
            name = found.name  # as written in [destinations]
        elif name != SENDER:
            raise _fail(
                "[routing] send_results_to",
                ",".join(send_to_given),
                f"names from [destinations] ({', '.join(destinations) or 'none defined'}) "
                f"or the word {SENDER}",
            )
        send_to.append(name)

    node = NodeConfig(**{**_fields(defaults.node), **v.get("node", {})})

    given = v.get("security", {})
    tls = {
        k: _existing_file(f"[security] {k}", given.get(k, ""), base)
        for k in ("tls_certificate", "tls_private_key", "tls_ca_certificates")
    }
    if (tls["tls_certificate"] is None) != (tls["tls_private_key"] is None):
        raise _fail(
            "[security] tls_private_key",
            given.get("tls_private_key", ""),
            "a key together with tls_certificate (both set for TLS, both empty without)",
        )
    if any(d.tls for d in destinations.values()) and tls["tls_ca_certificates"] is None:
        raise _fail(
            "[security] tls_ca_certificates",
            "",
            "the CA certificates that sign the TLS destinations' certificates",
        )
    allowed = given.get("allowed_calling_aets", defaults.security.allowed_calling_aets)
    audit_log = Path(given.get("audit_log") or "audit.log")
    security = SecurityConfig(
        allowed_calling_aets=tuple(a for a in allowed if a != "*"),
        allow_any_calling_aet="*" in allowed,
        require_called_aet=given.get("require_called_aet", defaults.security.require_called_aet),
        tls_require_client_certificate=given.get(
            "tls_require_client_certificate", defaults.security.tls_require_client_certificate
        ),
        tls_client_ae_titles=given.get(
            "tls_client_ae_titles", defaults.security.tls_client_ae_titles
        ),
        max_new_studies_per_hour=given.get(
            "max_new_studies_per_hour", defaults.security.max_new_studies_per_hour
        ),
        audit_log=audit_log if audit_log.is_absolute() else storage_root / audit_log,
        **tls,
    )

    sender = SenderConfig(**{**_fields(defaults.sender), **v.get("sender", {})})
    if not sender.calling_ae_title:
        sender = SenderConfig(**{**_fields(sender), "calling_ae_title": node.ae_title})
    if sender.initial_backoff_seconds > sender.max_backoff_seconds:
        raise _fail(
            "[sender] initial_backoff_seconds",
            str(sender.initial_backoff_seconds),
            f"at most [sender] max_backoff_seconds ({sender.max_backoff_seconds:g})",
        )
    return Config(
        node=node,
        security=security,
        storage=storage,
        pipeline=PipelineConfig(**{**_fields(defaults.pipeline), **v.get("pipeline", {})}),
        classifier=classifier,
        sender=sender,
        destinations=destinations,
        send_results_to=tuple(send_to),
        result_objects=v.get("routing", {}).get("result_objects", defaults.result_objects),
        results=ResultsConfig(**{**_fields(defaults.results), **v.get("results", {})}),
        web=_web(v.get("web", {}), security),
        source=source,
    )


def _web(given: dict[str, Any], security: SecurityConfig) -> WebConfig:
    web = WebConfig(**{**_fields(WebConfig()), **given})
    if web.token and len(web.token) < 16:
        raise _fail("[web] token", "***", "at least 16 characters (e.g. openssl rand -hex 24)")
    if web.stow_token and len(web.stow_token) < 16:
        raise _fail("[web] stow_token", "***", "at least 16 characters (e.g. openssl rand -hex 24)")
    if web.stow_enabled and not web.enabled:
        raise _fail(
            "[web] stow_token",
            "***" if web.stow_token else "",
            "[web] token set as well: the web server that takes STOW-RS runs only with it",
        )
    if web.stow_token and web.stow_token == web.token:
        raise _fail("[web] stow_token", "***", "a token other than [web] token")
    known = {name.casefold() for name, _ in web.users}
    for name, _ae in web.stow_users:
        if name.casefold() not in known:
            raise _fail("[web] stow_users", name, "a user name of [web] users")
    if web.tls and not security.tls_enabled:
        raise _fail(
            "[web] tls",
            "yes",
            "[security] tls_certificate and tls_private_key set (HTTPS uses them)",
        )
    if web.enabled and not web.tls and not web.insecure_http and not is_loopback(web.host):
        raise _fail(
            "[web] host",
            web.host,
            "a loopback address (127.0.0.1, ::1, localhost) without [web] tls = yes: the token "
            "and patient data would cross the network in clear; set [web] tls = yes, or "
            "[web] insecure_http = yes where a TLS proxy on the same machine fronts the port",
        )
    return web


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine reaches."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fields(instance: Any) -> dict[str, Any]:
    """A dataclass instance's fields, shallow (unlike dataclasses.asdict, which copies deep)."""
    return {name: getattr(instance, name) for name in instance.__dataclass_fields__}
