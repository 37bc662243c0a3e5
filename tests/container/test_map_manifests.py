"""The MAP's manifests and layout against holoscan-cli 4.2's own code and template (run in its own environment)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tool

PACKAGE_VENV = REPO / ".venv-package"


@pytest.fixture(scope="module")
def packager() -> Path:
    """The python of the packager environment (`make package-venv`: holoscan-cli 4.2 from constraints-package.txt)."""
    require_tool("make")
    result = subprocess.run(
        ["make", "-s", "package-venv", f"PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return PACKAGE_VENV / "bin" / "python"


def _template(packager: Path) -> str:
    code = "import holoscan_cli, pathlib; print(pathlib.Path(holoscan_cli.__file__).parent / 'packager/templates')"
    folder = Path(
        subprocess.run([str(packager), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    )
    return (folder / "Dockerfile.jinja2").read_text()


def test_committed_manifests_are_what_the_packager_makes(packager: Path, tmp_path: Path) -> None:
    subprocess.run([str(packager), str(REPO / "deploy" / "map_manifests.py"), "--out", str(tmp_path)], check=True)
    for name in ("app.json", "pkg.json"):
        made = json.loads((tmp_path / name).read_text())
        committed = json.loads((REPO / "deploy" / "map" / name).read_text())
        assert made == committed, f"deploy/map/{name} is out of date: run `make map-manifests`"


def test_the_packager_reads_our_app_yaml() -> None:
    app = json.loads((REPO / "deploy" / "map" / "app.json").read_text())
    package = json.loads((REPO / "deploy" / "map" / "pkg.json").read_text())
    assert app["input"]["formats"] == ["file"] and app["output"]["formats"] == ["file"]
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    assert app["sdk"] == "monai-deploy" and app["version"] == package["version"]
    assert "gpu" not in package["resources"], "a gpu requirement makes `monai-deploy run` refuse CPU-only hosts"
    assert set(package["models"]) >= {"ce-lowdose-v1", "ce-zerodose-v1"}


def test_the_image_sets_every_variable_the_packager_sets(packager: Path) -> None:
    wanted = set(re.findall(r"^ENV (HOLOSCAN_\w+)=", _template(packager), flags=re.MULTILINE))
    assert len(wanted) >= 12
    dockerfile = (REPO / "Dockerfile").read_text()
    found = dict(re.findall(r"^(?:ENV)?\s+(HOLOSCAN_\w+)=(\S+)", dockerfile, flags=re.MULTILINE))
    assert wanted <= set(found), sorted(wanted - set(found))
    environment = json.loads((REPO / "deploy" / "map" / "app.json").read_text())["environment"]
    workdir = environment["HOLOSCAN_WORKDIR"]
    for name, value in environment.items():  # the same values (input/output are relative to the work dir there)
        expected = str(Path(workdir) / value) if name in ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH") else value
        assert found[name] == expected, (name, found[name], expected)


def test_gpu_flavour_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    cpu = [line for line in (REPO / "constraints.txt").read_text().splitlines() if not line.startswith("#")]
    gpu = [line for line in (REPO / "constraints-gpu.txt").read_text().splitlines() if not line.startswith("#")]
    assert [line for line in cpu if not line.startswith("onnxruntime==")] == [
        line for line in gpu if not line.startswith("onnxruntime-gpu==")
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "requirements.py"), "--flavour", "gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.split()
    assert not any(line.startswith("onnxruntime==") for line in lines)
    assert any(line.startswith("onnxruntime-gpu==") for line in lines)
    assert not any(line.startswith("torch") for line in lines)
