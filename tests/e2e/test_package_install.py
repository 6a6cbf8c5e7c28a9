"""The node installed as a package: a wheel in a fresh virtual environment, outside the checkout.

The wheel is built from the checkout and installed into a new venv; the packages it depends on come from
the project's venv through a path entry (its ``.pth`` files, among them the editable install of this
checkout, are not processed there, so the checkout itself is not importable). Every command runs in a
folder outside the checkout, so only what the wheel ships is found: templates, default rules, series rules,
the default model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.paths import REPO

NOT_SOURCE = (".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench.json")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this checkout installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: a wheel build writes build/ and *.egg-info next to the sources.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = root / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        cwd=root,
        capture_output=True,
    )
    (wheel,) = wheels.glob("lesion_ai-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        cwd=root,
        capture_output=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Dependencies (numpy, torch, pydicom, ...) from the project's venv, appended after the wheel's own files.
    (Path(purelib) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LESION_AI_", "PYTHON"))}
    environment.update(env)
    return subprocess.run(
        [str(bin_dir / "lesion-ai"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_checkout_is_not_importable_there(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import lesion_engine, orthanc_plugin; print(lesion_engine.__file__);"
            "print(orthanc_plugin.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in out:
        assert not Path(path).is_relative_to(REPO), path
        assert Path(path).is_relative_to(installed.parent), path


def test_node_config_only_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _run(installed, ["node", "--config-only", "--home", str(home), "--http-port", "18142"], tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((home / "orthanc.json").read_text())
    assert config["HttpPort"] == 18142
    assert config["LesionAI"]["Rules"] == str(home / "rules.yaml")
    assert Path(config["PythonScript"]).is_relative_to(installed.parent)
    assert "rules:" in (home / "rules.yaml").read_text()


@pytest.mark.fixture
def test_infer_from_the_wheel(installed: Path, tmp_path: Path, prostatex: Path) -> None:
    out = tmp_path / "out"
    done = _run(
        installed, ["infer", str(prostatex / "dicom"), "--out", str(out), "--device", "cpu"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    lesions = json.loads((out / "lesions.json").read_text())
    assert lesions["model"]["name"]
    assert (out / "sr.dcm").is_file()
