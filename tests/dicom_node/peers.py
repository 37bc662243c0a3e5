"""Real DICOM peers for the DICOM node's tests: Orthanc (:mod:`training.bench.orthanc_process`) and dcmtk's tools.

A missing program skips the test (fails it when CI=true), as in tests/service/peers.py. The dcmtk helpers run with
``TCP_NODELAY=1`` (dcmtk's own switch for Nagle's algorithm; without it every small write waits for a delayed ACK).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.service.peers import PeerStartupError, require
from training.bench.orthanc_process import DICOMWEB_PLUGIN, ORTHANC, Orthanc

__all__ = ["dciodvfy_errors", "dcmtk", "orthanc_peer", "wait_for_scp"]


def dcmtk(tool: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk program (echoscu, storescu, ...) with TCP_NODELAY=1; its output as text."""
    require(tool, "dcmtk")
    return subprocess.run(
        [tool, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, TCP_NODELAY="1"),
    )


def wait_for_scp(port: int, ae_title: str, timeout: float = 15.0, tls: tuple[str, ...] = ()) -> None:
    """Wait until a DICOM peer on loopback answers C-ECHO (echoscu)."""
    deadline = time.monotonic() + timeout
    while dcmtk("echoscu", *tls, "-aec", ae_title, "127.0.0.1", str(port), timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            raise PeerStartupError(f"no DICOM peer {ae_title} answered on port {port} within {timeout:.0f} s")
        time.sleep(0.1)


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dicom3tools' dciodvfy prints for one file."""
    require("dciodvfy", "dicom3tools")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def orthanc_peer(root: Path, *, modalities: dict[str, tuple[str, str, int]], aet: str = "ORTHANC") -> Orthanc:
    """An Orthanc for a test (not started); skips (fails in CI) when Orthanc or its DICOMweb plugin is missing."""
    require(ORTHANC, "orthanc")
    require(DICOMWEB_PLUGIN, "orthanc-dicomweb")
    return Orthanc(root, modalities=modalities, aet=aet)
