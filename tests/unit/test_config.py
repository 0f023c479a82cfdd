"""config.ini loading: defaults, environment overrides, and one-line errors naming key and value."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from classifier.settings import AnalysisSettings
from scp_node.config import (
    BUNDLED_MODEL,
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    load_config,
    schema_keys,
)
from storage.states import ResultKind


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
    pin = "ab" * 32
    both = f"PACS@10.0.0.5:2762 tls verify_hostname sha256={pin} result_objects=sr, gsps,ko"
    pacs = load_config(
        _write(tmp_path), environ={**env, "LUNGNODE__DESTINATIONS__PACS": both}
    ).destinations["pacs"]
    assert (pacs.tls, pacs.tls_verify_hostname, pacs.tls_pin_sha256) == (True, True, pin)
    assert pacs.result_objects == (ResultKind.SR, ResultKind.GSPS, ResultKind.KO)
    for bad in ("PACS@h:1 verify_hostname", "PACS@h:1 tls result_objects=sr,xx", "PACS@h:1 x"):
        with pytest.raises(ConfigError, match=r"\[destinations\] pacs"):
            load_config(_write(tmp_path), environ={**env, "LUNGNODE__DESTINATIONS__PACS": bad})
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
        (
            {"database_pool_size = 4": "database_pool_size = 0"},
            {},
            "[storage] database_pool_size = '0': expected a whole number from 1 to 100",
        ),
        ({}, {"LUNGNODE__STORAGE__DATABASE_POOL_SIZE": "101"}, "from 1 to 100"),
        (
            {"analysis_share_while_receiving = 0.1": "analysis_share_while_receiving = 0"},
            {},
            "[pipeline] analysis_share_while_receiving = '0': expected a share from 0.01 to 1 "
            "(0 would stop the analysis",
        ),
        ({}, {"LUNGNODE__PIPELINE__ANALYSIS_SHARE_WHILE_RECEIVING": "1.5"}, "share from 0.01 to 1"),
        (
            {"histology = auto": "histology = maybe"},
            {},
            "[results] histology = 'maybe': expected auto or on or off",
        ),
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


# --- built-in defaults: config.ini documents them, a file names only what differs ------------


def test_shipped_config_ini_is_exactly_the_built_in_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(DEFAULT_CONFIG.parent)  # without a file, relative paths start here
    from_file = load_config(DEFAULT_CONFIG, environ={})
    built_in = load_config(None, environ={})
    assert from_file == built_in
    assert built_in.source is None and from_file.source == DEFAULT_CONFIG
    # and the values that need no resolving are the dataclasses' own defaults
    defaults = Config()
    assert built_in.node == defaults.node
    assert built_in.pipeline == defaults.pipeline
    assert built_in.classifier == defaults.classifier == AnalysisSettings()
    assert built_in.storage.database_pool_size == 4
    assert built_in.sender.calling_ae_title == built_in.node.ae_title


def test_every_key_of_the_schema_is_documented_in_config_ini() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(DEFAULT_CONFIG, encoding="utf-8")
    documented = {section: tuple(parser[section]) for section in parser.sections()}
    assert documented == schema_keys(), "config.ini and scp_node.config._SCHEMA differ"
    # each key has its comment right above it (tls_private_key shares tls_certificate's)
    lines = DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" not in line or line.startswith((";", "#")) or line.startswith("tls_private_key"):
            continue
        assert lines[number - 1].startswith(";"), f"config.ini: {line!r} has no comment above it"


@pytest.mark.parametrize("text", ["", "[node]\nport = 11113\n"])
def test_a_file_names_only_what_differs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "node.ini"
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.node.port == (11113 if text else 11112)
    assert config.node.ae_title == "LUNGNODE"
    assert config.storage.root == tmp_path.resolve() / "data"
    assert config.storage.database_url == f"sqlite:///{tmp_path.resolve() / 'data/index.sqlite'}"
    assert config.security.allowed_calling_aets == ("ORTHANC", "STORESCU")
    assert config.security.audit_log == tmp_path.resolve() / "data" / "audit.log"
    assert config.classifier == AnalysisSettings()
    assert config.send_results_to == ("sender",)
    assert config.sender.calling_ae_title == "LUNGNODE"


def test_without_a_file_relative_paths_start_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={"LUNGNODE__STORAGE__ROOT": "store"})
    assert config.storage.root == tmp_path.resolve() / "store"
    assert config.source is None
    with pytest.raises(ConfigError, match=r"\[node\] port = 'x'"):
        load_config(None, environ={"LUNGNODE__NODE__PORT": "x"})


def test_destination_names_are_case_insensitive_and_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "node.ini"
    for routed in ("pacs", "PACS", "Pacs"):
        path.write_text(
            "[destinations]\nPACS = ORTHANC@127.0.0.1:4242\n"
            f"[routing]\nsend_results_to = {routed}, sender\n"
        )
        config = load_config(path, environ={})
        assert list(config.destinations) == ["PACS"]
        assert config.send_results_to == ("PACS", "sender")
        assert config.destination("pacs") is config.destinations["PACS"]
        assert str(config.destination("PACS")) == "PACS (ORTHANC@127.0.0.1:4242)"
    # an environment variable overrides the same destination, whatever the case
    config = load_config(path, environ={"LUNGNODE__DESTINATIONS__PACS": "OTHER@10.0.0.1:104"})
    assert list(config.destinations) == ["PACS"]
    assert config.destinations["PACS"].ae_title == "OTHER"
    path.write_text("[destinations]\nPACS = A@127.0.0.1:104\npacs = B@127.0.0.1:104\n")
    with pytest.raises(ConfigError, match=r"\[destinations\] pacs: given twice"):
        load_config(path, environ={})


def test_result_objects_are_read_into_result_kinds(tmp_path: Path) -> None:
    def result_objects(raw: str) -> tuple[ResultKind, ...]:
        env = {"LUNGNODE__ROUTING__RESULT_OBJECTS": raw}
        return load_config(_write(tmp_path), environ=env).result_objects

    assert load_config(_write(tmp_path), environ={}).result_objects == tuple(ResultKind)
    assert result_objects("KO, sr,seg") == (ResultKind.SR, ResultKind.SEG, ResultKind.KO)
    unknown = r"\[routing\] result_objects = 'sr, pdf'.*sr, seg, gsps, sc, ko.*'pdf'"
    with pytest.raises(ConfigError, match=unknown):
        result_objects("sr, pdf")
    with pytest.raises(ConfigError, match=r"result_objects = 'seg'.*includes sr"):
        result_objects("seg")
    with pytest.raises(ConfigError, match=r"result_objects = ' , '.*at least one"):
        result_objects(" , ")


def test_result_kind_words() -> None:
    assert [kind.word for kind in ResultKind] == ["sr", "seg", "gsps", "sc", "ko"]
    assert ResultKind.from_word(" Gsps ") is ResultKind.GSPS
    with pytest.raises(ValueError, match=r"'pdf' is not a result kind: one of sr, seg"):
        ResultKind.from_word("pdf")
