"""A real `gadsynth serve` with its DICOM node for the tests, and polling helpers over its API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydicom import dcmread

from tests.dicom_node.peers import dcmtk
from training.bench.service_process import ServiceProcess, free_port

__all__ = [
    "NODE_SETTINGS",
    "NodeProcess",
    "dicom_files",
    "jobs_of_study",
    "receptions_of_study",
    "storescu",
    "study_uid",
    "wait_until",
]

#: Short quiet period, lease and backoff so that the tests do not wait; a small spool floor for shared disks.
NODE_SETTINGS: dict[str, Any] = {
    "dicom_quiet_seconds": 1.0,
    "supervisor_interval_s": 0.3,
    "lease_seconds": 10,
    "spool_min_free_mb": 16,
    "export_backoff_s": 0.5,
    "export_backoff_max_s": 1.0,
}

T = TypeVar("T")


class NodeProcess(ServiceProcess):
    """`gadsynth serve` with the DICOM node on a free port (``dicom_port``), one worker."""

    def __init__(self, data_dir: Path, *, settings: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.dicom_port = int((settings or {}).get("dicom_port") or free_port())
        merged = NODE_SETTINGS | (settings or {}) | {"dicom_port": self.dicom_port}
        super().__init__(data_dir, settings=merged, workers=workers)

    def restarted(self) -> NodeProcess:
        """A new process on the same data folder and ports (after a stop or kill -9)."""
        again = NodeProcess.__new__(NodeProcess)
        again.__dict__.update(self.__dict__)
        again.process = None
        return again.start()


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 60.0, poll: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; that value. AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def study_uid(folder: Path) -> str:
    return str(dcmread(dicom_files(folder)[0], stop_before_pixels=True).StudyInstanceUID)


def receptions_of_study(client: httpx.Client, study: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/receptions", params={"limit": 500}).json()["items"]
    return [r for r in items if r["study_instance_uid"] == study]


def jobs_of_study(client: httpx.Client, study: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/jobs", params={"limit": 500}).json()["items"]
    return [j for j in items if j["study_instance_uid"] == study]


def storescu(port: int, *paths: Path, calling: str = "STORESCU", extra: tuple[str, ...] = ()) -> str:
    """Send files or folders with dcmtk's storescu (verbose); its output. Fails the test when storescu fails."""
    result = dcmtk(
        "storescu", "-v", "-aet", calling, "-aec", "GADSYNTH", "+sd", "+r", *extra, "127.0.0.1", str(port),
        *map(str, paths),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr
