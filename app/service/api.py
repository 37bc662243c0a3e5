"""The HTTP API (FastAPI): POST /synthesize, jobs, results, DICOMweb STOW-RS, health, metrics, the status page."""

from __future__ import annotations

import logging
import tempfile
import uuid
import zipfile
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
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.service.auth import COOKIE, Caller, KeyRing
from app.service.health import readiness
from app.service.intake import (
    DICOM,
    UID_PATTERN,
    Service,
    accept_study,
    is_uid,
    multipart_body,
    store_batches,
    wait_until_finished,
)
from app.service.options import MODEL_NAME_PATTERN, JobOptions
from app.service.settings import Scope, ServiceSettings
from app.service.spool import UploadError
from app.service.store import FINISHED, JobRow, JobState, JobStore
from app.service.supervisor import Supervisor, purge_job
from app.service.views import JobPage, JobView, Problem, job_view
from operators.contrast import FIELD_STRENGTH_T, RELATIVE_DOSE
from operators.roles import AGENT_ALIASES

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


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


#: The API key scheme as the OpenAPI document shows it (``auto_error=False``: :meth:`KeyRing.caller` decides).
_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


# --- the application --------------------------------------------------------------------------------------------


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
            received = await service.receive(request, incoming)
            row, created = accept_study(service, incoming, received, options, force)
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
            row = await wait_until_finished(store, row.id, wait)
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
                multipart_body(files, boundary),
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
        if study is not None and not is_uid(study):
            raise HTTPException(400, f"{study!r} is not a Study Instance UID.")
        service.check_space()
        incoming = service.incoming()
        try:
            received = await service.receive(request, incoming, stow=True)
            response = store_batches(service, incoming, received, study)
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
            PathParam(description="Study Instance UID.", json_schema_extra={"pattern": UID_PATTERN, "maxLength": 64}),
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
