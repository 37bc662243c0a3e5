"""The image, built here with buildah (no Docker engine), run as a MONAI runner and as the service would run it.

The build (deploy/build-image.sh: a Debian 12 base made once by debootstrap, then the CPU flavour, without a layer
cache, which the vfs driver would store as full copies) takes about five minutes here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import REPO, require_tool
from training.bench.service_process import KEYS, free_port, key_settings
from training.phantom import PhantomOptions, PhantomStudy, generate_study

pytestmark = pytest.mark.slow
BUILDAH = ["buildah", "--storage-driver", "vfs"]
RUN = ["run", "--isolation", "chroot", "--network", "host"]


@pytest.fixture(scope="module")
def image() -> str:
    """Build (or reuse from buildah's cache) the CPU image; its name."""
    require_tool("buildah")
    require_tool("debootstrap")
    result = subprocess.run(
        [str(REPO / "deploy" / "build-image.sh")], cwd=REPO, capture_output=True, text=True, timeout=2400
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    name, size = result.stdout.strip().splitlines()[-1].split(" ", 1)
    print(f"image {name}: {size}")
    return name


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """One working container for the module: every run mounts its own input, output and data folders, and
    making a container copies the whole image with the vfs driver (about a minute here)."""
    name = subprocess.run([*BUILDAH, "from", image], capture_output=True, text=True, check=True).stdout.strip()
    yield name
    subprocess.run([*BUILDAH, "rm", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return generate_study(PhantomOptions(seed=11, size="small"), tmp_path_factory.mktemp("image-study"))


def _writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the image runs as its own user (uid 1000)
    return path


def _run_map(container: str, study_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    volumes = ["--volume", f"{study_dir}:/var/holoscan/input:ro", "--volume", f"{out}:/var/holoscan/output"]
    return subprocess.run(
        [*BUILDAH, *RUN, *volumes, container, "--", "/var/holoscan/tools"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_batch_mode_writes_valid_outputs(container: str, study: PhantomStudy, tmp_path: Path, dciodvfy: str) -> None:
    out = _writable(tmp_path / "out")
    result = _run_map(container, study.dicom_dir, out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["model"]["name"] == "ce-lowdose-v1"
    synthetic = sorted((out / "synthetic_t1c").glob("*.dcm"))
    assert len(synthetic) >= 20 and "SYNTHETIC" in dcmread(synthetic[0]).SeriesDescription
    for path in (synthetic[0], out / "seg" / "enhancement_seg.dcm", out / "sr" / "report_sr.dcm"):
        check = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        assert "Error" not in check.stdout + check.stderr, (path.name, check.stderr[-1500:])


def test_a_study_that_is_not_eligible_exits_2(container: str, study: PhantomStudy, tmp_path: Path) -> None:
    t2_only = tmp_path / "t2-only"
    shutil.copytree(next(study.dicom_dir.glob("*t2-tse*")), t2_only / "t2")
    out = _writable(tmp_path / "out")
    result = _run_map(container, t2_only, out)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "not_eligible" and report["error"]["message"]


def test_tools_show_the_manifests_and_no_pytorch(container: str) -> None:
    shown = subprocess.run(
        [*BUILDAH, *RUN, container, "--", "/var/holoscan/tools", "show", "app"], capture_output=True, text=True
    )
    assert json.loads(shown.stdout)["command"] == '["python3", "/opt/holoscan/app"]'
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    found = subprocess.run([*BUILDAH, *RUN, container, "--", "python3", "-c", probe], capture_output=True, text=True)
    assert found.stdout.split() == ["True", "True"], found.stderr[-2000:]


def test_serve_mode_answers_and_processes_a_study(container: str, study: PhantomStudy, tmp_path: Path) -> None:
    port = free_port()
    data = _writable(tmp_path / "data")
    command = [
        *BUILDAH,
        *RUN,
        "--env",
        f"GADSYNTH_API_KEYS={key_settings()}",
        "--env",
        "GADSYNTH_DICOM_PORT=0",
        "--volume",
        f"{data}:/var/lib/gadsynth",
        container,
        "--",
        "/var/holoscan/tools",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"no /healthz within 120 s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in study.dicom_dir.rglob("*.dcm")]
        headers = {"Authorization": f"Bearer {KEYS['writer'][0]}"}
        response = httpx.post(f"{url}/synthesize?wait=300", files=files, headers=headers, timeout=330)
        assert response.status_code == 200, response.text[:1000]
        assert response.headers["content-type"] == "application/zip"
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
