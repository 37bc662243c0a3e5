"""The DICOM node's tables, in the job database (same engine as :class:`app.service.store.JobStore`).

``dicom_receptions``: one row per study being received from one calling AE (the quiet-period unit), from the first
instance until it became a job or was turned away, with its counts, routing decision and selection log.
``exports``: one row per (job, destination): the persistent export queue with attempts, backoff and dead-letter.

Every change that two threads or processes may race for is a compare-and-set (``UPDATE ... WHERE state = ... AND
attempt = ...``), as in the job store: a reception becomes a job once, an export attempt records its outcome only
while it still holds the export.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.service.store import JobRow, JobStore

__all__ = ["ExportRow", "ExportState", "NodeStore", "Reception", "ReceptionState"]


class ReceptionState(enum.StrEnum):
    RECEIVING = "receiving"  # instances arriving; becomes routing after the quiet period
    ROUTING = "routing"  # the node reads the study and applies the routing rules
    ROUTED = "routed"  # a job was made (job_id)
    NOT_ROUTED = "not_routed"  # no rule matched, a rule said skip, or the study is not eligible (reason, message)
    IGNORED = "ignored"  # late instances under the ignore policy


CLOSED = (ReceptionState.ROUTED, ReceptionState.NOT_ROUTED, ReceptionState.IGNORED)


class ExportState(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"  # an exporter holds it (lease_until)
    DONE = "done"  # the peer confirmed every instance
    DEAD = "dead"  # max attempts failed; POST /v1/exports/{id}/retry sends it again


class _Base(DeclarativeBase):
    pass


class Reception(_Base):
    """One study received from one calling AE (times in seconds since the epoch)."""

    __tablename__ = "dicom_receptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(64))
    #: host:pid of the node process receiving it (a restarted node adopts the receptions of a dead one).
    node: Mapped[str] = mapped_column(String(128))
    folder: Mapped[str] = mapped_column(String(1024))
    quiet_seconds: Mapped[float] = mapped_column(Float)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    #: Instances of storage classes that are kept but not routed (not MR images).
    n_other: Mapped[int] = mapped_column(Integer, default=0)
    #: Instances recognised as GadSynth's own output, or already received in an earlier reception: not kept.
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(Integer, default=0)
    #: Series UID -> {modality, number, description, sop_class, count}.
    series: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, default=None)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    #: The job of an earlier reception of the same study that this one extends (late instances).
    previous_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    rule: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Why it was not routed: no_rule, skipped_by_rule, not_eligible, late_ignored, error.
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    selection: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: Every SOP Instance UID the study held when it was closed: the same instance sent again starts nothing.
    sop_instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    exports_created: Mapped[bool] = mapped_column(Boolean, default=False)
    purged_at: Mapped[float | None] = mapped_column(Float, default=None)
    updated_at: Mapped[float] = mapped_column(Float)


class ExportRow(_Base):
    """Sending one job's results to one destination."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    reception_id: Mapped[str | None] = mapped_column(String(32), default=None)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), default=None)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    #: SOP Instance UIDs the destination confirmed (an attempt after a failure sends only the others).
    confirmed: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    updated_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float, default=None)


