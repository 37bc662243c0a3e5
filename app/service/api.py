"""The HTTP API (FastAPI): POST /synthesize, jobs, results, DICOMweb STOW-RS, health, metrics, the status page."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.service.auth import COOKIE, Caller, KeyRing
from app.service.options import MODEL_NAME_PATTERN, JobOptions
from app.service.settings import Scope, ServiceSettings
from app.service.spool import Incoming, UploadError, fsync_dir, move_durably, remove_tree, study_key
from app.service.store import FINISHED, JobRow, JobState, JobStore, StowBatch, new_job_id
from app.service.supervisor import Supervisor, job_folder, purge_job
from app.service.upload import Received, receive_body
from operators.contrast import FIELD_STRENGTH_T, RELATIVE_DOSE
from operators.roles import AGENT_ALIASES

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'

_STUDY_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
        "multipart/related": {"schema": {"type": "string", "format": "binary"}},
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    },
}
_STOW_BODY = {"required": True, "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}}


# --- what the API returns ---------------------------------------------------------------------------------------


class JobError(BaseModel):
    error: str | None = None
    message: str | None = None
    stage: str | None = None


class JobView(BaseModel):
    """A job as the API shows it (no patient identifiers, ever)."""

    id: str
    state: str = Field(description="assembling, queued, running, succeeded, failed or cancelled.")
    reason: str | None = Field(default=None, description="Why it failed: not_eligible, error, worker_lost, cancelled.")
    source: str
    study_instance_uid: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    age_s: float
    stage: str | None = None
    progress: float
    attempt: int = Field(description="How many times a worker started it (more than 1 after a crash).")
    max_attempts: int
    worker: str | None = None
    model: str | None = None
    options: dict[str, Any]
    n_files: int
    bytes_received: int
    warnings: list[str] = Field(default_factory=list)
    selection: list[dict[str, Any]] = Field(default_factory=list)
    model_choice: dict[str, Any] | None = None
    error: JobError | None = None
    purged: bool = False
    links: dict[str, str]


class JobPage(BaseModel):
    items: list[JobView]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    detail: str


#: The API key scheme as the OpenAPI document shows it (``auto_error=False``: :meth:`KeyRing.caller` decides).
_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds") if seconds else None


def job_view(row: JobRow) -> JobView:
    report = row.report or {}
    base = f"/v1/jobs/{row.id}"
    links = {"self": base, "report": f"{base}/report"}
    if row.state == JobState.SUCCEEDED and not row.purged_at:
        links |= {"result": f"{base}/result", "preview": f"{base}/preview.png"}
    if row.source == "dicom" and row.study_key.startswith("dicom:"):
        links |= {"reception": f"/v1/receptions/{row.study_key[6:]}", "exports": f"/v1/exports?job_id={row.id}"}
    return JobView(
        id=row.id,
        state=row.state,
        reason=row.reason,
        source=row.source,
        study_instance_uid=row.study_instance_uid,
        created_at=_iso(row.created_at) or "",
        started_at=_iso(row.started_at),
        finished_at=_iso(row.finished_at),
        age_s=round(time.time() - row.created_at, 1),
        stage=row.stage,
        progress=row.progress,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        worker=row.worker,
        model=row.model,
        options=row.options or {},
        n_files=row.n_files,
        bytes_received=row.bytes_received,
        warnings=report.get("warnings", []),
        selection=report.get("selection", []),
        model_choice=report.get("model_choice"),
        error=JobError(**row.error) if row.error else None,
        purged=row.purged_at is not None,
        links=links,
    )


# --- the application --------------------------------------------------------------------------------------------


class Service:
    """What every request handler shares: settings, job store, queue, keys."""

    def __init__(self, settings: ServiceSettings, keys: KeyRing, store: JobStore, queue: Any) -> None:
        self.settings, self.keys, self.store, self.queue = settings, keys, store, queue
        #: The running DICOM node (app.dicom_node.runtime.DicomNode), for /readyz; None when there is none here.
        self.dicom: Any = None

    def check_space(self) -> None:
        free = shutil.disk_usage(self.settings.spool).free
        if free < self.settings.spool_min_free_mb * 2**20:
            raise UploadError(
                507,
                f"The spool disk has {free // 2**20} MiB free, below the floor of {self.settings.spool_min_free_mb}.",
            )

    def incoming(self) -> Incoming:
        return Incoming(self.settings.spool, self.settings.max_files, self.settings.max_upload_bytes)


def create_app(
    settings: ServiceSettings,
    keys: KeyRing,
    store: JobStore,
    queue: Any,
    *,
    supervise: bool = True,
    dicom: Any = None,
) -> FastAPI:
    """The FastAPI application over a job store and queue; ``supervise`` runs the :class:`Supervisor` with it;
    ``dicom`` is the DICOM node running beside it (its checks join /readyz)."""
    from app.dicom_node.records import NodeStore

    service = Service(settings, keys, store, queue)
    service.dicom = dicom
    node_store = dicom.store if dicom is not None else NodeStore(store)
    settings.spool.mkdir(parents=True, exist_ok=True)
    (settings.spool / "tmp").mkdir(exist_ok=True)  # result zips are built there, also before any upload came in
    supervisor = Supervisor(settings, store, queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        if supervise:
            supervisor.start()
        yield
        supervisor.stop()

    app = FastAPI(
        title="GadSynth",
        version=_version(),
        summary="Synthetic contrast-enhanced brain MRI (research use, not for diagnosis).",
        lifespan=lifespan,
        openapi_url=None,  # served below, behind a key like every route but /healthz
        docs_url=None,  # Swagger UI would load its scripts from a CDN, which a hospital network may not reach
        redoc_url=None,
    )
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_headers=["Authorization"])

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:  # Starlette's Allow names the methods of the first route only; list every route's
            routes = [
                r for r in app.router.routes if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE
            ]
            allow = ", ".join(sorted({m for r in routes for m in r.methods or ()}))
            return JSONResponse({"detail": exc.detail}, status_code=405, headers={"Allow": allow})
        return await http_exception_handler(request, exc)

    def auth(scope: Scope) -> Any:
        def check(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> Caller:
            return keys.caller(request, scope)  # _BEARER only documents the scheme: the check is KeyRing's

        return Depends(check)

    read, write = auth("read"), auth("write")
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "No or invalid API key."},
        403: {"model": Problem, "description": "The key lacks the scope."},
    }

    # --- health --------------------------------------------------------------------------------------------------

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Caller = read) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/healthz", tags=["health"], summary="Alive (no key needed).")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Ready: models, queue, database, spool disk, ONNX providers.",
        responses=errors | {503: {"description": "Not ready; the failing checks are listed."}},
    )
    def readyz(_: Caller = read) -> JSONResponse:
        checks = readiness(service)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics.",
        responses=errors | {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        response_class=Response,
    )
    def metrics(_: Caller = read) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from app.service.metrics import registry

        return Response(generate_latest(registry(store, queue)), media_type=CONTENT_TYPE_LATEST)

    # --- posting a study -----------------------------------------------------------------------------------------

    def job_options(
        model: Annotated[
            str | None,
            Query(pattern=MODEL_NAME_PATTERN, description="Model name; default: chosen by the series found."),
        ] = None,
        outputs: Annotated[
            list[Literal["sc", "beyond_dose"]] | None,
            Query(description="Extra outputs: sc (Secondary Capture), beyond_dose."),
        ] = None,
        dose: Annotated[
            float | None,
            Query(
                ge=RELATIVE_DOSE[0],
                le=RELATIVE_DOSE[1],
                description="Relative dose of the low-dose series if its header has none.",
            ),
        ] = None,
        agent: Annotated[
            str | None,
            Query(
                description="Contrast agent if the headers name none (case does not matter).",
                json_schema_extra={"enum": sorted(AGENT_ALIASES)},
            ),
        ] = None,
        field_strength_t: Annotated[
            float | None,
            Query(
                ge=FIELD_STRENGTH_T[0],
                le=FIELD_STRENGTH_T[1],
                description="Field strength (T) if the headers say none.",
            ),
        ] = None,
    ) -> JobOptions:
        values: dict[str, Any] = {"model": model, "outputs": outputs or [], "dose": dose, "agent": agent}
        values["field_strength_t"] = field_strength_t
        try:
            return JobOptions.model_validate({k: v for k, v in values.items() if v not in (None, [])})
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise HTTPException(422, f"Invalid option: {detail}") from None

    async def synthesize(
        request: Request,
        options: JobOptions = Depends(job_options),  # noqa: B008 - FastAPI's dependency declaration
        wait: float = Query(  # the bound is a setting: not in the annotation, which is evaluated later
            0, ge=0, le=settings.max_wait_seconds, description="Seconds to wait for the result (0: answer 202 at once)."
        ),
        force: Annotated[bool, Query(description="Run again even when the same study was posted before.")] = False,
        _: Caller = write,
    ) -> Response:
        if wait > settings.max_wait_seconds:
            raise HTTPException(422, f"wait may be at most {settings.max_wait_seconds:g} s. Found {wait:g}.")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes:
            raise UploadError(413, f"The body is {length} bytes; the limit is {settings.max_upload_bytes}.")
        service.check_space()
        incoming = service.incoming()
        try:
            received = await receive_body(
                request.headers.get("content-type"),
                request.stream(),
                incoming,
                zip_max_bytes=settings.zip_max_bytes,
                zip_max_ratio=settings.zip_max_ratio,
            )
            row, created = _accept_study(service, incoming, received, options, force)
        except BaseException:
            incoming.discard()
            raise
        location = f"/v1/jobs/{row.id}"
        if created:
            logger.info(
                "job %s: received study %s (%d files, %d bytes)",
                row.id,
                row.study_instance_uid,
                row.n_files,
                row.bytes_received,
            )
        else:
            logger.info("job %s: same study posted again; existing job returned", row.id)
        if wait > 0:
            row = await _wait(store, row.id, wait)
            if row.state == JobState.SUCCEEDED:
                return result_response(row, request.headers.get("accept"))
            if row.state == JobState.FAILED and row.reason == "not_eligible":
                return JSONResponse(job_view(row).model_dump(), status_code=422, headers={"Location": location})
        status = 202 if row.state not in FINISHED else 200
        return JSONResponse(job_view(row).model_dump(), status_code=status, headers={"Location": location})

    synth_doc: dict[str, Any] = {
        "tags": ["jobs"],
        "openapi_extra": {"requestBody": _STUDY_BODY},
        "responses": errors
        | {
            200: {
                "description": "The result (zip, or multipart/related by Accept) when `wait` was met; or a "
                "finished job posted before.",
                "model": JobView,
            },
            202: {"description": "Accepted: the job, with its Location.", "model": JobView},
            400: {"model": Problem, "description": "A part is not DICOM, a bad zip, or several studies."},
            413: {"model": Problem, "description": "Too large or too many files."},
            415: {"model": Problem, "description": "Unsupported Content-Type."},
            422: {
                "description": "Invalid option; or (with wait) the study is not eligible: the job says why.",
                "content": {
                    "application/json": {
                        "schema": {"anyOf": [_ref("HTTPValidationError"), _ref("Problem"), _ref("JobView")]}
                    }
                },
            },
            507: {"model": Problem, "description": "The spool disk is below its floor."},
        },
        "response_model": None,
    }
    app.post("/synthesize", summary="Post a study; synthesize its contrast-enhanced T1.", **synth_doc)(synthesize)
    app.post("/v1/synthesize", summary="Same as /synthesize.", **synth_doc)(synthesize)

    # --- jobs ----------------------------------------------------------------------------------------------------

    @app.get("/v1/jobs", tags=["jobs"], response_model=JobPage, responses=errors)
    def list_jobs(
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        _: Caller = read,
    ) -> JobPage:
        rows, total = store.page(state.value if state else None, limit, offset)
        return JobPage(items=[job_view(r) for r in rows], total=total, limit=limit, offset=offset)

    def get_row(job_id: str) -> JobRow:
        row = store.get(job_id) if len(job_id) <= 32 else None
        if row is None:
            raise HTTPException(404, f"No job {job_id!r}.")
        return row

    not_found = errors | {404: {"model": Problem, "description": "No such job."}}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, responses=not_found)
    def get_job(job_id: str, _: Caller = read) -> JobView:
        return job_view(get_row(job_id))

    def finished_files(row: JobRow) -> Path:
        if row.purged_at:
            raise HTTPException(410, f"Job {row.id}: its files were purged.")
        if row.state != JobState.SUCCEEDED or not row.result_dir:
            raise HTTPException(409, f"Job {row.id} is {row.state}; results exist once it has succeeded.")
        return Path(row.result_dir)

    result_errors = not_found | {
        409: {"model": Problem, "description": "Not succeeded (yet)."},
        410: {"model": Problem, "description": "Purged."},
    }

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        summary="The result DICOM: zip by default, multipart/related when Accept asks for it.",
        responses=result_errors | {200: {"content": {"application/zip": {}, "multipart/related": {}}}},
        response_class=Response,
    )
    def get_result(job_id: str, request: Request, _: Caller = read) -> Response:
        return result_response(get_row(job_id), request.headers.get("accept"))

    @app.get("/v1/jobs/{job_id}/report", tags=["jobs"], summary="report.json of the job.", responses=result_errors)
    def get_report(job_id: str, _: Caller = read) -> JSONResponse:
        row = get_row(job_id)
        if row.report is None:
            raise HTTPException(409, f"Job {row.id} is {row.state}; it has no report yet.")
        return JSONResponse(row.report)

    @app.get(
        "/v1/jobs/{job_id}/preview.png",
        tags=["jobs"],
        responses=result_errors | {200: {"content": {"image/png": {}}}},
        response_class=FileResponse,
    )
    def get_preview(job_id: str, _: Caller = read) -> FileResponse:
        path = finished_files(get_row(job_id)) / "preview.png"
        if not path.is_file():
            raise HTTPException(404, f"Job {job_id} has no preview.")
        return FileResponse(path, media_type="image/png")

    @app.delete(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="Cancel the job (if it has not finished), then purge its files.",
        response_model=JobView,
        responses=not_found
        | {202: {"description": "Cancelling: the worker stops at the next stage.", "model": JobView}},
    )
    def delete_job(job_id: str, _: Caller = write) -> JSONResponse:
        row = get_row(job_id)
        row = store.request_cancel(row.id) or row
        if row.state == JobState.RUNNING:
            return JSONResponse(job_view(row).model_dump(), status_code=202)
        purge_job(store, settings, row)
        return JSONResponse(job_view(store.get(row.id) or row).model_dump(), status_code=200)

    def result_response(row: JobRow, accept: str | None) -> Response:
        folder = finished_files(row)
        files = sorted(p for p in folder.rglob("*.dcm") if p.is_file())
        if accept and "multipart/related" in accept.lower():
            boundary = uuid.uuid4().hex
            return StreamingResponse(
                _multipart(files, boundary),
                media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
            )
        handle = tempfile.NamedTemporaryFile(dir=settings.spool / "tmp", suffix=".zip", delete=False)  # noqa: SIM115
        with handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                bundle.write(path, path.relative_to(folder).as_posix())
        return FileResponse(
            handle.name,
            media_type="application/zip",
            filename=f"gadsynth-{row.id}.zip",
            background=BackgroundTask(Path(handle.name).unlink, missing_ok=True),
        )

    # --- DICOMweb STOW-RS ----------------------------------------------------------------------------------------

    async def stow(request: Request, study: str | None = None) -> JSONResponse:
        if study is not None and not _is_uid(study):
            raise HTTPException(400, f"{study!r} is not a Study Instance UID.")
        service.check_space()
        incoming = service.incoming()
        try:
            received = await receive_body(
                request.headers.get("content-type"),
                request.stream(),
                incoming,
                zip_max_bytes=settings.zip_max_bytes,
                zip_max_ratio=settings.zip_max_ratio,
                stow=True,
            )
            response = _store_batches(service, incoming, received, study)
        finally:
            incoming.discard()
        return response

    stow_doc: dict[str, Any] = {
        "tags": ["dicomweb"],
        "openapi_extra": {"requestBody": _STOW_BODY},
        "responses": errors
        | {
            200: {"description": "All stored.", "content": {"application/dicom+json": {}}},
            202: {
                "description": "Some stored; FailedSOPSequence says which not.",
                "content": {"application/dicom+json": {}},
            },
            409: {"description": "None stored.", "content": {"application/dicom+json": {}}},
            400: {"model": Problem},
            413: {"model": Problem},
            415: {"model": Problem},
            507: {"model": Problem},
        },
        "response_class": JSONResponse,
    }

    @app.post("/dicomweb/studies", summary="STOW-RS: store instances.", **stow_doc)
    async def stow_any(request: Request, _: Caller = write) -> JSONResponse:
        return await stow(request)

    @app.post("/dicomweb/studies/{study}", summary="STOW-RS: store instances of one study.", **stow_doc)
    async def stow_study(
        request: Request,
        study: Annotated[
            str,  # checked by _is_uid (400, as DICOMweb answers), so the pattern is documentation only
            PathParam(description="Study Instance UID.", json_schema_extra={"pattern": _UID_PATTERN, "maxLength": 64}),
        ],
        _: Caller = write,
    ) -> JSONResponse:
        return await stow(request, study)

    # --- the DICOM node: receptions and exports ------------------------------------------------------------------

    from app.dicom_node.api import add_routes as add_dicom_routes

    add_dicom_routes(app, node_store, read, write, errors)

    # --- the status page -----------------------------------------------------------------------------------------

    from app.dicom_node.page import dicom_sections
    from app.service.page import login_page, status_page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        try:
            keys.caller(request, "read")
        except HTTPException:
            return HTMLResponse(login_page(), status_code=200)
        rows, total = store.page(None, 100, 0)
        return HTMLResponse(status_page([job_view(r) for r in rows], total, extra=dicom_sections(node_store)))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        key = str(form.get("key") or "")
        caller = keys.identify(key) if key else None
        if caller is None:
            return HTMLResponse(login_page("That key is not valid."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=secure, max_age=12 * 3600)
        return response

    return app


def _version() -> str:
    from operators import __version__

    return __version__


_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def _is_uid(value: str) -> bool:
    import re

    return bool(re.fullmatch(_UID_PATTERN, value)) and len(value) <= 64


def _multipart(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: {DICOM}\r\nContent-Length: {path.stat().st_size}\r\n\r\n".encode()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def _wait(store: JobStore, job_id: str, seconds: float) -> JobRow:
    deadline = time.monotonic() + seconds
    while True:
        row = store.get(job_id)
        assert row is not None
        if row.state in FINISHED or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.25)


def _accept_study(
    service: Service, incoming: Incoming, received: Received, options: JobOptions, force: bool
) -> tuple[JobRow, bool]:
    """Turn a received upload into a job (or find the job it already is). Raises UploadError for a bad upload."""
    refused = received.refused
    if refused:
        part = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise UploadError(400, f"{part.label} {part.problem}{more}. Nothing was kept; post DICOM files only.")
    if not incoming.instances:
        raise UploadError(400, "The request holds no DICOM instances.")
    studies = incoming.study_uids()
    if len(studies) > 1:
        raise UploadError(
            400, f"The request holds {len(studies)} studies ({', '.join(studies[:3])}...); post one study per request."
        )
    option_values = options.model_dump(mode="json", exclude_none=True)
    key = study_key(incoming.instances, option_values)
    store = service.store
    if not force:
        existing = store.find_by_key(key)
        if existing is not None:
            incoming.discard()
            return existing, False
    job_id = new_job_id()
    folder = job_folder(service.settings, job_id)
    folder.mkdir(parents=True)
    incoming.commit(folder / "input")
    now = time.time()
    row = JobRow(
        id=job_id,
        state=JobState.QUEUED,
        source="http",
        study_key=key,
        study_instance_uid=studies[0],
        options=option_values,
        n_files=len(incoming.instances),
        bytes_received=incoming.bytes_received,
        input_dir=str(folder / "input"),
        max_attempts=service.settings.max_attempts,
        created_at=now,
        updated_at=now,
        queued_at=now,
    )
    store.add(row)
    service.queue.enqueue(job_id)
    return row, True


#: STOW-RS failure reasons (PS3.18 / PS3.4 status codes).
_CANNOT_UNDERSTAND = 0xC000
_STUDY_MISMATCH = 0xA900


def _store_batches(service: Service, incoming: Incoming, received: Received, study: str | None) -> JSONResponse:
    """Keep the instances of a STOW-RS request as one batch per study; answer with the STOW-RS response dataset."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    by_study: dict[str, list[Path]] = {}
    for part in received.parts:
        instance = part.instance
        if instance is None:
            failed.append({"00081197": {"vr": "US", "Value": [_CANNOT_UNDERSTAND]}})
            logger.warning("STOW-RS: %s refused: %s", part.label, part.problem)
            continue
        item = {
            "00081150": {"vr": "UI", "Value": [instance.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [instance.sop_instance_uid]},
        }
        if study is not None and instance.study_instance_uid != study:
            failed.append(item | {"00081197": {"vr": "US", "Value": [_STUDY_MISMATCH]}})
            continue
        by_study.setdefault(instance.study_instance_uid, []).append(instance.path)
        referenced.append(item)
    if not received.parts:
        raise UploadError(400, "The STOW-RS request holds no parts.")
    now = time.time()
    for study_uid, paths in by_study.items():
        batch_id = new_job_id()
        staging = service.settings.spool / "stow" / f"{batch_id}.tmp"
        staging.mkdir(parents=True)
        for path in paths:
            path.rename(staging / path.name)
        fsync_dir(staging)
        target = service.settings.spool / "stow" / batch_id
        move_durably(staging, target)
        size = sum(p.stat().st_size for p in target.iterdir())
        batch = StowBatch(
            id=batch_id,
            study_instance_uid=study_uid,
            folder=str(target),
            n_files=len(paths),
            bytes_received=size,
            received_at=now,
        )
        try:
            service.store.add_batch(batch)
        except Exception:
            remove_tree(target)
            raise
        logger.info("STOW-RS: %d instances of study %s kept (batch %s)", len(paths), study_uid, batch_id)
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if referenced else 409)
    return JSONResponse(body, status_code=status, media_type="application/dicom+json")


