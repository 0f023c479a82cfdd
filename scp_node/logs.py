"""Logging: one line per event on stdout, UTC timestamps, no patient identifiers at INFO.

Every record, the node's own and every library's (pynetdicom above all, whose records carry
AE titles, UIDs and PDU contents chosen by peers), goes through one formatter,
`EscapingFormatter`, so that no value can forge a log line or drive a terminal:

- control characters are escaped (`escape_text`): `\\n`, `\\r`, `\\t`, other C0 and C1
  characters, DEL and U+FEFF as `\\xHH`/`\\uHHHH`, Unicode line and paragraph separators
  (U+2028, U+2029) and bidirectional overrides as `\\uHHHH`, and the backslash itself as `\\\\`
  (so an escaped line reads back unambiguously);
- every value is bounded: each %-argument to MAX_VALUE_CHARS characters before formatting, the
  message to MAX_MESSAGE_CHARS and a traceback to MAX_TRACEBACK_CHARS after escaping; a clipped
  text ends with `...[N chars]`, N its full length;
- a traceback (`exc_info`, e.g. pynetdicom's for a PDU it cannot decode) is appended to its
  record's line as ` | Traceback ...` with its newlines escaped: one record, one line; and
  pynetdicom's two or three records about one failure (validation error, "Unable to decode the
  received PDU data", the exception) are joined into one (`_OneLinePerPynetdicomError`);
- database URLs and `password=` settings in any message are redacted
  (`storage.redaction.redact_secrets`).

The same `escape_text` is used wherever the CLI prints values that come from datasets or peers
(`lungnode status`). Uncaught exceptions, in the main thread or any other, are logged through
the same formatter instead of Python's raw traceback on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from storage.redaction import redact_secrets

MAX_VALUE_CHARS = 512  # one %-argument of a log call, before escaping
MAX_MESSAGE_CHARS = 4096  # the escaped message of one record
MAX_TRACEBACK_CHARS = 8192  # the escaped traceback appended to its record's line

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_of(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0, DEL, C1, the backslash, line/paragraph separators, bidi marks/embeddings/overrides/isolates
# and the BOM: everything that could end a line, move a terminal's cursor, recolour it, or make
# text read in another order than it is stored.
_ESCAPED_CODES = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    ord("\\"),
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0xFEFF,
]
_TABLE: dict[int, str] = {code: _escape_of(code) for code in _ESCAPED_CODES}


def escape_text(value: object, limit: int | None = MAX_VALUE_CHARS) -> str:
    """`value` as text safe for one log line or one terminal line: every control character
    escaped (see the module docstring) and at most `limit` characters in all (None: no bound).
    A clipped text ends with `...[N chars]`, N the length of the whole original text; no escape
    sequence is ever cut in two."""
    text = value if isinstance(value, str) else str(value)
    if limit is None:
        return text.translate(_TABLE)
    escaped = text[:limit].translate(_TABLE)  # work bounded by `limit`, whatever the input
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    marker = f"...[{len(text)} chars]"
    budget = max(limit - len(marker), 0)
    kept: list[str] = []
    for char in text:
        piece = _TABLE.get(ord(char), char)
        if len(piece) > budget:
            break
        kept.append(piece)
        budget -= len(piece)
    return "".join(kept) + marker


def clip_text(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text` unescaped but at most `limit` characters (ending in `...[N chars]` when clipped):
    for values that are stored and escaped later, wherever they are printed."""
    if len(text) <= limit:
        return text
    marker = f"...[{len(text)} chars]"
    return text[: max(limit - len(marker), 0)] + marker


def _bounded(arg: object) -> object:
    """A %-argument with at most MAX_VALUE_CHARS characters of text; numbers stay numbers."""
    if arg is None or isinstance(arg, (int, float)):
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    return arg if len(text) <= MAX_VALUE_CHARS else clip_text(text)


