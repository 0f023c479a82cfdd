"""config.ini loading: defaults, environment overrides, and one-line errors naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from scp_node.config import BUNDLED_MODEL, DEFAULT_CONFIG, ConfigError, load_config


def _write(tmp_path: Path, edits: dict[str, str] | None = None, extra: str = "") -> Path:
    text = DEFAULT_CONFIG.read_text()
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "node.ini"
    path.write_text(text + extra)
    return path


def test_shipped_config_loads_with_embedded_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path), environ={})
    assert config.node.ae_title == "LUNGNODE"
    assert config.storage.root == (tmp_path / "data").resolve()
    assert (
        config.storage.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'index.sqlite'}"
    )
    assert config.pipeline.study_quiet_seconds == 10
    assert config.classifier.model == BUNDLED_MODEL
    assert config.send_results_to == ("sender",)
    assert config.security.require_called_aet is True
    assert not config.security.allow_any_calling_aet


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path),
        environ={"LUNGNODE__NODE__PORT": "11999", "LUNGNODE__PIPELINE__STUDY_QUIET_SECONDS": "2.5"},
    )
    assert config.node.port == 11999
    assert config.pipeline.study_quiet_seconds == 2.5


def test_destinations_and_routing(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"send_results_to = sender": "send_results_to = pacs, sender"},
        extra="",
    )
    text = path.read_text().replace(
        "[destinations]\n", "[destinations]\npacs = ORTHANC@127.0.0.1:4242\n"
    )
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.destinations["pacs"].ae_title == "ORTHANC"
    assert config.destinations["pacs"].port == 4242
    assert not config.destinations["pacs"].tls
    assert config.send_results_to == ("pacs", "sender")


def test_tls_keys_and_tls_destination(tmp_path: Path) -> None:
    (tmp_path / "node.pem").write_text("cert")
    (tmp_path / "node.key").write_text("key")
    (tmp_path / "ca.pem").write_text("ca")
    env = {
        "LUNGNODE__SECURITY__TLS_CERTIFICATE": "node.pem",
        "LUNGNODE__SECURITY__TLS_PRIVATE_KEY": "node.key",
        "LUNGNODE__SECURITY__TLS_CA_CERTIFICATES": "ca.pem",
        "LUNGNODE__DESTINATIONS__PACS": "PACS@10.0.0.5:2762 tls",
    }
    config = load_config(_write(tmp_path), environ=env)
    assert config.security.tls_enabled
    assert config.security.tls_certificate == tmp_path.resolve() / "node.pem"
    assert config.destinations["pacs"].tls
    assert config.security.audit_log == tmp_path.resolve() / "data" / "audit.log"
    with pytest.raises(ConfigError, match=r"\[security\] tls_certificate = 'absent.pem'"):
        load_config(
            _write(tmp_path), environ={**env, "LUNGNODE__SECURITY__TLS_CERTIFICATE": "absent.pem"}
        )
    with pytest.raises(ConfigError, match="tls_ca_certificates"):
        load_config(
            _write(tmp_path), environ={**env, "LUNGNODE__SECURITY__TLS_CA_CERTIFICATES": ""}
        )


@pytest.mark.parametrize(
    ("edits", "env", "expected"),
    [
        ({"port = 11112": "port = 70000"}, {}, "[node] port = '70000': expected a whole number"),
        ({"ae_title = LUNGNODE": "ae_title = THIS_AE_TITLE_IS_TOO_LONG"}, {}, "[node] ae_title"),
        ({"require_called_aet = yes": "require_called_aet = maybe"}, {}, "expected yes or no"),
        ({"mtv_threshold = 2.5": "mtv_threshold = 141%"}, {}, "[classifier] mtv_threshold"),
        (
            {"send_results_to = sender": "send_results_to = nowhere"},
            {},
            "[routing] send_results_to",
        ),
        ({}, {"LUNGNODE__NODE__COLOUR": "blue"}, "[node] colour: unknown"),
        ({}, {"LUNGNODE__NODE__PORT": "x"}, "[node] port = 'x'"),
        ({"[pipeline]": "[pipelines]"}, {}, "[pipelines]: unknown"),
    ],
)
def test_bad_values_name_key_value_and_expectation(
    tmp_path: Path, edits: dict[str, str], env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, edits), environ=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_and_bad_ini(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.ini", environ={})
    bad = tmp_path / "bad.ini"
    bad.write_text("this is not ini\n")
    with pytest.raises(ConfigError, match="not a valid INI file"):
        load_config(bad, environ={})


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _write(tmp_path, {"port = 11112": "port = eleven"})
    proc = subprocess.run(
        [sys.executable, "-m", "scp_node", "status", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lungnode: config key [node] port = 'eleven': expected a whole number from 1 to 65535"
    ]
