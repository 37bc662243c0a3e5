"""Sending results: C-STORE SCU and DICOMweb STOW-RS, worked off the persistent export queue; C-ECHO of peers.

One export is one job's DICOM files to one destination. An attempt sends every instance the destination has not
confirmed yet, and the export is ``done`` only once the peer confirmed each of them (a C-STORE success or warning
status; a STOW-RS ReferencedSOPSequence entry). A failed attempt waits ``export_backoff_s`` (doubling up to
``export_backoff_max_s``) before the next; after ``export_max_attempts`` the export is ``dead`` until
``POST /v1/exports/{id}/retry``. An exporter that dies mid-send loses its lease and the export is taken up again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from app.dicom_node.assembly import result_files
from app.dicom_node.config import Destination, DestinationKind
from app.dicom_node.reception import node_name
from app.dicom_node.records import ExportRow, ExportState, NodeStore
from app.dicom_node.tls import client_context
from app.service.settings import ServiceSettings
from app.service.store import JobStore

__all__ = ["EXPORT_STORAGE_CLASSES", "ExportError", "Exporter", "backoff", "echo", "send_dicom", "send_dicomweb"]

logger = logging.getLogger(__name__)

#: Storage classes proposed to every DICOM destination, whatever the job wrote (a peer that lacks one says so at
#: association time, not halfway through an export).
EXPORT_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: C-STORE statuses that mean "stored" (success, and the warnings: coercion, elements discarded, no validation).
_STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
_LEASE_S = 120.0
_STOW_BATCH = 32


class ExportError(Exception):
    """An attempt that did not deliver everything; the message says what the peer answered."""


def backoff(attempt: int, settings: ServiceSettings) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
    return float(min(settings.export_backoff_s * 2 ** (attempt - 1), settings.export_backoff_max_s))


def _association(destination: Destination, settings: ServiceSettings, contexts: list[tuple[str, list[str]]]) -> Any:
    from pynetdicom import AE, evt

    from app.dicom_node.scp import quiet_pynetdicom, tune_socket

    quiet_pynetdicom()
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    tls = (client_context(settings), destination.host or "") if destination.tls else None
    try:
        assoc = ae.associate(
            destination.host or "",
            destination.port or 0,
            ae_title=destination.ae_title or "",
            tls_args=tls,
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_socket)],
        )
    except OSError as exc:  # TLS handshake failures and the like
        raise ExportError(f"cannot connect to {destination.describe()}: {exc}") from None
    if not assoc.is_established:
        what = "rejected the association" if assoc.is_rejected else "could not be reached (or aborted)"
        raise ExportError(f"{destination.describe()} {what}")
    return assoc


def send_dicom(
    destination: Destination,
    settings: ServiceSettings,
    files: list[tuple[Path, str]],
    confirm: Callable[[str], bool],
) -> None:
    """C-STORE ``files`` (path, SOP Instance UID) over one association; ``confirm(uid)`` after each success.

    Raises
    ------
    ExportError
        When the association cannot be made, the peer accepts none of a file's presentation contexts, refuses an
        instance, or the connection ends; or when ``confirm`` returns False (the export was taken away).
    """
    headers = [(path, uid, dcmread(path, stop_before_pixels=True)) for path, uid in files]
    wanted: dict[str, list[str]] = {sop: list(_UNCOMPRESSED) for sop in EXPORT_STORAGE_CLASSES}
    for _, _, ds in headers:
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), list(_UNCOMPRESSED))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax not in syntaxes:
            syntaxes.insert(0, syntax)
    assoc = _association(destination, settings, list(wanted.items()))
    try:
        for path, uid, _ in headers:
            dataset = dcmread(path)
            try:
                status = assoc.send_c_store(dataset)
            except (ValueError, RuntimeError) as exc:  # no accepted context for the class, or association gone
                raise ExportError(f"{destination.name}: cannot send {uid}: {exc}") from None
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise ExportError(f"{destination.name}: no answer to C-STORE of {uid} (connection lost or timeout)")
            if code not in _STORED:
                raise ExportError(f"{destination.name} refused {uid}: status 0x{code:04X}")
            if not confirm(uid):
                raise ExportError("the export was taken away from this attempt")
    finally:
        if assoc.is_established:
            assoc.release()


def _session(destination: Destination) -> Any:
    import requests

    session = requests.Session()
    if destination.username is not None:
        password = destination.password.get_secret_value() if destination.password else ""
        session.auth = (destination.username, password)
    if destination.token is not None:
        session.headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    if destination.ca_bundle is not None:
        session.verify = str(destination.ca_bundle)
    return session


def _batches(files: list[tuple[Path, str]]) -> Iterator[list[tuple[Path, str]]]:
    for start in range(0, len(files), _STOW_BATCH):
        yield files[start : start + _STOW_BATCH]


def send_dicomweb(destination: Destination, files: list[tuple[Path, str]], confirm: Callable[[str], bool]) -> None:
    """STOW-RS ``files`` in batches; ``confirm(uid)`` for each instance the server lists as stored.

    Raises
    ------
    ExportError
        When a request fails (connection, HTTP status), or the server does not list an instance as stored.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(destination.url or "", session=_session(destination), timeout=destination.timeout_s)
    client.set_http_retry_params(retry=False)  # the export queue retries, with its own backoff
    for batch in _batches(files):
        datasets = [dcmread(path) for path, _ in batch]
        try:
            answer: Dataset = client.store_instances(datasets)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise ExportError(f"{destination.name}: STOW-RS answered HTTP {code}") from None
        except (requests.RequestException, ValueError) as exc:
            raise ExportError(f"{destination.name}: STOW-RS failed: {type(exc).__name__}: {exc}"[:500]) from None
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])}
        failed = [str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("FailedSOPSequence", [])]
        for _, uid in batch:
            if uid in stored and not confirm(uid):
                raise ExportError("the export was taken away from this attempt")
        missing = [uid for _, uid in batch if uid not in stored]
        if failed or missing:
            raise ExportError(
                f"{destination.name}: STOW-RS stored {len(batch) - len(missing)} of {len(batch)} instance(s)"
                + (f"; failed: {failed[:3]}" if failed else "")
            )


