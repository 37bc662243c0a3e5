"""The DICOM node in the HTTP API: received studies (``/v1/receptions``) and the export queue (``/v1/exports``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from app.dicom_node.records import ExportRow, ExportState, NodeStore, Reception, ReceptionState
from app.service.views import iso

__all__ = ["ExportView", "ReceptionView", "add_routes", "export_view", "reception_view"]


class SeriesView(BaseModel):
    series_instance_uid: str
    modality: str | None = None
    number: int | None = None
    description: str | None = None
    sop_class_uid: str | None = None
    count: int = 0


class ReceptionView(BaseModel):
    """A study received over DICOM from one calling AE (no patient identifiers)."""

    id: str
    state: str = Field(description="receiving, routing, routed, not_routed or ignored.")
    study_instance_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    n_instances: int = Field(description="MR instances received (what a job reads).")
    n_other: int = Field(description="Instances of other storage classes: kept, not routed.")
    n_skipped: int = Field(description="GadSynth's own output, or instances already received earlier: not kept.")
    bytes_received: int
    series: list[SeriesView]
    first_received_at: str
    last_received_at: str
    quiet_seconds: float
    quiet_left_s: float | None = Field(default=None, description="Receiving: seconds until it is routed.")
    closed_at: str | None = None
    job_id: str | None = None
    previous_job_id: str | None = None
    rule: str | None = None
    model: str | None = None
    destinations: list[str] = Field(default_factory=list)
    reason: str | None = Field(
        default=None, description="Not routed: no_rule, skipped_by_rule, not_eligible, late_ignored or error."
    )
    message: str | None = None
    selection: list[dict[str, Any]] = Field(default_factory=list)
    purged: bool = False
    links: dict[str, str]


class ReceptionPage(BaseModel):
    items: list[ReceptionView]
    total: int
    limit: int
    offset: int


class ExportView(BaseModel):
    """Sending one job's results to one destination."""

    id: str
    job_id: str
    reception_id: str | None = None
    study_instance_uid: str | None = None
    destination: str
    kind: str = Field(description="dicom (C-STORE) or dicomweb (STOW-RS).")
    state: str = Field(description="pending, sending, done or dead (retry with POST /v1/exports/{id}/retry).")
    attempt: int
    max_attempts: int
    next_attempt_at: str | None = None
    n_instances: int
    n_confirmed: int = Field(description="Instances the destination confirmed.")
    last_error: str | None = None
    created_at: str
    done_at: str | None = None
    links: dict[str, str]


class ExportPage(BaseModel):
    items: list[ExportView]
    total: int
    limit: int
    offset: int


class _Problem(BaseModel):
    detail: str


def reception_view(row: Reception) -> ReceptionView:
    links = {"self": f"/v1/receptions/{row.id}"}
    if row.job_id:
        links |= {"job": f"/v1/jobs/{row.job_id}", "exports": f"/v1/exports?job_id={row.job_id}"}
    quiet_left = None
    if row.state == ReceptionState.RECEIVING:
        quiet_left = round(max(0.0, row.last_received_at + row.quiet_seconds - time.time()), 1)
    return ReceptionView(
        id=row.id,
        state=row.state,
        study_instance_uid=row.study_instance_uid,
        calling_ae=row.calling_ae,
        called_ae=row.called_ae,
        peer=row.peer,
        n_instances=row.n_instances,
        n_other=row.n_other,
        n_skipped=row.n_skipped,
        bytes_received=row.bytes_received,
        series=[SeriesView(series_instance_uid=uid, **entry) for uid, entry in (row.series or {}).items()],
        first_received_at=iso(row.first_received_at) or "",
        last_received_at=iso(row.last_received_at) or "",
        quiet_seconds=row.quiet_seconds,
        quiet_left_s=quiet_left,
        closed_at=iso(row.closed_at),
        job_id=row.job_id,
        previous_job_id=row.previous_job_id,
        rule=row.rule,
        model=row.model,
        destinations=list(row.destinations or []),
        reason=row.reason,
        message=row.message,
        selection=list(row.selection or []),
        purged=row.purged_at is not None,
        links=links,
    )


