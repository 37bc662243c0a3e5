"""A crash never loses a study nor finishes a job twice: real `gadsynth serve` processes, real SIGKILL.

Each case runs its own service on its own data folder with a short lease (3 s), so a job whose worker was killed
is re-queued within seconds; the pipeline's stages are real (a small phantom study takes a few seconds).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.service.processes import (
    IN_FLIGHT,
    assert_input_kept,
    assert_no_traceback,
    assert_result_zip,
    attempt_folders,
    descendants,
    pool_pids,
    post_study,
    wait_gone,
    wait_in_flight,
    worker_pid,
)
from training.bench.service_process import ServiceProcess, wait_for_job
from training.phantom import PhantomStudy

#: Short lease and supervisor period: a lost attempt is noticed within about 3.5 s.
CRASH_SETTINGS = {
    "lease_seconds": 3,
    "supervisor_interval_s": 0.3,
    "spool_min_free_mb": 16,
}
JOB_TIMEOUT_S = 45.0


def test_kill9_server_while_job_runs(tmp_path: Path, studies: list[PhantomStudy]) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    first = ServiceProcess(data, settings=CRASH_SETTINGS).start()
    second: ServiceProcess | None = None
    try:
        with first.client() as client:
            job_id = post_study(client, studies[0])
            running = wait_in_flight(client, job_id)
        assert running["attempt"] == 1
        assert first.process is not None
        tree = descendants(first.process.pid)  # the worker pool, its workers and Huey's scheduler
        worker = worker_pid(running)
        assert worker in tree, (worker, tree)
        first.kill9()
        # PR_SET_PDEATHSIG: the pool dies with the server, the workers (and everything else) with the pool.
        assert not wait_gone(tree), f"processes outlived the killed server: {wait_gone(tree, 0)}"

        second = ServiceProcess(data, settings=CRASH_SETTINGS).start()
        with second.client() as client:
            job = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S)
            assert job["state"] == "succeeded", job
            assert job["attempt"] == 2, job
            assert job["worker"] != running["worker"]
            assert_result_zip(client, job_id)
        folders = attempt_folders(spool, job_id)
        holding = [name for name, entries in folders.items() if "synthetic_t1c" in entries]
        assert holding == ["attempt-2"], folders
        assert_input_kept(spool, job_id, studies[0])
        log = second.log()
        assert f"job {job_id}: worker {running['worker']} stopped during attempt 1" in log
        assert log.count(f"job {job_id}: attempt 2 finished: ok") == 1
        assert_no_traceback(first, second)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_kill9_worker_while_job_runs(tmp_path: Path, studies: list[PhantomStudy]) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    with ServiceProcess(data, settings=CRASH_SETTINGS) as service, service.client() as client:
        job_id = post_study(client, studies[1])
        running = wait_in_flight(client, job_id)
        pid = worker_pid(running)
        os.kill(pid, signal.SIGKILL)
        assert not wait_gone({pid}), f"worker {pid} survived SIGKILL"

        job = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S)
        assert job["state"] == "succeeded", job
        assert job["attempt"] == 2, job
        assert job["worker"] != running["worker"]  # Huey's consumer started a new worker process
        assert client.get("/healthz").status_code == 200
        assert_result_zip(client, job_id)
        folders = attempt_folders(spool, job_id)
        assert [name for name, entries in folders.items() if "synthetic_t1c" in entries] == ["attempt-2"], folders
        assert_input_kept(spool, job_id, studies[1])

        log = service.log()
        assert f"job {job_id}: worker {running['worker']} stopped during attempt 1" in log
        assert log.count(f"job {job_id}: attempt 1 started") == 1
        assert log.count(f"job {job_id}: attempt 2 started") == 1
        assert log.count(f"job {job_id}: attempt 2 finished: ok") == 1
        assert f"job {job_id}: attempt 1 finished" not in log
        assert "Worker 1 died, restarting" in log
        assert_no_traceback(service)


def test_killed_worker_at_max_attempts_fails_the_job(tmp_path: Path, studies: list[PhantomStudy]) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    settings = CRASH_SETTINGS | {"max_attempts": 1}
    with ServiceProcess(data, settings=settings) as service, service.client() as client:
        job_id = post_study(client, studies[2])
        running = wait_in_flight(client, job_id)
        assert running["max_attempts"] == 1
        os.kill(worker_pid(running), signal.SIGKILL)

        job = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S)
        assert job["state"] == "failed", job
        assert job["reason"] == "worker_lost", job
        assert job["attempt"] == 1, job
        assert job["error"]["error"] == "WorkerLost", job
        message = job["error"]["message"]
        assert "stopped once" in message and "beyond 1 attempt." in message, message
        assert running["worker"] in message, message
        assert job["error"]["stage"] in IN_FLIGHT, job
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409
        assert_input_kept(spool, job_id, studies[2])  # the study is kept: it can be posted again (force=true)
        assert not [name for name, entries in attempt_folders(spool, job_id).items() if "synthetic_t1c" in entries]
        time.sleep(1.0)  # a few more supervisor ticks: the failed job stays failed, nothing re-queues it
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "failed"
        assert f"job {job_id}: failed after 1 attempts" in service.log()
        assert_no_traceback(service)


def test_kill9_worker_pool_while_job_runs(tmp_path: Path, studies: list[PhantomStudy]) -> None:
    """The OOM killer takes the worker-pool process (Huey's consumer): its workers die with it, `gadsynth serve`
    starts a new pool, and the job runs again."""
    data = tmp_path / "data"
    with ServiceProcess(data, settings=CRASH_SETTINGS) as service, service.client() as client:
        job_id = post_study(client, studies[0])
        running = wait_in_flight(client, job_id)
        assert service.process is not None
        pools = pool_pids(service.process.pid)
        assert len(pools) == 1, pools
        tree = descendants(pools[0]) | set(pools)
        assert worker_pid(running) in tree
        os.kill(pools[0], signal.SIGKILL)
        assert not wait_gone(tree), f"processes outlived the killed pool: {wait_gone(tree, 0)}"

        job = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S)
        assert job["state"] == "succeeded", job
        assert job["attempt"] == 2, job
        assert_result_zip(client, job_id)
        new_pools = pool_pids(service.process.pid)
        assert len(new_pools) == 1 and new_pools != pools, (pools, new_pools)
        log = service.log()
        assert f"worker pool (pid {pools[0]}) exited" in log
        assert log.count(f"job {job_id}: attempt 2 finished: ok") == 1
        assert_no_traceback(service)
    assert not wait_gone(set(new_pools)), "the new pool outlived the stopped service"