class NodeStore:
    """Reads and compare-and-set writes of the node's tables, on the job store's engine."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.engine = jobs.engine
        _Base.metadata.create_all(self.engine)

    def session(self) -> AbstractContextManager[Session]:
        """A transaction of the job store (one engine, one session factory for both)."""
        return self.jobs.session()

    # --- receptions ----------------------------------------------------------------------------------------------

    def add_reception(self, row: Reception) -> None:
        with self.session() as session:
            session.add(row)

    def reception(self, reception_id: str) -> Reception | None:
        with self.session() as session:
            return session.get(Reception, reception_id)

    def receptions(self, *conditions: Any) -> list[Reception]:
        with self.session() as session:
            query = select(Reception).where(*conditions).order_by(Reception.first_received_at)
            return list(session.scalars(query).all())

    def page_receptions(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Reception], int]:
        with self.session() as session:
            query, count = select(Reception), select(func.count()).select_from(Reception)
            if state:
                query, count = query.where(Reception.state == state), count.where(Reception.state == state)
            rows = session.scalars(query.order_by(Reception.first_received_at.desc()).limit(limit).offset(offset))
            return list(rows.all()), int(session.scalar(count) or 0)

    def update_reception(self, reception_id: str, *conditions: Any, **values: Any) -> bool:
        """Compare-and-set on one reception; True when the conditions held and it was changed."""
        values.setdefault("updated_at", time.time())
        with self.session() as session:
            result = session.execute(
                update(Reception).where(Reception.id == reception_id, *conditions).values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def closed_instances(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of every closed reception of a study (instances sent again are not new)."""
        with self.session() as session:
            lists = session.scalars(
                select(Reception.sop_instance_uids).where(
                    Reception.study_instance_uid == study_uid, Reception.state.in_(CLOSED)
                )
            ).all()
        return {uid for uids in lists for uid in (uids or [])}

    def closed_receptions(self, study_uid: str) -> list[Reception]:
        """The closed receptions of a study whose files are kept, oldest first (what a new reception extends)."""
        with self.session() as session:
            query = (
                select(Reception)
                .where(
                    Reception.study_instance_uid == study_uid,
                    Reception.state.in_(CLOSED),
                    Reception.purged_at.is_(None),
                )
                .order_by(Reception.closed_at)
            )
            return list(session.scalars(query).all())

    def route(self, reception_id: str, job: JobRow, **values: Any) -> bool:
        """In one transaction: the reception (routing) becomes routed with ``job``, and the job row is added."""
        now = time.time()
        with self.session() as session:
            result = session.execute(
                update(Reception)
                .where(Reception.id == reception_id, Reception.state == ReceptionState.ROUTING)
                .values(state=ReceptionState.ROUTED, job_id=job.id, closed_at=now, updated_at=now, **values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            session.add(job)
            return True

    def create_exports(self, reception_id: str, rows: Sequence[ExportRow]) -> bool:
        """Mark a reception's exports created and add them, in one transaction (never twice)."""
        with self.session() as session:
            result = session.execute(
                update(Reception)
                .where(Reception.id == reception_id, Reception.exports_created.is_(False))
                .values(exports_created=True, updated_at=time.time())
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            for row in rows:
                session.add(row)
            return True

    # --- exports -------------------------------------------------------------------------------------------------

    def export(self, export_id: str) -> ExportRow | None:
        with self.session() as session:
            return session.get(ExportRow, export_id)

    def page_exports(
        self, state: str | None = None, job_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[ExportRow], int]:
        with self.session() as session:
            conditions = []
            if state:
                conditions.append(ExportRow.state == state)
            if job_id:
                conditions.append(ExportRow.job_id == job_id)
            query = select(ExportRow).where(*conditions).order_by(ExportRow.created_at.desc())
            count = select(func.count()).select_from(ExportRow).where(*conditions)
            rows = session.scalars(query.limit(limit).offset(offset)).all()
            return list(rows), int(session.scalar(count) or 0)

    def due_exports(self, now: float) -> list[ExportRow]:
        """Exports to attempt now: pending ones whose time has come, and sending ones whose exporter died."""
        with self.session() as session:
            query = (
                select(ExportRow)
                .where(
                    ((ExportRow.state == ExportState.PENDING) & (ExportRow.next_attempt_at <= now))
                    | ((ExportRow.state == ExportState.SENDING) & (ExportRow.lease_until < now))
                )
                .order_by(ExportRow.next_attempt_at)
                .limit(20)
            )
            return list(session.scalars(query).all())

    def claim_export(self, row: ExportRow, worker: str, lease_seconds: float) -> int | None:
        """Take a due export for this worker; the attempt number, or None when someone else took it."""
        now = time.time()
        attempt = row.attempt + 1
        with self.session() as session:
            result = session.execute(
                update(ExportRow)
                .where(ExportRow.id == row.id, ExportRow.state == row.state, ExportRow.attempt == row.attempt)
                .values(
                    state=ExportState.SENDING,
                    attempt=attempt,
                    worker=worker,
                    lease_until=now + lease_seconds,
                    updated_at=now,
                )
            )
            return attempt if result.rowcount else None  # type: ignore[attr-defined]

    def update_export(self, export_id: str, attempt: int, **values: Any) -> bool:
        """Change an export this attempt still holds (state sending, same attempt)."""
        values.setdefault("updated_at", time.time())
        with self.session() as session:
            result = session.execute(
                update(ExportRow)
                .where(
                    ExportRow.id == export_id,
                    ExportRow.state == ExportState.SENDING,
                    ExportRow.attempt == attempt,
                )
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def retry_export(self, export_id: str) -> ExportRow | None:
        """A dead export back to pending, its attempts counted from zero; None when it is not dead."""
        now = time.time()
        with self.session() as session:
            result = session.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id, ExportRow.state == ExportState.DEAD)
                .values(state=ExportState.PENDING, attempt=0, next_attempt_at=now, lease_until=None, updated_at=now)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return None
            return session.get(ExportRow, export_id)

    def export_counts(self) -> dict[str, int]:
        with self.session() as session:
            return dict(session.execute(select(ExportRow.state, func.count()).group_by(ExportRow.state)).all())  # type: ignore[arg-type]