def export_view(row: ExportRow) -> ExportView:
    links = {"self": f"/v1/exports/{row.id}", "job": f"/v1/jobs/{row.job_id}"}
    if row.state == ExportState.DEAD:
        links["retry"] = f"/v1/exports/{row.id}/retry"
    return ExportView(
        id=row.id,
        job_id=row.job_id,
        reception_id=row.reception_id,
        study_instance_uid=row.study_instance_uid,
        destination=row.destination,
        kind=row.kind,
        state=row.state,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        next_attempt_at=iso(row.next_attempt_at) if row.state == ExportState.PENDING else None,
        n_instances=row.n_instances,
        n_confirmed=len(row.confirmed or []),
        last_error=row.last_error,
        created_at=iso(row.created_at) or "",
        done_at=iso(row.done_at),
        links=links,
    )


def add_routes(app: FastAPI, store: NodeStore, read: Any, write: Any, errors: dict[int | str, dict[str, Any]]) -> None:
    """Add the node's routes to the service's application (``read`` / ``write``: its auth dependencies)."""
    missing = errors | {404: {"model": _Problem, "description": "No such reception or export."}}

    @app.get("/v1/receptions", tags=["dicom"], response_model=ReceptionPage, responses=errors)
    def list_receptions(
        state: Annotated[
            ReceptionState | None, Query(description="Only receptions in this state (receiving: being received).")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        _: Any = read,
    ) -> ReceptionPage:
        """Studies received over DICOM, newest first: what is being received (with instance counts) and what became
        of each (job, or why not, with the series selection log)."""
        rows, total = store.page_receptions(state.value if state else None, limit, offset)
        return ReceptionPage(items=[reception_view(r) for r in rows], total=total, limit=limit, offset=offset)

    @app.get("/v1/receptions/{reception_id}", tags=["dicom"], response_model=ReceptionView, responses=missing)
    def get_reception(reception_id: str, _: Any = read) -> ReceptionView:
        row = store.reception(reception_id)
        if row is None:
            raise HTTPException(404, f"No reception {reception_id!r}.")
        return reception_view(row)

    @app.get("/v1/exports", tags=["dicom"], response_model=ExportPage, responses=errors)
    def list_exports(
        state: Annotated[ExportState | None, Query(description="Only exports in this state (dead: failed).")] = None,
        job_id: Annotated[str | None, Query(max_length=32, description="Only the exports of this job.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        _: Any = read,
    ) -> ExportPage:
        """The export queue, newest first: each job's results to each destination, attempts and last error."""
        rows, total = store.page_exports(state.value if state else None, job_id, limit, offset)
        return ExportPage(items=[export_view(r) for r in rows], total=total, limit=limit, offset=offset)

    @app.get("/v1/exports/{export_id}", tags=["dicom"], response_model=ExportView, responses=missing)
    def get_export(export_id: str, _: Any = read) -> ExportView:
        row = store.export(export_id)
        if row is None:
            raise HTTPException(404, f"No export {export_id!r}.")
        return export_view(row)

    @app.post(
        "/v1/exports/{export_id}/retry",
        tags=["dicom"],
        response_model=ExportView,
        responses=missing | {409: {"model": _Problem, "description": "The export is not dead."}},
    )
    def retry_export(export_id: str, _: Any = write) -> ExportView:
        """Send a dead export again (its attempts count from zero; instances already confirmed are not resent)."""
        row = store.retry_export(export_id)
        if row is not None:
            return export_view(row)
        existing = store.export(export_id)
        if existing is None:
            raise HTTPException(404, f"No export {export_id!r}.")
        raise HTTPException(409, f"Export {export_id} is {existing.state}; only a dead export can be retried.")
