"""Job state in a SQL database (SQLAlchemy): SQLite on one machine, PostgreSQL for many; the same code for both.

The database is the truth about every job. Changes that several processes may race for are compare-and-set
updates (``UPDATE ... WHERE state = ... AND attempt = ...``): a worker claims a queued job, renews its lease while
it runs and records the outcome only while it still holds the job, so a job re-queued after a crash can never be
completed twice.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Integer,
    String,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = ["FINISHED", "JobRow", "JobState", "JobStore", "StowBatch", "new_job_id"]

logger = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    ASSEMBLING = "assembling"  # a STOW-RS study whose batches are being moved into the job's input folder
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    """One job. Times are seconds since the epoch (UTC), the same in SQLite and PostgreSQL."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: Why a job failed or stopped: not_eligible (the study), error (internal), worker_lost, cancelled.
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    source: Mapped[str] = mapped_column(String(16))  # http, stow, dicom
    study_key: Mapped[str] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_files: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(Integer, default=0)
    input_dir: Mapped[str] = mapped_column(String(1024))
    result_dir: Mapped[str | None] = mapped_column(String(1024), default=None)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    updated_at: Mapped[float] = mapped_column(Float)
    queued_at: Mapped[float | None] = mapped_column(Float, default=None)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    purged_at: Mapped[float | None] = mapped_column(Float, default=None)