def readiness(service: Service) -> dict[str, dict[str, Any]]:
    """Each readiness check: ok and what was found."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        service.store.ping()
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        checks["queue"] = {"ok": True, "depth": service.queue.depth()}
    except Exception as exc:
        checks["queue"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    free_mb = shutil.disk_usage(service.settings.spool).free // 2**20
    floor = service.settings.spool_min_free_mb
    checks["spool"] = {"ok": free_mb >= floor, "free_mb": free_mb, "floor_mb": floor}
    checks["models"] = _models_check()
    if service.dicom is not None:
        try:
            checks.update(service.dicom.readiness())
        except Exception as exc:
            checks["dicom_node"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        from app.config import load_settings
        from operators.inference import select_providers

        checks["onnxruntime"] = {"ok": True, "providers": select_providers(load_settings().providers)}
    except Exception as exc:
        checks["onnxruntime"] = {"ok": False, "detail": str(exc)[:300]}
    return checks


_models_verified: dict[str, Any] = {}


def _models_check() -> dict[str, Any]:
    """Every installed model's file matches its manifest's sha256 (checked once per process and model file)."""
    from app.config import load_settings
    from operators.model_manifest import ModelManifest

    try:
        models_dir = load_settings().models_dir
    except Exception as exc:
        return {"ok": False, "detail": str(exc)[:300]}
    found: dict[str, str] = {}
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        stamp = f"{manifest_path}:{manifest_path.stat().st_mtime_ns}"
        if stamp not in _models_verified:
            try:
                ModelManifest.load(manifest_path)
                _models_verified[stamp] = "verified"
            except Exception as exc:
                _models_verified[stamp] = f"failed: {exc}"[:300]
        found[manifest_path.parent.name] = _models_verified[stamp]
    ok = bool(found) and all(v == "verified" for v in found.values())
    return {"ok": ok, "models": found}
