"""Bench: the DICOM node receiving a full-size phantom study over C-STORE, beside dcmtk's own storescp, and the time
from the last instance Orthanc sends to the results being in Orthanc.

1. Receive rate: dcmtk's `storescu` sends the study (one association) to dcmtk's `storescp` (writes files, no
   fsync), then to the node (each instance written, fsync'd and renamed before it is acknowledged), and then once more
   to the node with one `storescu` per series at once (six associations). The node's reception stays open for the
   bench (a long quiet period for the bench's calling AE), so the second send rewrites every instance durably again
   rather than being skipped as already received. dcmtk runs with ``TCP_NODELAY=1``.
2. Round trip: the study is uploaded to Orthanc (REST, not timed), Orthanc sends it to the node
   (``/modalities/gadsynth/store``, synchronous: it returns after the last instance), and the clock runs until the
   synthetic series and the SEG are in the same study in Orthanc (C-STORE export). This includes the quiet period.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_dicom"]

TARGET_INSTANCES_PER_S = 200


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, check=False, env=dict(os.environ, TCP_NODELAY="1"), timeout=900
    )


def _storescu(port: int, ae: str, called: str, *paths: Path) -> float:
    started = time.perf_counter()
    result = _dcmtk("storescu", "-aet", ae, "-aec", called, "+sd", "+r", "127.0.0.1", str(port), *map(str, paths))
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {(result.stdout + result.stderr)[-2000:]}")
    return time.perf_counter() - started


def _parallel_storescu(port: int, ae: str, called: str, folders: list[Path]) -> float:
    started = time.perf_counter()
    env = dict(os.environ, TCP_NODELAY="1")
    processes = [
        subprocess.Popen(
            ["storescu", "-aet", ae, "-aec", called, "+sd", "+r", "127.0.0.1", str(port), str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for folder in folders
    ]
    for process in processes:
        _, error = process.communicate(timeout=900)
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {error.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - started


def _rate(n: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "instances_per_s": round(n / seconds, 1)}


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def bench_dicom(work_dir: Path, *, seed: int = 1, quiet_seconds: float = 2.0) -> dict[str, Any]:
    """Receive rate (ours and storescp's) and Orthanc round trip for the full-size phantom study ``seed``."""
    from training.bench.orthanc_process import Orthanc, orthanc_installed
    from training.bench.service_process import ServiceProcess, free_port
    from training.phantom import PhantomOptions, generate_study

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the polls below would fill the terminal
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: apt-get install dcmtk")
    study_dir = work_dir / f"phantom-full-{seed}"
    if not (study_dir / "dicom").is_dir():
        generate_study(PhantomOptions(seed=seed, size="full"), study_dir)
    dicom = study_dir / "dicom"
    files = sorted(p for p in dicom.rglob("*") if p.is_file())
    series = sorted(p for p in dicom.iterdir() if p.is_dir())
    results: dict[str, Any] = {
        "instances": len(files),
        "series": len(series),
        "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "target_instances_per_s": TARGET_INSTANCES_PER_S,
    }

    # 1a. dcmtk's storescp, on the same files.
    received = work_dir / "dicom-bench-storescp"
    shutil.rmtree(received, ignore_errors=True)
    received.mkdir(parents=True)
    port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"),
    )  # fmt: skip
    try:
        _wait(lambda: _dcmtk("echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)).returncode == 0, 30, "storescp")
        results["storescp_dcmtk_one_association"] = _rate(len(files), _storescu(port, "BENCH", "STORESCP", dicom))
    finally:
        storescp.terminate()
        storescp.wait(timeout=30)

    # 1b and 2. The node, and Orthanc around it.
    node_port = free_port()
    data = work_dir / "dicom-bench-node"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    orthanc = Orthanc(data / "orthanc", modalities={"gadsynth": ("GADSYNTH", "127.0.0.1", node_port)})
    rules = data / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: bench\n    match: {calling_ae: [BENCH]}\n    action: skip\n"
        "  - name: pacs\n    match: {modality: [MR]}\n    destinations: ['@caller']\n"
    )
    settings = {
        "dicom_port": node_port,
        "dicom_quiet_seconds": quiet_seconds,
        "routing_rules": str(rules),
        "dicom_allowed_callers": [{"ae_title": "BENCH", "host": "127.0.0.1", "quiet_seconds": 600}],
        "dicom_destinations": [
            {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        ],
        "supervisor_interval_s": 0.5,
        "spool_min_free_mb": 64,
    }
    node = ServiceProcess(data / "service", settings=settings, workers=1)
    with node, node.client(timeout=900) as client:
        one = _storescu(node_port, "BENCH", "GADSYNTH", dicom)
        results["gadsynth_one_association"] = _rate(len(files), one)
        many = _parallel_storescu(node_port, "BENCH", "GADSYNTH", series)
        results[f"gadsynth_{len(series)}_associations"] = _rate(len(files), many)
        results["gadsynth_durable_writes"] = "each instance fdatasync'd, renamed and its folder fsync'd before success"

        if not orthanc_installed():
            results["orthanc_round_trip"] = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
            return results
        with orthanc:
            orthanc.upload(files)
            study_uid = _study_uid(files[0])
            resource = orthanc.study_id(study_uid)
            started = time.perf_counter()
            answer = orthanc.post("/modalities/gadsynth/store", {"Resources": [resource]}, timeout=900)
            last_instance = time.perf_counter()
            if answer.get("FailedInstancesCount"):
                raise RuntimeError(f"Orthanc could not send every instance: {answer}")

            def results_in_orthanc() -> bool:
                numbers = {s["number"] for s in orthanc.series(study_uid)}
                exports = client.get("/v1/exports", params={"state": "done"}).json()["items"]
                return {9001, 9003} <= numbers and bool(exports)

            _wait(results_in_orthanc, 1800, "the results in Orthanc")
            done = time.perf_counter()
            jobs = [j for j in client.get("/v1/jobs").json()["items"] if j["study_instance_uid"] == study_uid]
            job_s = None
            if jobs and jobs[0].get("started_at") and jobs[0].get("finished_at"):
                import datetime as dt

                start = dt.datetime.fromisoformat(jobs[0]["started_at"])
                job_s = (dt.datetime.fromisoformat(jobs[0]["finished_at"]) - start).total_seconds()
            results["orthanc_round_trip"] = {
                "orthanc_to_node": _rate(len(files), last_instance - started),
                "last_instance_to_results_in_orthanc_s": round(done - last_instance, 1),
                "of_which_quiet_period_s": quiet_seconds,
                "job_s": job_s,
            }
    return results


def _study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