def echo(destination: Destination, settings: ServiceSettings) -> dict[str, Any]:
    """Whether a destination answers: C-ECHO for DICOM, an HTTP request for DICOMweb (any answer below 500)."""
    started = time.perf_counter()
    try:
        if destination.kind == DestinationKind.DICOM:
            quick = destination.model_copy(update={"timeout_s": settings.dicom_echo_timeout_s})
            assoc = _association(quick, settings, [("1.2.840.10008.1.1", list(_UNCOMPRESSED))])
            try:
                status = assoc.send_c_echo()
            finally:
                if assoc.is_established:
                    assoc.release()
            code = int(status.Status) if "Status" in status else None
            if code != 0:
                raise ExportError(f"C-ECHO answered {'nothing' if code is None else f'0x{code:04X}'}")
        else:
            session = _session(destination)
            response = session.get(
                f"{(destination.url or '').rstrip('/')}/studies",
                params={"limit": 1},
                headers={"Accept": "application/dicom+json"},
                timeout=settings.dicom_echo_timeout_s,
            )
            if response.status_code >= 500:
                raise ExportError(f"HTTP {response.status_code}")
        return {"reachable": True, "ms": round(1000 * (time.perf_counter() - started), 1)}
    except Exception as exc:  # every failure is an answer here: unreachable, and why
        return {"reachable": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


def echo_all(settings: ServiceSettings) -> dict[str, dict[str, Any]]:
    """Every destination's :func:`echo`, in parallel."""
    destinations = settings.dicom_destinations
    if not destinations:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(destinations)), thread_name_prefix="echo") as pool:
        results = list(pool.map(lambda d: echo(d, settings), destinations))
    return {d.name: {"destination": d.describe()} | r for d, r in zip(destinations, results, strict=True)}


class Exporter:
    """Works the export queue (the node's exporter thread calls :meth:`tick`)."""

    def __init__(self, settings: ServiceSettings, jobs: JobStore, store: NodeStore) -> None:
        self.settings, self.jobs, self.store = settings, jobs, store
        self.worker = node_name()

    def tick(self, now: float | None = None) -> int:
        """Attempt every due export once; how many were attempted."""
        attempted = 0
        for row in self.store.due_exports(time.time() if now is None else now):
            attempt = self.store.claim_export(row, self.worker, _LEASE_S)
            if attempt is not None:
                attempted += 1
                self.attempt(row, attempt)
        return attempted

    def attempt(self, row: ExportRow, attempt: int) -> None:
        label = f"export {row.id} (job {row.job_id} to {row.destination})"
        configured = {d.name: d for d in self.settings.dicom_destinations}
        destination = configured.get(row.destination)
        job = self.jobs.get(row.job_id)
        files = result_files(job.result_dir) if job is not None and job.purged_at is None else []
        if destination is None or not files:
            why = "the destination is no longer configured" if destination is None else "the results are gone"
            self.store.update_export(row.id, attempt, state=ExportState.DEAD, last_error=why, lease_until=None)
            logger.error("%s: dead: %s", label, why)
            return
        confirmed = list(row.confirmed or [])
        done = set(confirmed)
        todo = []
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            if uid not in done:
                todo.append((path, uid))

        def confirm(uid: str) -> bool:
            confirmed.append(uid)
            if len(confirmed) % 16:
                return True
            lease = time.time() + _LEASE_S
            return self.store.update_export(row.id, attempt, confirmed=list(confirmed), lease_until=lease)

        started = time.perf_counter()
        try:
            if destination.kind == DestinationKind.DICOM:
                send_dicom(destination, self.settings, todo, confirm)
            else:
                send_dicomweb(destination, todo, confirm)
        except Exception as exc:
            error = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            self._failed(row, attempt, label, error[:1000], confirmed)
            return
        if self.store.update_export(
            row.id, attempt, state=ExportState.DONE, confirmed=confirmed, lease_until=None, last_error=None,
            done_at=time.time(),
        ):  # fmt: skip
            logger.info(
                "%s: done, %d instance(s) confirmed (%d this attempt, %.1f s)",
                label, len(confirmed), len(todo), time.perf_counter() - started,
            )  # fmt: skip

    def _failed(self, row: ExportRow, attempt: int, label: str, error: str, confirmed: list[str]) -> None:
        if attempt >= row.max_attempts:
            self.store.update_export(
                row.id, attempt, state=ExportState.DEAD, last_error=error, confirmed=confirmed, lease_until=None
            )
            logger.error("%s: dead after %d attempt(s): %s (POST /v1/exports/%s/retry)", label, attempt, error, row.id)
            return
        wait = backoff(attempt, self.settings)
        self.store.update_export(
            row.id, attempt, state=ExportState.PENDING, last_error=error, confirmed=confirmed, lease_until=None,
            next_attempt_at=time.time() + wait,
        )  # fmt: skip
        logger.warning(
            "%s: attempt %d/%d failed: %s; %d of %d confirmed; next attempt in %.0f s",
            label, attempt, row.max_attempts, error, len(confirmed), row.n_instances, wait,
        )  # fmt: skip
