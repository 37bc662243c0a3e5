"""Turning a received upload into a job (POST /synthesize) or into STOW-RS batches, and what the handlers share."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from app.service.auth import KeyRing
from app.service.options import JobOptions
from app.service.settings import ServiceSettings
from app.service.spool import Incoming, UploadError, fsync_dir, move_durably, remove_tree, study_key
from app.service.store import FINISHED, JobRow, JobState, JobStore, StowBatch, new_job_id
from app.service.supervisor import job_folder
from app.service.upload import Received, receive_body

__all__ = [
    "DICOM",
    "UID_PATTERN",
    "Service",
    "accept_study",
    "is_uid",
    "multipart_body",
    "store_batches",
    "wait_until_finished",
]

logger = logging.getLogger(__name__)

DICOM = "application/dicom"


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

    async def receive(self, request: Request, incoming: Incoming, *, stow: bool = False) -> Received:
        """Stream a request's body into ``incoming`` under the settings' limits (see :func:`receive_body`)."""
        return await receive_body(
            request.headers.get("content-type"),
            request.stream(),
            incoming,
            zip_max_bytes=self.settings.zip_max_bytes,
            zip_max_ratio=self.settings.zip_max_ratio,
            stow=stow,
        )


UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def is_uid(value: str) -> bool:
    return bool(re.fullmatch(UID_PATTERN, value)) and len(value) <= 64


def multipart_body(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: {DICOM}\r\nContent-Length: {path.stat().st_size}\r\n\r\n".encode()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def wait_until_finished(store: JobStore, job_id: str, seconds: float) -> JobRow:
    deadline = time.monotonic() + seconds
    while True:
        row = store.get(job_id)
        assert row is not None
        if row.state in FINISHED or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.25)


def accept_study(
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


def store_batches(service: Service, incoming: Incoming, received: Received, study: str | None) -> JSONResponse:
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
