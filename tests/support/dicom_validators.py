"""Run the DICOM validators other tests reuse: dciodvfy, the PixelMed SR validator, dsrdump.

Each helper skips the calling test (pytest.skip) with the package to install when its tool is
missing, and raises when the tool fails to run at all, so a test never passes silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
_JAVA_XML_LIMITS = [
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def dciodvfy_report(path: Path | str) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dicom3tools' dciodvfy for one file."""
    exe = _tool("dciodvfy", "dicom3tools")
    proc = subprocess.run(
        [exe, "-new", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    if not lines and proc.returncode != 0:
        raise RuntimeError(f"dciodvfy failed on {path} with exit status {proc.returncode}")
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def run_dciodvfy(path: Path | str) -> list[str]:
    """The "Error" lines dciodvfy prints for one file (an empty list means it passes)."""
    return dciodvfy_report(path)[0]


def _java() -> str:
    exe = _tool("java", "default-jre-headless")
    if not PIXELMED_JAR.exists():
        pytest.skip(f"{PIXELMED_JAR} is missing (Debian package pixelmed-apps)")
    return exe


# DicomSRValidator's own main() takes one file, and each JVM start plus stylesheet compilation
# costs seconds: this launcher validates several files with one validator instance.
_LAUNCHER = """
import com.pixelmed.validate.DicomSRValidator;
public class ValidateSRFiles {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String path : args) {
            System.out.println("=== FILE " + path);
            System.out.println(validator.validate(path));
        }
    }
}
"""


def run_pixelmed_sr_validators(
    paths: Sequence[Path | str],
) -> dict[str, tuple[list[str], list[str]]]:
    """PixelMed DicomSRValidator on several SR files in one JVM: path -> (errors, warnings)."""
    exe = _java()
    paths = [str(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Path(tmp) / "ValidateSRFiles.java"
        launcher.write_text(_LAUNCHER)
        proc = subprocess.run(
            [exe, *_JAVA_XML_LIMITS, "-cp", str(PIXELMED_JAR), str(launcher), *paths],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(),
        )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(
            f"PixelMed DicomSRValidator failed (exit status {proc.returncode}):\n{output[-3000:]}"
        )
    results: dict[str, tuple[list[str], list[str]]] = {}
    current: str | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("=== FILE "):
            current = line.removeprefix("=== FILE ")
            results[current] = ([], [])
        elif current is not None and line.startswith("Error"):
            results[current][0].append(line)
        elif current is not None and line.startswith("Warning"):
            results[current][1].append(line)
    missing = [p for p in paths if p not in results]
    if missing:
        raise RuntimeError(
            f"PixelMed DicomSRValidator printed no report for {missing}:\n{output[-3000:]}"
        )
    return results


def run_pixelmed_sr_validator(path: Path | str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the PixelMed SR validator for one SR file."""
    return run_pixelmed_sr_validators([path])[str(path)]


def run_dsrdump(path: Path | str) -> str:
    """dsrdump's text rendering of an SR file; raises with its messages if it cannot read it."""
    exe = _tool("dsrdump", "dcmtk")
    proc = subprocess.run(
        [exe, "--print-long-values", "--print-instance-uid", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dsrdump could not read {path} ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout
