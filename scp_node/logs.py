"""Logging: one line per event on stdout, UTC timestamps, no patient identifiers at INFO."""

from __future__ import annotations

import logging
import sys
import time


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


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


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one line; keep library chatter at WARNING."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OneLineNetworkErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "apscheduler", "tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
