"""The job queue (Huey) and what a worker process does with a message.

The queue only wakes workers: a message carries a job id, and the job database decides whether there is anything
to do (:meth:`JobStore.claim`). So a message delivered twice, or re-sent by the supervisor after a crash, never
runs a job twice, and a message lost with a killed worker is replaced when the job's lease runs out.

Huey stores messages in a SQLite file by default and in Redis for many machines (``queue_url``); ``gadsynth serve``
starts a consumer with ``workers`` processes, ``gadsynth worker`` starts one on any other machine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

from app.service.settings import ServiceSettings
from app.service.store import JobRow, JobState, JobStore

__all__ = ["JobQueue", "WorkerRuntime", "die_with_parent"]

logger = logging.getLogger(__name__)

TASK_NAME = "gadsynth.run_job"


try:  # looked up once, here: a forked child of a threaded process must not dlopen (it may deadlock)
    _prctl: Any = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the workers outlive a killed parent; their leases protect the jobs
    _prctl = None


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed server takes its workers with it)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def make_huey(settings: ServiceSettings) -> Huey:
    url = settings.queue_url
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey("gadsynth", url=url, results=False)
    path = Path(url.split("sqlite:///", 1)[1]) if url and url.startswith("sqlite:///") else None
    path = path or settings.data_dir / "queue.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("gadsynth", filename=str(path), results=False, fsync=True)


class JobQueue:
    """The Huey instance and the one task GadSynth registers on it."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.huey = make_huey(settings)
        self._task = self.huey.task(name=TASK_NAME, retries=0)(_run_job_message)

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def depth(self) -> int:
        return int(self.huey.pending_count())

    def consumer(self, workers: int) -> Any:
        """A Huey consumer running ``workers`` worker processes (forked, each building its own pipeline)."""
        self.huey.on_startup("gadsynth-worker")(_on_worker_start)
        return self.huey.create_consumer(
            workers=workers,
            worker_type="process",
            periodic=False,
            check_worker_health=True,
            health_check_interval=1.0,
            initial_delay=0.1,
            max_delay=1.0,
        )


#: The settings a consumer was started with (inherited by its forked workers).
_consumer_settings: ServiceSettings | None = None
_runtime: WorkerRuntime | None = None


def serve_consumer(settings: ServiceSettings, workers: int) -> None:
    """Run a consumer until SIGTERM / SIGINT (blocking); used by `gadsynth serve` (child) and `gadsynth worker`."""
    global _consumer_settings
    _consumer_settings = settings
    # Every process the consumer forks (workers, and Huey's scheduler, which runs no startup hook) dies with it:
    # the kernel clears PR_SET_PDEATHSIG on fork, so each child asks again.
    os.register_at_fork(after_in_child=die_with_parent)
    queue = JobQueue(settings)
    consumer = queue.consumer(workers)
    logger.info("worker pool: %d process(es) on %s, queue %s", workers, socket.gethostname(), type(queue.huey).__name__)
    consumer.run()


def _on_worker_start() -> None:
    die_with_parent()


def _run_job_message(job_id: str) -> None:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        settings = _consumer_settings or ServiceSettings()
        _runtime = WorkerRuntime(settings)
    _runtime.run(job_id)


class _Lease(threading.Thread):
    """Renews a running job's lease until stopped; notices when the job was taken away or cancelled."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, lease_seconds: float) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.store, self.job_id, self.attempt, self.lease_seconds = store, job_id, attempt, lease_seconds
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(self.lease_seconds / 4, 0.2)
        while not self._stop_event.wait(interval):
            try:
                if not self.store.renew(self.job_id, self.attempt, self.lease_seconds):
                    self.lost.set()
                    return
            except Exception:  # the database is away for a moment: keep trying until the lease runs out
                logger.warning("job %s: lease renewal failed; retrying", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()


class JobCancelled(Exception):
    """The job was cancelled (or taken away from this worker) while it ran."""


class WorkerRuntime:
    """What one worker process keeps: its job store connection and one warm pipeline."""

    def __init__(self, settings: ServiceSettings) -> None:
        from app.config import load_settings
        from app.pipeline import Pipeline

        self.pid = os.getpid()
        self.settings = settings
        self.store = JobStore(settings.database)
        self.pipeline = Pipeline(load_settings())
        self.name = f"{socket.gethostname()}:{self.pid}"

    def run(self, job_id: str) -> None:
        attempt = self.store.claim(job_id, self.name, self.settings.lease_seconds)
        if attempt is None:
            logger.info("job %s: nothing to do (not queued any more)", job_id)
            return
        row = self.store.get(job_id)
        assert row is not None
        logger.info("job %s: attempt %d started on %s", job_id, attempt, self.name)
        lease = _Lease(self.store, job_id, attempt, self.settings.lease_seconds)
        lease.start()
        try:
            self._run(row, attempt, lease)
        except Exception:
            logger.exception("job %s: worker error", job_id)
            self.store.finish(
                job_id,
                attempt,
                JobState.FAILED,
                reason="error",
                error={"error": "WorkerError", "message": "internal error in the worker; see the service log"},
            )
        finally:
            lease.stop()

    def _run(self, row: JobRow, attempt: int, lease: _Lease) -> None:
        from app.job import PipelineRequest
        from app.service.options import JobOptions
        from operators.writers.enums import ReportStatus

        options = JobOptions.model_validate(row.options)
        output = Path(row.input_dir).parent / f"attempt-{attempt}"
        request = PipelineRequest(
            study_dir=Path(row.input_dir),
            output_dir=output,
            job_id=row.id,
            model=options.model,
            doses=options.doses(),
            agent=options.agent,
            field_strength_t=options.field_strength_t,
            write_secondary_capture="sc" in options.outputs,
            write_beyond_standard_dose="beyond_dose" in options.outputs,
            preview=True,
        )
        pipeline = self.pipeline
        job = pipeline.start(request)
        stages = pipeline.stages(request)
        for index, stage in enumerate(stages):
            if lease.lost.is_set():
                job.error, job.failed_stage = JobCancelled("cancelled while running"), stage.name
            self.store.progress(row.id, attempt, stage.name, round(index / len(stages), 3))
            pipeline.run_stage(stage, job)
        result = pipeline.finish(job)
        report = result.report.model_dump(mode="json")
        model = report.get("model", {}).get("name") if report.get("model") else None
        if isinstance(job.error, JobCancelled):
            from app.service.spool import remove_tree
            from app.service.supervisor import purge_job

            remove_tree(output)
            current = self.store.get(row.id)
            if current is not None and current.cancel_requested:
                self.store.finish(row.id, attempt, JobState.CANCELLED, reason="cancelled", stage=None)
                purge_job(self.store, self.settings, current)
                logger.info("job %s: cancelled during attempt %d", row.id, attempt)
            else:
                logger.warning("job %s: attempt %d lost its lease; its work is discarded", row.id, attempt)
            return
        if result.report.status == ReportStatus.OK:
            done = self.store.finish(
                row.id, attempt, JobState.SUCCEEDED, result_dir=str(output), report=report, model=model, progress=1.0
            )
        else:
            reason = result.report.status.value  # not_eligible or error
            error = dict(report.get("error") or {}, stage=result.failed_stage)
            done = self.store.finish(
                row.id, attempt, JobState.FAILED, reason=reason, error=error, report=report, model=model
            )
        if done:
            logger.info("job %s: attempt %d finished: %s", row.id, attempt, result.report.status.value)
        else:
            from app.service.spool import remove_tree

            remove_tree(output)
            logger.warning(
                "job %s: attempt %d finished after the job was taken away; result discarded", row.id, attempt
            )
