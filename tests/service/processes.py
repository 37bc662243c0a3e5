"""Helpers of the service tests that run real processes: post a study, catch a job mid-flight, find and wait for
processes (from /proc), check a result zip and a log."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pydicom

from tests.service.conftest import dicom_files
from training.bench.service_process import ServiceProcess
from training.phantom import PhantomStudy

__all__ = [
    "IN_FLIGHT",
    "alive",
    "assert_input_kept",
    "assert_no_traceback",
    "assert_result_zip",
    "attempt_folders",
    "command_line",
    "descendants",
    "pool_pids",
    "post_study",
    "wait_gone",
    "wait_in_flight",
    "worker_pid",
]

#: Stages during which real work is in flight (after the study is read, before results are published).
IN_FLIGHT = ("register", "brain_mask", "infer", "postprocess")


def post_study(client: httpx.Client, study: PhantomStudy, *, force: bool = False) -> str:
    files = dicom_files(study.dicom_dir)
    response = client.post(
        "/synthesize",
        params={"force": "true"} if force else None,
        files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in files],
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_in_flight(client: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll until the job runs one of the :data:`IN_FLIGHT` stages; the job's JSON then."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["stage"] in IN_FLIGHT:
            return job
        assert job["state"] in ("queued", "running"), f"job {job_id} ended before it could be interrupted: {job}"
        assert time.monotonic() < deadline, f"job {job_id} never reached {IN_FLIGHT}: {job}"
        time.sleep(0.05)


def worker_pid(job: dict[str, Any]) -> int:
    host, _, pid = str(job["worker"]).rpartition(":")
    assert host and pid.isdigit(), job["worker"]
    return int(pid)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan may wait a moment to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def command_line(pid: int) -> str:
    """The process's arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pool_pids(server: int) -> list[int]:
    """The worker-pool processes `gadsynth serve` started (its children running ``app.service.cli --pool``)."""
    found = []
    for pid in descendants(server):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == server and "--pool" in command_line(pid):
            found.append(pid)
    return found


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


def wait_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    """Wait until none of ``pids`` is alive; those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def attempt_folders(spool: Path, job_id: str) -> dict[str, list[str]]:
    """attempt-<n> folder name -> its visible entries."""
    folder = spool / "jobs" / job_id
    return {
        p.name: sorted(e.name for e in p.iterdir() if not e.name.startswith("."))
        for p in sorted(folder.glob("attempt-*"))
    }


def assert_result_zip(client: httpx.Client, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        assert bundle.testzip() is None
        names = [n for n in bundle.namelist() if n.endswith(".dcm")]
        assert any(n.startswith("synthetic_t1c/") for n in names), bundle.namelist()[:10]
        for name in names:
            dataset = pydicom.dcmread(io.BytesIO(bundle.read(name)))
            assert dataset.SOPInstanceUID


def assert_no_traceback(*services: ServiceProcess) -> None:
    for process in services:
        log = process.log()
        assert "Traceback" not in log, f"{process.log_path}:\n{log[max(0, log.index('Traceback') - 2000) :][:6000]}"


def assert_input_kept(spool: Path, job_id: str, study: PhantomStudy) -> None:
    received = sorted((spool / "jobs" / job_id / "input").iterdir())
    assert len(received) == len(dicom_files(study.dicom_dir))