def _message(record: logging.LogRecord) -> str:
    """The record's message with its arguments bounded (not yet escaped)."""
    message = str(record.msg)
    args = record.args
    if not args:
        return message
    bounded: tuple[object, ...] | dict[str, object]
    if isinstance(args, Mapping):
        bounded = {key: _bounded(value) for key, value in args.items()}
    else:
        bounded = tuple(_bounded(arg) for arg in args)
    try:
        return message % bounded
    except (TypeError, ValueError, KeyError):  # a wrong format string: keep everything visible
        return f"{message} (log arguments: {bounded!r})"


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class EscapingFormatter(_UTCFormatter):
    """`<UTC time> <LEVEL> <logger>: <message>[ | <traceback>]`, always exactly one line, with
    every value escaped, bounded and redacted (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # the record itself stays as logged
        safe.msg = escape_text(redact_secrets(_message(record)), MAX_MESSAGE_CHARS)
        safe.args = None
        safe.exc_info = None
        safe.exc_text = None
        safe.stack_info = None
        line = super().format(safe)
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        elif record.exc_text:
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for text in details:
            line += " | " + escape_text(redact_secrets(text.strip()), MAX_TRACEBACK_CHARS)
        return line


class _OneLineNetworkErrors(logging.Filter):
    """pynetdicom logs a traceback for every dropped or timed-out connection; for network
    errors (OSError) that is an expected event, so keep its one-line message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom") and record.exc_info:
            error = record.exc_info[1]
            if isinstance(error, OSError):
                record.exc_info = None
                record.exc_text = None
        return True


# pynetdicom ERROR lines that it always follows, in the same thread, with LOGGER.exception(exc)
# (pynetdicom/dul.py, acse.py), or, for pynetdicom.utils' validation errors, with raising a
# ValueError of the same text that the caller logs with its traceback.
_PYNETDICOM_LEADS = (
    "Unable to decode the received PDU data",
    "Connection closed before the entire PDU was received",
    "Exception in DUL.run()",
    "Exception raised in handler bound to",
    "Exception in handler bound to",
    "Unable to set the",
)


class _NoPynetdicomUidWarnings(logging.Filter):
    """pynetdicom warns "Non-conformant '<name>' value '<uid>'" up to three times for each UID a
    peer sends that breaks the UID rules (ENFORCE_UID_CONFORMANCE is off, see
    scp_node.dicom.pynetdicom_adapter.flags): the node reports such a UID itself, once (a
    refused presentation context in the "association accepted" line, a refused C-STORE with
    0xC210), so these are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "pynetdicom.utils"
            and isinstance(record.msg, str)
            and record.msg.startswith("Non-conformant '")
        )


class _OneLinePerPynetdicomError(logging.Filter):
    """pynetdicom reports one failure in up to three records of one thread: a validation error
    ("Invalid 'Calling AE Title' value ..."), a lead line ("Unable to decode the received PDU
    data"), then the exception with its traceback. The first two are held (per thread) and
    joined, without repeats, into the thread's next pynetdicom record, so a bad PDU is one line:
    "<lead>: <error> | Traceback ...". Only lines that pynetdicom always follows are held."""

    def __init__(self) -> None:
        super().__init__()
        self._held = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pynetdicom"):
            return True
        held: list[str] = getattr(self._held, "lines", [])
        if _leads_a_traceback(record):
            held.append(record.getMessage())
            self._held.lines = held
            return False
        if held:
            self._held.lines = []
            message = record.getMessage()
            parts = [*dict.fromkeys(line for line in held if line != message), message]
            record.msg, record.args = ": ".join(parts), None
        return True


def _leads_a_traceback(record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or record.exc_info or not isinstance(record.msg, str):
        return False
    if record.name == "pynetdicom.utils" and record.msg.startswith("Invalid '"):
        return True
    return record.msg.startswith(_PYNETDICOM_LEADS)


def _log_uncaught(
    kind: type[BaseException],
    error: BaseException,
    traceback: TracebackType | None,
    thread: str | None = None,
) -> None:
    where = f" in thread {thread}" if thread else ""
    logging.getLogger("lungnode").critical(
        "uncaught exception%s: %s", where, kind.__name__, exc_info=(kind, error, traceback)
    )


def _log_uncaught_in_thread(args: Any) -> None:  # threading.ExceptHookArgs
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else None
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, name)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one escaped line; keep library chatter at WARNING;
    log Python warnings and uncaught exceptions (any thread) through the same formatter."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EscapingFormatter())
    handler.addFilter(_OneLineNetworkErrors())
    handler.addFilter(_OneLinePerPynetdicomError())
    handler.addFilter(_NoPynetdicomUidWarnings())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "apscheduler", "tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings: one escaped line each, not raw on stderr
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
