"""`lungnode` (`python -m scp_node` in a subprocess) and config.ini: a bad value in one line
naming key and value; without -c the built-in defaults, relative to the current directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scp_node.config import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[2]


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG.read_text()
    assert "port = 11112" in text
    path = tmp_path / "node.ini"
    path.write_text(text.replace("port = 11112", "port = eleven"))
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


def _lungnode_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "scp_node", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_cli_without_c_uses_the_built_in_defaults_from_any_directory(tmp_path: Path) -> None:
    proc = _lungnode_in(tmp_path, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "index.sqlite").is_file()
    proc = _lungnode_in(tmp_path, "status", "--help")
    assert "built-in defaults" in proc.stdout and "current directory" in proc.stdout
    # -c still works as before, relative to the file's folder
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.ini").write_text("[storage]\nroot = store\n")
    proc = _lungnode_in(tmp_path, "status", "-c", "etc/node.ini")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "etc" / "store" / "index.sqlite").is_file()
