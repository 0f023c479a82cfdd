"""scp_node.logs: the escape function, the one formatter every log record goes through, the
joining of pynetdicom's records about one failure, and Modality validated as a Code String."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator

import pytest

from scp_node.dicom.instance_header import INVALID_CODE_CHARS, code_string, is_code_string
from scp_node.logs import (
    MAX_MESSAGE_CHARS,
    MAX_VALUE_CHARS,
    EscapingFormatter,
    clip_text,
    configure_logging,
    escape_text,
)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain CT 1.2.840.10008", "plain CT 1.2.840.10008"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00bel\x07", "nul\\x00bel\\x07"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),  # NEL and CSI of C1
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
        ("bom\ufeff", "bom\\ufeff"),
        ("back\\slash", "back\\\\slash"),
        ("Иванов^Пётр 山田", "Иванов^Пётр 山田"),  # printable Unicode stays readable
    ],
)
def test_escape_text(raw: str, escaped: str) -> None:
    assert escape_text(raw) == escaped
    assert "\n" not in escape_text(raw) and "\x1b" not in escape_text(raw)


def test_escape_text_bounds_the_length_and_never_cuts_an_escape() -> None:
    raw = "CT\n" + "A" * 274
    out = escape_text(raw, 32)
    assert len(out) <= 32 and out.endswith("...[277 chars]") and out.startswith("CT\\nAAAA")
    for limit in range(16, 40):  # the kept part ends on a whole escape sequence
        out = escape_text("\n" * 100, limit)
        assert len(out) <= limit
        head = out.split("...[")[0]
        assert head == "\\n" * (len(head) // 2)
    assert escape_text("x" * 10_000) == "x" * (MAX_VALUE_CHARS - 16) + "...[10000 chars]"
    assert len(escape_text("\x1b" * 10_000)) <= MAX_VALUE_CHARS
    assert escape_text("short", 32) == "short"
    assert escape_text(12345) == "12345"
    assert escape_text("a\nb" * 1000, None) == "a\\nb" * 1000


def test_clip_text() -> None:
    assert clip_text("abc", 10) == "abc"
    assert clip_text("a" * 100, 30) == "a" * 16 + "...[100 chars]"


def _format(record: logging.LogRecord) -> str:
    return EscapingFormatter().format(record)


def _record(msg: object, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord(
        "lungnode.test",
        logging.WARNING,
        __file__,
        1,
        msg,
        args,
        exc_info,  # type: ignore[arg-type]
    )


def test_formatter_one_escaped_line_per_record() -> None:
    line = _format(_record("calling_ae=%s sop=%r", "EVIL\n\x1b[31m", "1.2\n3"))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith("lungnode.test: calling_ae=EVIL\\n\\x1b[31m sop='1.2\\\\n3'")
    assert line[:24].endswith("Z") and " WARNING " in line


def test_formatter_bounds_every_value_and_the_message() -> None:
    line = _format(_record("modality=%s n=%d", "M" * 5000, 7))
    assert "M" * MAX_VALUE_CHARS not in line and "...[5000 chars] n=7" in line
    line = _format(_record("x" * 100_000))
    assert len(line) < MAX_MESSAGE_CHARS + 100 and line.endswith("...[100000 chars]")
    mapping = logging.LogRecord("t", logging.INFO, "f", 1, "%(a)s", None, None)
    mapping.args = {"a": "v\nw"}
    assert _format(mapping).endswith("t: v\\nw")


def test_formatter_puts_a_traceback_on_the_line_of_its_record() -> None:
    try:
        raise ValueError("Invalid 'Calling AE Title' value 'EVIL\n\x1b[31m'")
    except ValueError:
        record = _record("Unable to decode", exc_info=sys.exc_info())
    line = _format(record)
    assert "\n" not in line and "\x1b" not in line
    assert "Unable to decode | Traceback (most recent call last):\\n" in line
    assert line.endswith("ValueError: Invalid 'Calling AE Title' value 'EVIL\\n\\x1b[31m'")
    assert record.exc_info is not None  # the record itself is not changed


def test_formatter_redacts_database_passwords() -> None:
    line = _format(_record("cannot connect to %s: %s", "postgresql://u:s3/cr@t@db/x", "boom"))
    assert "s3/cr" not in line and "postgresql://u:***@db/x" in line
    line = _format(_record("conninfo host=db password=hunter2 user=u"))
    assert "hunter2" not in line and "password=***" in line


@pytest.fixture
def node_logging() -> Iterator[io.StringIO]:
    """configure_logging() writing into a buffer (conftest restores the logging setup after)."""
    saved = sys.stdout
    buffer = io.StringIO()
    sys.stdout = buffer
    try:
        configure_logging("INFO")
        yield buffer
    finally:
        sys.stdout = saved


def test_pynetdicom_records_of_one_bad_pdu_are_one_line(node_logging: io.StringIO) -> None:
    """What pynetdicom logs for an A-ASSOCIATE-RQ with a bad AE title (utils, then dul)."""
    value = (
        "Invalid 'Calling AE Title' value 'EVIL\n\x1b[31m' - must not contain control characters"
    )
    logging.getLogger("pynetdicom.utils").error(value)
    dul = logging.getLogger("pynetdicom.dul")
    dul.error("Unable to decode the received PDU data")
    try:
        raise ValueError(value)
    except ValueError as exc:
        dul.exception(exc)
    logging.getLogger("pynetdicom.utils").warning("Non-conformant 'abstract_syntax' value '1\n2'")
    lines = node_logging.getvalue().splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert " ERROR pynetdicom.dul: Unable to decode the received PDU data: Invalid 'Calling" in line
    assert line.count("EVIL") == 2  # the message once, the traceback's last line once
    assert "| Traceback (most recent call last):\\n" in line and "\x1b" not in line


def test_warnings_and_uncaught_exceptions_are_escaped_lines(node_logging: io.StringIO) -> None:
    import warnings

    warnings.warn("value 'A\nB' breaks its VR", UserWarning, stacklevel=1)
    try:
        raise RuntimeError("boom\nforged line")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    lines = node_logging.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "py.warnings" in lines[0] and "A\\nB" in lines[0]
    assert "CRITICAL lungnode: uncaught exception: RuntimeError | Traceback" in lines[1]
    assert lines[1].endswith("RuntimeError: boom\\nforged line")


@pytest.mark.parametrize("value", ["CT", "PT", "SR", "SEG", "OT", "", "A_B 12", "X" * 16])
def test_valid_code_strings_are_kept(value: str) -> None:
    assert is_code_string(value) and code_string(value) == value
    assert code_string(f" {value}  ") == value.strip()


@pytest.mark.parametrize(
    "value",
    ["ct", "CT\nINFO forged", "C-T", "X" * 17, ("CT\n" + "M" * 274), "CT\x1b[2J", "ÇT", "CT\\PT"],
)
def test_invalid_code_strings_become_a_bounded_escaped_form(value: str) -> None:
    indexed = code_string(value)
    assert not is_code_string(indexed)  # never passes for a valid code
    assert len(indexed) <= INVALID_CODE_CHARS
    assert "\n" not in indexed and "\x1b" not in indexed
    assert indexed == escape_text(value, INVALID_CODE_CHARS)


def test_code_string_of_missing_and_multi_valued() -> None:
    assert code_string(None) == ""
    from pydicom.multival import MultiValue

    assert not is_code_string(code_string(MultiValue(str, ["CT", "PT"])))


def test_status_prints_peer_and_dataset_values_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reasons hold Series Descriptions, last errors hold peers' Error Comments."""
    from scp_node.app import cli

    class FakeIndex:
        def status(self) -> dict[str, object]:
            return {
                "studies": [
                    {
                        "state": "REPORTED",
                        "instances": 3,
                        "series": 1,
                        "updated_at": "2024-01-01T00:00:00",
                        "study_uid": "1.2.3",
                        "reason": "series 'AX\n2024-01-01 FORGED\x1b[2J' skipped",
                    }
                ],
                "outbox": [
                    {
                        "state": "DEAD",
                        "attempts": 8,
                        "destination": "PACS",
                        "sop_instance_uid": "1.2.4",
                        "last_error": "0xC000 Error Comment: 'no\r\nFORGED\u2028" + "x" * 2000,
                    }
                ],
            }

    monkeypatch.setattr(cli, "_open_index", lambda config: FakeIndex())
    previous = os.umask(0o022)
    try:
        assert cli.main(["status"]) == 0
    finally:
        os.umask(previous)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u2028" not in out
    lines = out.splitlines()
    # header, study, blank, header, outbox row; blank, header, destination (issue 21)
    assert len(lines) == 8, lines
    assert "(series 'AX\\n2024-01-01 FORGED\\x1b[2J' skipped)" in lines[1]
    assert "no\\r\\nFORGED\\u2028xxx" in lines[4] and "...[2034 chars])" in lines[4]
    assert len(lines[4]) < 700
