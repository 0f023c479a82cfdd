"""Database passwords never printed: storage.redaction in every form a password takes, and the
places that print a database URL (config errors, `lungnode status` failing to connect, logs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dcmtk import free_port

from scp_node.config import ConfigError, load_config
from storage.redaction import redact_database_url, redact_secrets

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# (database_url, what must remain visible, the secret that must not)
FORMS = [
    (
        "postgresql://lungnode:hunter2@db:5432/lungnode",
        "postgresql://lungnode:***@db:5432/lungnode",
        "hunter2",
    ),
    ("postgres://u:s3/cr3t@db/x", "postgres://u:***@db/x", "s3/cr3t"),
    (
        "postgresql://u:a/b/c@db:5432/x?sslmode=require",
        "postgresql://u:***@db:5432/x?sslmode=require",
        "a/b/c",
    ),
    ("postgresql://u:p@ss:w0rd@db/x", "postgresql://u:***@db/x", "p@ss:w0rd"),
    ("postgresql://u:p%40ss%2F@db/x", "postgresql://u:***@db/x", "p%40ss%2F"),
    ("postgresql://u:pa?ss@db/x", "postgresql://u:***@db/x", "pa?ss"),
    (
        "postgresql://u:pw@db/x?application_name=a@b",
        "postgresql://u:***@db/x?application_name=a@b",
        "pw@",
    ),
    ("postgresql://u@db/x?password=hunter2", "postgresql://u@db/x?password=***", "hunter2"),
    (
        "postgresql://db/x?sslmode=require&password=hun/ter:2@",
        "postgresql://db/x?sslmode=require&password=***",
        "hun/ter",
    ),
    ("postgresql://db/x?password=a&user=u", "postgresql://db/x?password=***&user=u", "password=a"),
    ("postgresql://u:one@db/x?password=two", "postgresql://u:***@db/x?password=***", "one"),
    ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x", "hunter2"),
    ("host=db password = 'it\\'s a secret' dbname=x", "host=db password = *** dbname=x", "secret"),
    ("host=db sslpassword=keypass password=pw", "host=db sslpassword=*** password=***", "keypass"),
    ("PASSWORD=Upper host=db", "PASSWORD=*** host=db", "Upper"),
]
SAFE = [
    "sqlite:////var/lib/lungnode/index.sqlite",
    "sqlite:////data/odd:name@here/index.sqlite",  # a path, not a userinfo
    "postgresql://lungnode@db:5432/lungnode",
    "postgresql://db/x?sslmode=require",
    "host=db user=u dbname=x",
]


@pytest.mark.parametrize(("url", "shown", "secret"), FORMS)
def test_redact_database_url(url: str, shown: str, secret: str) -> None:
    redacted = redact_database_url(url)
    assert redacted == shown
    assert secret not in redacted


@pytest.mark.parametrize("url", SAFE)
def test_urls_without_a_password_are_unchanged(url: str) -> None:
    assert redact_database_url(url) == url
    assert redact_secrets(f"database {url} is closed") == f"database {url} is closed"


@pytest.mark.parametrize(("url", "shown", "secret"), [f for f in FORMS if " " not in f[0]])
def test_redact_secrets_in_free_text(url: str, shown: str, secret: str) -> None:
    for text in (f"database {url} is closed", f"database URL {url!r}: bad", f"({url})"):
        redacted = redact_secrets(text)
        assert secret not in redacted, redacted
        assert "***" in redacted
    assert redact_secrets("PGPASSWORD=abc psql") == "PGPASSWORD=*** psql"
    assert redact_secrets("password authentication failed for user") == (
        "password authentication failed for user"
    )


def test_a_bad_database_url_is_not_echoed_by_the_config_error() -> None:
    env = {"LUNGNODE__STORAGE__DATABASE_URL": "mysql://root:s3/cr3t@db/x?password=two"}
    with pytest.raises(ConfigError) as error:
        load_config(None, environ=env)
    message = str(error.value)
    assert "s3/cr3t" not in message and "two" not in message
    assert "mysql://root:***@db/x?password=***" in message


def test_a_conninfo_string_is_not_echoed_by_the_config_error() -> None:
    env = {"LUNGNODE__STORAGE__DATABASE_URL": "host=db password=hunter2 dbname=x"}
    with pytest.raises(ConfigError) as error:
        load_config(None, environ=env)
    assert "= 'host=db password=*** dbname=x': expected" in redact_secrets(str(error.value))


def _lungnode(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scp_node", *args],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )


def test_cli_prints_config_and_connection_errors_redacted(tmp_path: Path) -> None:
    env = {
        "LUNGNODE__STORAGE__ROOT": str(tmp_path / "store"),
        "LUNGNODE__STORAGE__DATABASE_URL": "mysql://u:pa/ss@db/x",
    }
    proc = _lungnode("status", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pa/ss" not in proc.stdout + proc.stderr
    assert "mysql://u:***@db/x" in proc.stderr

    port = free_port()  # nothing listens there: the connection is refused at once
    for url in (
        f"postgresql://lungnode:se/cr@t@127.0.0.1:{port}/lungnode",
        f"postgresql://lungnode@127.0.0.1:{port}/lungnode?password=se/cr@t",
    ):
        env["LUNGNODE__STORAGE__DATABASE_URL"] = url
        proc = _lungnode("status", env=env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "se/cr" not in output, output
        assert "***" in output and f"127.0.0.1:{port}" in output
        assert "Traceback" not in output
