"""Housekeeping that keeps the job engine whole: re-queue jobs of dead workers, turn quiet STOW-RS studies into
jobs, purge old results. Every step is a compare-and-set on the job database, so any number of service processes
may run it at once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from app.service.settings import ServiceSettings
from app.service.spool import move_durably, remove_tree
from app.service.store import FINISHED, JobRow, JobState, JobStore, new_job_id

__all__ = ["Supervisor", "job_folder", "purge_job"]

logger = logging.getLogger(__name__)


def job_folder(settings: ServiceSettings, job_id: str) -> Path:
    return settings.spool / "jobs" / job_id


def purge_job(store: JobStore, settings: ServiceSettings, row: JobRow) -> None:
    """Remove a job's input and results from the spool; the job row stays (state, times, no files)."""
    remove_tree(job_folder(settings, row.id))
    store.mark_purged(row.id)
    logger.info("job %s: input and results purged", row.id)


class Supervisor:
    """Runs :meth:`tick` every ``supervisor_interval_s`` in a thread of the service process."""

    def __init__(self, settings: ServiceSettings, store: JobStore, queue: object) -> None:
        self.settings, self.store, self.queue = settings, store, queue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.supervisor_interval_s):
            try:
                self.tick()
            except Exception:  # the database may be away for a moment; the next tick tries again
                logger.exception("supervisor tick failed")

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.requeue_lost(now)
        self.requeue_stranded(now)
        self.assemble_quiet_studies(now)
        self.finish_assembling()
        self.purge_expired(now)

    def requeue_lost(self, now: float) -> None:
        """Jobs whose worker stopped renewing its lease: queued again (attempt count kept), or failed at the limit."""
        for row in self.store.expired_leases(now):
            state = self.store.requeue_expired(row)
            if state == JobState.QUEUED:
                logger.warning(
                    "job %s: worker %s stopped during attempt %d (stage %s); queued again",
                    row.id,
                    row.worker,
                    row.attempt,
                    row.stage,
                )
                self.queue.enqueue(row.id)  # type: ignore[attr-defined]
            elif state == JobState.FAILED:
                logger.error("job %s: failed after %d attempts (worker lost each time)", row.id, row.attempt)
            elif state == JobState.CANCELLED:
                purge_job(self.store, self.settings, row)

    def requeue_stranded(self, now: float) -> None:
        """Queued jobs whose queue message may have been lost (a crash between the database and the queue):
        send the message again. A duplicate message is harmless: only one worker can claim the job."""
        stale = now - max(self.settings.lease_seconds, 30.0)
        for row in self.store.rows(JobRow.state == JobState.QUEUED, JobRow.queued_at < stale):
            if self.store.mark_queued(row.id, from_states=(JobState.QUEUED,)):
                logger.info("job %s: still queued after %.0f s; message sent again", row.id, now - (row.queued_at or 0))
                self.queue.enqueue(row.id)  # type: ignore[attr-defined]

    def assemble_quiet_studies(self, now: float) -> None:
        """A STOW-RS study with no new instance for ``stow_quiet_seconds`` becomes a job."""
        for study_uid in self.store.quiet_studies(now - self.settings.stow_quiet_seconds):
            job_id = new_job_id()
            folder = job_folder(self.settings, job_id)
            row = JobRow(
                id=job_id,
                state=JobState.ASSEMBLING,
                source="stow",
                study_key=f"stow:{job_id}",
                study_instance_uid=study_uid,
                options={},
                input_dir=str(folder / "input"),
                max_attempts=self.settings.max_attempts,
                created_at=now,
                updated_at=now,
            )
            batches = self.store.assign_batches(study_uid, row)
            if batches:
                logger.info("job %s: STOW-RS study %s complete (%d instances)", job_id, study_uid, row.n_files)

    def finish_assembling(self) -> None:
        """Move a new STOW-RS job's batches into its input folder, then queue it (safe to repeat after a crash)."""
        for row in self.store.rows(JobRow.state == JobState.ASSEMBLING, JobRow.source == "stow"):
            input_dir = Path(row.input_dir)
            for batch in self.store.batches_of(row.id):
                source = Path(batch.folder)
                if source.exists():
                    move_durably(source, input_dir / batch.id)
            input_dir.mkdir(parents=True, exist_ok=True)
            self.store.delete_batches(row.id)
            if self.store.mark_queued(row.id):
                self.queue.enqueue(row.id)  # type: ignore[attr-defined]

    def purge_expired(self, now: float) -> None:
        cutoff = now - self.settings.retention_hours * 3600
        rows = self.store.rows(JobRow.state.in_(FINISHED), JobRow.purged_at.is_(None), JobRow.finished_at < cutoff)
        for row in rows:
            purge_job(self.store, self.settings, row)
