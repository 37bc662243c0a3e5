"""Many machines: one HTTP-only `gadsynth serve` and two `gadsynth worker` processes sharing a real PostgreSQL job
database, a real Redis queue and one spool folder; every job runs exactly once, and both workers take jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from tests.service.conftest import dicom_files
from tests.service.peers import postgres_server, redis_server
from tests.service.processes import (
    assert_no_traceback,
    assert_result_zip,
    descendants,
    post_study,
    wait_gone,
    wait_in_flight,
    worker_pid,
)
from training.bench.service_process import ServiceProcess, wait_for_job
from training.phantom import PhantomStudy

JOB_TIMEOUT_S = 90.0


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, Redis URL) of real servers for this test."""
    with postgres_server(tmp_path / "postgres") as database_url, redis_server(tmp_path / "redis") as queue_url:
        yield database_url, queue_url


def wait_for_log(process: ServiceProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log():
        assert process.process is not None and process.process.poll() is None, process.log()[-4000:]
        assert time.monotonic() < deadline, f"{text!r} not in {process.log_path} after {timeout} s"
        time.sleep(0.1)


def start_machines(
    stack: ExitStack, tmp_path: Path, settings: dict[str, Any]
) -> tuple[ServiceProcess, list[ServiceProcess]]:
    """An HTTP-only `gadsynth serve` and two `gadsynth worker` "machines" (one worker process each), all stopped
    when ``stack`` closes; returns once both consumers listen on the queue."""
    server = ServiceProcess(tmp_path / "server", settings=settings, workers=0)
    stack.callback(server.stop)
    server.start()
    workers = [ServiceProcess(tmp_path / f"machine-{n}", settings=settings, command="worker") for n in (1, 2)]
    for worker in workers:
        stack.callback(worker.stop)
        worker.start()
    for worker in workers:
        wait_for_log(worker, "queue RedisHuey")
    return server, workers


def shared_settings(tmp_path: Path, peers: tuple[str, str], **overrides: Any) -> dict[str, Any]:
    """Settings every machine shares: the database, the queue and the spool folder."""
    database_url, queue_url = peers
    return {
        "database_url": database_url,
        "queue_url": queue_url,
        "spool_dir": tmp_path / "shared-spool",
        "lease_seconds": 10,
        "supervisor_interval_s": 0.5,
        "spool_min_free_mb": 16,
        **overrides,
    }


def test_two_worker_machines_share_postgres_redis_and_spool(
    tmp_path: Path, studies: list[PhantomStudy], peers: tuple[str, str]
) -> None:
    shared = shared_settings(tmp_path, peers)
    spool, database_url = shared["spool_dir"], peers[0]
    with ExitStack() as stack:
        server, workers = start_machines(stack, tmp_path, shared)
        client = stack.enter_context(server.client())

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert ready.json()["ready"] is True, checks
        assert checks["database"]["ok"] and checks["queue"]["ok"], checks

        # Post the three studies at once, then each again with force=true (new jobs), all while the first run.
        with ThreadPoolExecutor(max_workers=3) as pool:
            first = list(pool.map(lambda study: post_study(client, study), studies))
            again = list(pool.map(lambda study: post_study(client, study, force=True), studies))
        job_ids = first + again
        assert len(set(job_ids)) == 6, job_ids
        same = client.post(
            "/synthesize",
            files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in dicom_files(studies[0].dicom_dir)],
        )
        assert same.status_code in (200, 202) and same.json()["id"] in job_ids[::3], same.text  # not a new job

        jobs: list[dict[str, Any]] = [wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S) for job_id in job_ids]
        for job in jobs:
            assert job["state"] == "succeeded", job
            assert job["attempt"] == 1, job
        names = {job["worker"] for job in jobs}
        pids = {int(name.rpartition(":")[2]) for name in names}
        assert len(names) == 2, f"both workers should have taken jobs: {names}"
        machine_pids = [descendants(w.process.pid) for w in workers if w.process is not None]
        assert all(pids & tree for tree in machine_pids), (pids, machine_pids)

        for job_id in job_ids[:1] + job_ids[3:4]:
            assert_result_zip(client, job_id)
        for job_id in job_ids:
            assert (spool / "jobs" / job_id / "attempt-1" / "synthetic_t1c").is_dir()
            assert not (spool / "jobs" / job_id / "attempt-2").exists()

        logs = "".join(worker.log() for worker in workers)
        for job_id in job_ids:
            assert logs.count(f"job {job_id}: attempt 1 started") == 1, job_id
            assert logs.count(f"job {job_id}: attempt 1 finished: ok") == 1, job_id
            assert f"job {job_id}: attempt 2" not in logs, job_id

        # The truth is in PostgreSQL (no SQLite file was made) and the queue in Redis, drained.
        engine = sqlalchemy.create_engine(database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(sqlalchemy.text("select state, attempt from jobs")).all()
        finally:
            engine.dispose()
        assert sorted(rows) == [("succeeded", 1)] * 6
        for folder in (server.data_dir, *(w.data_dir for w in workers)):
            assert not (folder / "jobs.sqlite").exists() and not (folder / "queue.sqlite").exists(), folder
        checks = client.get("/readyz").json()["checks"]
        assert checks["queue"]["depth"] == 0, checks

        trees = set().union(*machine_pids)
        for worker in workers:
            worker.stop()
        assert not wait_gone(trees), "worker processes outlived their stopped `gadsynth worker`"
        assert_no_traceback(server, *workers)


def test_killed_worker_machine_job_finishes_on_the_other(
    tmp_path: Path, studies: list[PhantomStudy], peers: tuple[str, str]
) -> None:
    """kill -9 of a whole `gadsynth worker` machine mid-job: its processes die with it, the server's supervisor
    re-queues the job when its lease runs out, and the other machine completes it (attempt 2, once)."""
    shared = shared_settings(tmp_path, peers, lease_seconds=3, supervisor_interval_s=0.3)
    with ExitStack() as stack:
        server, workers = start_machines(stack, tmp_path, shared)
        client = stack.enter_context(server.client())
        job_id = post_study(client, studies[0])
        running = wait_in_flight(client, job_id)
        trees = [descendants(w.process.pid) if w.process is not None else set() for w in workers]
        victim = next(n for n, tree in enumerate(trees) if worker_pid(running) in tree)
        survivor = workers[1 - victim]
        workers[victim].kill9()
        assert not wait_gone(trees[victim]), "processes outlived their killed `gadsynth worker`"

        job = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S)
        assert job["state"] == "succeeded", job
        assert job["attempt"] == 2, job
        assert worker_pid(job) in trees[1 - victim], (job["worker"], trees)
        assert_result_zip(client, job_id)
        assert (shared["spool_dir"] / "jobs" / job_id / "attempt-2" / "synthetic_t1c").is_dir()
        assert f"job {job_id}: worker {running['worker']} stopped during attempt 1" in server.log()
        assert survivor.log().count(f"job {job_id}: attempt 2 finished: ok") == 1
        assert f"job {job_id}: attempt 1 finished" not in workers[victim].log() + survivor.log()
        assert_no_traceback(server, *workers)
