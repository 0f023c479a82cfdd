"""The one way tests configure the node: config.ini plus `section__key` overrides.

`make_config` gives an in-process `Config`; `config_environ` gives the same overrides as the
`LUNGNODE__<SECTION>__<KEY>` environment a node subprocess (tests/support/node_process.py) reads.
Neither looks at the test process's own environment, so a stray LUNGNODE__ variable in the
shell cannot change what a test sees.
"""

from __future__ import annotations

from pathlib import Path

from scp_node.config import DEFAULT_CONFIG, ENV_PREFIX, Config, load_config


def config_environ(**overrides: object) -> dict[str, str]:
    """`section__key=value` overrides as LUNGNODE__SECTION__KEY environment variables."""
    environ = {}
    for name, value in overrides.items():
        section, sep, key = name.partition("__")
        if not (sep and section and key) or "__" in key:
            raise ValueError(f"config override {name!r}: expected section__key, e.g. node__port")
        environ[f"{ENV_PREFIX}{section.upper()}__{key.upper()}"] = str(value)
    return environ


def make_config(store_root: Path, **overrides: object) -> Config:
    """The repository's config.ini with its store at `store_root` and the given overrides
    (`section__key=value`, e.g. `sender__max_attempts=3`, `destinations__pacs="PACS@h:1"`)."""
    environ = config_environ(storage__root=store_root, **overrides)
    return load_config(DEFAULT_CONFIG, environ=environ)
