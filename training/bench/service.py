"""Bench: the HTTP service under load, and what it costs over `gadsynth run` for one study.

1. Overhead: the same full-size phantom study once through `gadsynth run` (a fresh process: imports, model load,
   pipeline) and once through a freshly started `gadsynth serve` (POST with ``wait``, so upload, spool, queue,
   worker start and the zipped result are all inside the time).
2. Load: ``jobs`` studies posted at once from as many client threads; every job must succeed. Throughput is jobs
   per hour from the first post to the last result; peak RSS of each worker process is read from
   ``/proc/<pid>/status`` (VmHWM) before the service stops.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["bench_service"]


def _zip_study(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            bundle.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def bench_service(
    work_dir: Path, *, jobs: int = 20, workers: int = 1, seeds: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    from training.bench.service_process import ServiceProcess, wait_for_job
    from training.phantom import PhantomOptions, generate_study

    studies = []
    for seed in seeds:
        study_dir = work_dir / f"phantom-full-{seed}"
        if not (study_dir / "dicom").is_dir():
            generate_study(PhantomOptions(seed=seed, size="full"), study_dir)
        studies.append(_zip_study(study_dir / "dicom"))
    first_dir = work_dir / f"phantom-full-{seeds[0]}" / "dicom"

    # 1. One study: gadsynth run, then a fresh service.
    run_out = work_dir / "service-bench-run-out"
    subprocess.run(["rm", "-rf", str(run_out)], check=True)
    gadsynth = Path(sys.executable).parent / "gadsynth"
    started = time.perf_counter()
    run = subprocess.run([str(gadsynth), "run", str(first_dir), str(run_out)], capture_output=True, check=False)
    run_s = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"gadsynth run failed: {run.stderr.decode()[-2000:]}")

    settings = {"max_upload_bytes": 2**31, "zip_max_bytes": 2**31, "supervisor_interval_s": 1.0}
    # Fresh services: a job database left by an earlier bench in the same work folder would answer the first post
    # with that run's result (the same study is the same job), which is not what this measures.
    for name in ("service-bench-one", "service-bench-load"):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    one = ServiceProcess(work_dir / "service-bench-one", settings=settings, workers=1)
    with one as service, service.client(timeout=900) as client:
        started = time.perf_counter()
        response = client.post("/synthesize?wait=900", content=studies[0], headers={"Content-Type": "application/zip"})
        service_s = time.perf_counter() - started
        if response.status_code != 200 or response.headers.get("content-type") != "application/zip":
            raise RuntimeError(f"service answered {response.status_code}: {response.text[:500]}")
        # The same study again on the warm worker (forced: a new job).
        started = time.perf_counter()
        warm = client.post(
            "/synthesize?wait=900&force=true", content=studies[0], headers={"Content-Type": "application/zip"}
        )
        warm_s = time.perf_counter() - started
        if warm.status_code != 200:
            raise RuntimeError(f"service answered {warm.status_code}: {warm.text[:500]}")
    overhead = service_s - run_s

    # 2. Many studies at once.
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    load = ServiceProcess(work_dir / "service-bench-load", settings=settings, workers=workers)
    with load as service, service.client(timeout=900) as client:

        def post(index: int) -> None:
            response = client.post(
                "/synthesize?force=true",
                content=studies[index % len(studies)],
                headers={"Content-Type": "application/zip"},
            )
            job = wait_for_job(client, response.json()["id"], timeout=3600, poll=2.0)
            with lock:
                results.append(job)

        started = time.perf_counter()
        threads = [threading.Thread(target=post, args=(i,)) for i in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        load_s = time.perf_counter() - started
        worker_pids = sorted({int(j["worker"].rsplit(":", 1)[1]) for j in results if j.get("worker")})
        peaks = {pid: _peak_rss_mib(pid) for pid in worker_pids}
    succeeded = sum(j["state"] == "succeeded" for j in results)
    return {
        "one_study": {
            "gadsynth_run_s": round(run_s, 2),
            "service_cold_s": round(service_s, 2),
            "service_warm_s": round(warm_s, 2),
            "overhead_s": round(overhead, 2),
            "overhead_pct": round(100 * overhead / run_s, 1),
            "target": "at most 10 % or 2 s, whichever is larger",
        },
        "load": {
            "jobs": jobs,
            "distinct_studies": len(studies),
            "workers": workers,
            "succeeded": succeeded,
            "attempts_max": max((j["attempt"] for j in results), default=0),
            "wall_s": round(load_s, 1),
            "studies_per_hour": round(3600 * succeeded / load_s, 1),
            "worker_peak_rss_mib": peaks,
        },
    }
