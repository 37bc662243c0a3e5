"""The node's SCP (pynetdicom): association control, C-ECHO, and C-STORE into the :class:`Receiver`.

Associations are accepted only from an allowed caller (calling AE title and host, see :func:`allowed_callers`) that
calls one of the node's AE titles; the others are rejected at association (A-ASSOCIATE-RJ, "calling AE title not
recognised" or "called AE title not recognised"). The C-STORE handler never raises: a dataset it cannot decode is
answered 0xC210, one whose SOP Class or Instance UID differs from the request 0xA900, a spool disk below its floor or
a failed write 0xA700, and any other failure 0x0110; success is sent only after the instance is durable on disk.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from app.dicom_node.config import AllowedCaller, DestinationKind
from app.dicom_node.instances import own_output_reason, read_facts
from app.dicom_node.reception import OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS, Receiver
from app.dicom_node.tls import server_context
from app.service.settings import ServiceSettings

__all__ = ["DicomServer", "NodeStartError", "allowed_callers", "quiet_pynetdicom", "tune_socket"]

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
CANNOT_UNDERSTAND = 0xC210
DOES_NOT_MATCH = 0xA900


class NodeStartError(RuntimeError):
    """The DICOM node could not start (port in use, bad TLS files); the message says what to change."""


def allowed_callers(settings: ServiceSettings) -> list[AllowedCaller]:
    """The configured callers plus every DICOM destination (a PACS that takes results may send studies)."""
    callers = list(settings.dicom_allowed_callers)
    for destination in settings.dicom_destinations:
        if destination.kind == DestinationKind.DICOM and destination.ae_title and destination.host:
            callers.append(AllowedCaller(ae_title=destination.ae_title, host=destination.host))
    return callers


def quiet_pynetdicom() -> None:
    """Turn off pynetdicom's own per-message event logging (process-wide; its "standard" handlers format every PDU
    and DIMSE message, which costs time per instance and, at DEBUG, would write dataset contents to the log)."""
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def tune_socket(event: Any) -> None:
    """Acknowledge every read at once (TCP_QUICKACK) and send answers at once (TCP_NODELAY).

    dcmtk-based peers (Orthanc, storescu, many PACS) write a PDU in several small pieces with Nagle's algorithm on:
    each piece after the first waits for the previous one's ACK, which Linux delays by up to 40 ms. Acknowledging
    each read immediately took a small-image study from 22 to 280 instances per second on loopback. The SCU (exports)
    uses it too: pynetdicom writes each PDU separately, and a dcmtk receiver delays its ACKs the same way.
    """
    try:
        stream = event.assoc.dul.socket
        raw = stream.socket
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is None:  # not Linux
            return
        read = stream.recv

        def recv(nr_bytes: int) -> bytearray:
            data: bytearray = read(nr_bytes)
            with contextlib.suppress(OSError):  # Linux clears it again: set after every read
                raw.setsockopt(socket.IPPROTO_TCP, quickack, 1)
            return data

        stream.recv = recv
    except (AttributeError, OSError):  # a pynetdicom without these internals: plain sockets still work
        logger.debug("socket options not set", exc_info=True)


@dataclass
class _AssociationStats:
    calling_ae: str
    peer: str
    started: float
    stored: int = 0
    skipped: int = 0
    refused: int = 0


class DicomServer:
    """The SCP: :meth:`start` binds the port (raising :class:`NodeStartError`), :meth:`stop` closes it."""

    def __init__(self, settings: ServiceSettings, receiver: Receiver) -> None:
        self.settings, self.receiver = settings, receiver
        self.callers = allowed_callers(settings)
        self.titles = {settings.dicom_ae_title, *settings.dicom_called_ae_titles}
        self._server: Any = None
        self._stats: dict[int, _AssociationStats] = {}
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        settings = self.settings
        quiet_pynetdicom()
        ae = AE(ae_title=settings.dicom_ae_title)
        ae.add_supported_context(VERIFICATION)
        for storage in AllStoragePresentationContexts:
            ae.add_supported_context(str(storage.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = settings.dicom_max_associations
        ae.acse_timeout = settings.dicom_acse_timeout_s
        ae.dimse_timeout = settings.dicom_dimse_timeout_s
        ae.network_timeout = settings.dicom_network_timeout_s
        ae.maximum_pdu_size = 0  # the peer chooses its PDU size
        try:
            context = server_context(settings)
        except OSError as exc:
            raise NodeStartError(f"DICOM TLS: cannot load the certificate, key or CA: {exc}") from None
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, tune_socket),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
        ]
        host, port = settings.dicom_bind_host, settings.dicom_port
        try:
            self._server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=context)
        except OSError as exc:
            raise NodeStartError(
                f"The DICOM node cannot listen on {host}:{port}: {exc.strerror or exc}. Set GADSYNTH_DICOM_PORT to a "
                "free port (0 turns the DICOM node off)."
            ) from None
        if not self.callers:
            logger.warning(
                "DICOM node: no allowed caller configured (dicom_allowed_callers, dicom_destinations): every "
                "association will be rejected"
            )
        logger.info(
            "DICOM node %s listening on %s:%d%s; callers: %s",
            settings.dicom_ae_title,
            host,
            port,
            " (TLS)" if context else "",
            ", ".join(f"{c.ae_title}@{c.host}" for c in self.callers) or "none",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- handlers (pynetdicom calls them in its association threads; none may raise) ----------------------------

    def _on_requested(self, event: Any) -> None:
        try:
            request = event.assoc.requestor.primitive
            calling = str(request.calling_ae_title).strip()
            called = str(request.called_ae_title).strip()
            address = str(event.assoc.requestor.address)
            if called not in self.titles:
                logger.warning("association from %s@%s rejected: called AE %r is not ours", calling, address, called)
                self._reject(event, 0x07)
            elif not any(c.matches(calling, address) for c in self.callers):
                logger.warning("association from %s@%s rejected: not an allowed caller", calling, address)
                self._reject(event, 0x03)
        except Exception:
            logger.exception("association request could not be checked; rejected")
            self._reject(event, 0x01)

    @staticmethod
    def _reject(event: Any, diagnostic: int) -> None:
        # Rejected-permanent, by the service user (ACSE), with the diagnostic: 0x03 calling / 0x07 called AE title
        # not recognised, 0x01 no reason given.
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        event.assoc.kill()  # waits until the A-ASSOCIATE-RJ is out and the peer has closed, as pynetdicom's own path

    def _on_accepted(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        stats = _AssociationStats(calling, str(event.assoc.requestor.address), time.monotonic())
        with self._lock:
            self._stats[id(event.assoc)] = stats

    def _on_ended(self, event: Any) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is not None and (stats.stored or stats.skipped or stats.refused):
            logger.info(
                "association from %s@%s %s: %d instance(s) stored, %d skipped, %d refused in %.1f s",
                stats.calling_ae,
                stats.peer,
                "released" if event.event == evt.EVT_RELEASED else "aborted",
                stats.stored,
                stats.skipped,
                stats.refused,
                time.monotonic() - stats.started,
            )

    @staticmethod
    def _on_echo(event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        with self._lock:
            stats = self._stats.get(id(event.assoc))
        skipped = False
        try:
            status, skipped = self._store(event)
        except Exception:
            logger.exception("C-STORE: internal error; answered 0x%04X", PROCESSING_FAILURE)
            status = PROCESSING_FAILURE
        if stats is not None:
            if status != SUCCESS:
                stats.refused += 1
            elif skipped:
                stats.skipped += 1
            else:
                stats.stored += 1
        return status

    def _store(self, event: Any) -> tuple[int, bool]:
        """The status, and whether the instance was skipped (acknowledged, not kept)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        called = str(event.assoc.acceptor.ae_title).strip()
        peer = str(event.assoc.requestor.address)
        try:
            dataset = event.dataset
            facts = read_facts(dataset)
            own = (
                None
                if isinstance(facts, str)
                else own_output_reason(dataset, facts, self.settings.dicom_own_series_numbers)
            )
        except Exception as exc:  # pydicom decodes lazily: a broken element shows up here
            logger.warning("C-STORE from %s: dataset cannot be decoded (%s); answered 0xC210", calling, exc)
            return CANNOT_UNDERSTAND, False
        if isinstance(facts, str):
            logger.warning("C-STORE from %s: %s; answered 0xC210", calling, facts)
            return CANNOT_UNDERSTAND, False
        request = event.request
        if (
            str(request.AffectedSOPClassUID) != facts.sop_class_uid
            or str(request.AffectedSOPInstanceUID) != facts.sop_instance_uid
        ):
            logger.warning(
                "C-STORE from %s: dataset %s does not match the request's SOP Class / Instance UID; answered 0xA900",
                calling,
                facts.sop_instance_uid,
            )
            return DOES_NOT_MATCH, False
        if own is not None:
            self.receiver.note_skipped(calling, facts.study_instance_uid, facts, f"GadSynth output ({own})")
            return SUCCESS, True
        if not self.receiver.has_space():
            logger.error(
                "C-STORE from %s: spool disk below %d MiB free; answered 0xA700",
                calling,
                self.settings.spool_min_free_mb,
            )
            return OUT_OF_RESOURCES, False
        quiet = next(
            (c.quiet_seconds for c in self.callers if c.quiet_seconds is not None and c.matches(calling, peer)),
            self.settings.dicom_quiet_seconds,
        )
        try:
            outcome = self.receiver.keep(
                facts,
                event.encoded_dataset(include_meta=True),
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                quiet=quiet,
            )
        except OSError as exc:
            logger.error(
                "C-STORE from %s: instance %s not written (%s); answered 0xA700", calling, facts.sop_instance_uid, exc
            )
            return OUT_OF_RESOURCES, False
        return outcome.status, outcome.skipped is not None