class StowBatch(_Base):
    """The instances of one STOW-RS request for one study, already on disk, waiting for their study's quiet period."""

    __tablename__ = "stow_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    folder: Mapped[str] = mapped_column(String(1024))
    n_files: Mapped[int] = mapped_column(Integer)
    bytes_received: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class JobStore:
    """Every read and write of job state. Build one per process (after a fork: see :meth:`for_process`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _Base.metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # --- creating and reading jobs -------------------------------------------------------------------------------

    def add(self, row: JobRow) -> None:
        with self.session() as session:
            session.add(row)

    def get(self, job_id: str) -> JobRow | None:
        with self.session() as session:
            return session.get(JobRow, job_id)

    def find_by_key(self, study_key: str) -> JobRow | None:
        """The newest job for the same study content and options that is not cancelled or purged."""
        with self.session() as session:
            query = (
                select(JobRow)
                .where(JobRow.study_key == study_key, JobRow.state != JobState.CANCELLED, JobRow.purged_at.is_(None))
                .order_by(JobRow.created_at.desc())
                .limit(1)
            )
            return session.scalars(query).first()

    def page(self, state: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[JobRow], int]:
        with self.session() as session:
            query = select(JobRow)
            count = select(func.count()).select_from(JobRow)
            if state:
                query, count = query.where(JobRow.state == state), count.where(JobRow.state == state)
            rows = session.scalars(query.order_by(JobRow.created_at.desc()).limit(limit).offset(offset)).all()
            return list(rows), int(session.scalar(count) or 0)

    def counts_by_state(self) -> dict[str, int]:
        with self.session() as session:
            return {state: n for state, n in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))}

    def rows(self, *conditions: Any) -> list[JobRow]:
        with self.session() as session:
            return list(session.scalars(select(JobRow).where(*conditions)).all())

    def _update(self, job_id: str, *conditions: Any, **values: Any) -> bool:
        """Compare-and-set: update the job only where the conditions hold; True when it did."""
        values.setdefault("updated_at", time.time())
        with self.session() as session:
            result = session.execute(update(JobRow).where(JobRow.id == job_id, *conditions).values(**values))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- the life of a job ---------------------------------------------------------------------------------------

    def mark_queued(self, job_id: str, *, from_states: Sequence[str] = (JobState.ASSEMBLING,)) -> bool:
        return self._update(job_id, JobRow.state.in_(from_states), state=JobState.QUEUED, queued_at=time.time())

    def claim(self, job_id: str, worker: str, lease_seconds: float) -> int | None:
        """Take a queued job for this worker; the new attempt number, or None when it is not queued any more."""
        now = time.time()
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.state != JobState.QUEUED or row.cancel_requested:
                return None
            attempt = row.attempt + 1
            result = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == JobState.QUEUED, JobRow.attempt == row.attempt)
                .values(
                    state=JobState.RUNNING,
                    attempt=attempt,
                    worker=worker,
                    lease_until=now + lease_seconds,
                    started_at=now,
                    updated_at=now,
                    stage=None,
                    progress=0.0,
                )
            )
            return attempt if result.rowcount else None  # type: ignore[attr-defined]

    def renew(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        """Extend this attempt's lease; False when the job is no longer this attempt's (re-queued or cancelled)."""
        return self._update(
            job_id,
            JobRow.state == JobState.RUNNING,
            JobRow.attempt == attempt,
            JobRow.cancel_requested.is_(False),
            lease_until=time.time() + lease_seconds,
        )

    def progress(self, job_id: str, attempt: int, stage: str, progress: float) -> None:
        self._update(
            job_id, JobRow.state == JobState.RUNNING, JobRow.attempt == attempt, stage=stage, progress=progress
        )

    def finish(self, job_id: str, attempt: int, state: JobState, **values: Any) -> bool:
        """Record this attempt's outcome, only while the attempt still holds the job (never twice)."""
        return self._update(
            job_id,
            JobRow.state == JobState.RUNNING,
            JobRow.attempt == attempt,
            state=state,
            finished_at=time.time(),
            lease_until=None,
            **values,
        )

    def request_cancel(self, job_id: str) -> JobRow | None:
        """Cancel a job: at once when it has not started, at the next stage boundary when it runs."""
        now = time.time()
        self._update(
            job_id,
            JobRow.state.in_((JobState.QUEUED, JobState.ASSEMBLING)),
            state=JobState.CANCELLED,
            reason="cancelled",
            finished_at=now,
        )
        self._update(job_id, JobRow.state == JobState.RUNNING, cancel_requested=True)
        return self.get(job_id)

    def mark_purged(self, job_id: str) -> None:
        self._update(job_id, JobRow.purged_at.is_(None), purged_at=time.time())

    def expired_leases(self, now: float) -> list[JobRow]:
        return self.rows(JobRow.state == JobState.RUNNING, JobRow.lease_until < now)

    def requeue_expired(self, row: JobRow) -> JobState | None:
        """A running job whose lease ran out (its worker died): queue it again, or fail it after max_attempts.

        Returns the new state, or None when another process got there first or the worker renewed meanwhile.
        """
        now = time.time()
        conditions = (JobRow.state == JobState.RUNNING, JobRow.attempt == row.attempt, JobRow.lease_until < now)
        if row.cancel_requested:
            done = self._update(row.id, *conditions, state=JobState.CANCELLED, reason="cancelled", finished_at=now)
            return JobState.CANCELLED if done else None
        if row.attempt >= row.max_attempts:
            times = "once" if row.attempt == 1 else f"{row.attempt} times"
            limit = "1 attempt" if row.max_attempts == 1 else f"{row.max_attempts} attempts"
            error = {
                "error": "WorkerLost",
                "message": f"The worker running this job stopped {times} without finishing it "
                f"(last on {row.worker}); the job is not retried beyond {limit}.",
                "stage": row.stage,
            }
            done = self._update(
                row.id, *conditions, state=JobState.FAILED, reason="worker_lost", error=error, finished_at=now
            )
            return JobState.FAILED if done else None
        done = self._update(row.id, *conditions, state=JobState.QUEUED, queued_at=now, lease_until=None)
        return JobState.QUEUED if done else None

    # --- STOW-RS batches -----------------------------------------------------------------------------------------

    def add_batch(self, batch: StowBatch) -> None:
        with self.session() as session:
            session.add(batch)

    def quiet_studies(self, older_than: float) -> list[str]:
        """Study UIDs with unassigned batches and no batch newer than ``older_than``."""
        with self.session() as session:
            query = (
                select(StowBatch.study_instance_uid)
                .where(StowBatch.job_id.is_(None))
                .group_by(StowBatch.study_instance_uid)
                .having(func.max(StowBatch.received_at) < older_than)
            )
            return list(session.scalars(query).all())

    def assign_batches(self, study_uid: str, job: JobRow) -> list[StowBatch]:
        """In one transaction: create the (assembling) job and give it the study's unassigned batches."""
        with self.session() as session:
            batches = list(
                session.scalars(
                    select(StowBatch)
                    .where(StowBatch.study_instance_uid == study_uid, StowBatch.job_id.is_(None))
                    .with_for_update()
                ).all()
            )
            if not batches:
                return []
            job.n_files = sum(b.n_files for b in batches)
            job.bytes_received = sum(b.bytes_received for b in batches)
            session.add(job)
            session.flush()
            for batch in batches:
                batch.job_id = job.id
            return batches

    def batches_of(self, job_id: str) -> list[StowBatch]:
        with self.session() as session:
            return list(session.scalars(select(StowBatch).where(StowBatch.job_id == job_id)).all())

    def pending_batches(self) -> list[StowBatch]:
        with self.session() as session:
            return list(session.scalars(select(StowBatch).where(StowBatch.job_id.is_(None))).all())

    def delete_batches(self, job_id: str) -> None:
        with self.session() as session:
            for batch in session.scalars(select(StowBatch).where(StowBatch.job_id == job_id)):
                session.delete(batch)

    def totals(self) -> dict[str, Any]:
        """Figures for /metrics: bytes received, studies per model, stage durations of finished jobs."""
        with self.session() as session:
            received = session.scalar(select(func.coalesce(func.sum(JobRow.bytes_received), 0))) or 0
            per_model = dict(
                session.execute(
                    select(JobRow.model, func.count())
                    .where(JobRow.state == JobState.SUCCEEDED, JobRow.model.is_not(None))
                    .group_by(JobRow.model)
                ).all()
            )
            # Only the timings of each report leave the database (a report is tens of kB; /metrics is scraped often).
            timings = session.scalars(select(JobRow.report["timings_s"]).where(JobRow.report.is_not(None))).all()
        stages: dict[str, list[float]] = {}
        for entry in timings:
            for stage, seconds in (entry or {}).items():
                stages.setdefault(stage, []).append(float(seconds))
        return {"bytes_received": int(received), "per_model": per_model, "stages": stages}
