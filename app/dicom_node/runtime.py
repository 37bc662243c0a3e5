"""The DICOM node as `gadsynth serve` runs it: the SCP, an assembler thread and an exporter thread.

All three live in the serve process (they die with it; a restarted process adopts what the dead one left, see
:mod:`app.dicom_node.assembly`), share its job database and queue, and hand studies to the same worker pool as the
HTTP front door.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from app.dicom_node.assembly import Assembler
from app.dicom_node.export import Exporter, echo_all
from app.dicom_node.reception import Receiver
from app.dicom_node.records import NodeStore, Reception, ReceptionState
from app.dicom_node.routing import RuleBook
from app.dicom_node.scp import DicomServer, NodeStartError
from app.service.settings import ServiceSettings
from app.service.store import JobStore

__all__ = ["DicomNode", "NodeStartError"]

logger = logging.getLogger(__name__)

_ASSEMBLER_INTERVAL_S = 0.25
_EXPORTER_INTERVAL_S = 0.5
_ECHO_CACHE_S = 5.0


class DicomNode:
    """Start with :meth:`start` (raises :class:`NodeStartError` or :class:`~app.dicom_node.routing.RulesError` with a
    clear message), stop with :meth:`stop`. ``settings.dicom_port == 0`` runs no SCP, but the assembler and the
    exporter still finish what an earlier run left (jobs to queue, exports to send)."""

    def __init__(self, settings: ServiceSettings, jobs: JobStore, queue: Any) -> None:
        self.settings = settings
        self.store = NodeStore(jobs)
        self.receiver = Receiver(settings, self.store)
        self.rules = RuleBook(settings.routing_rules, list(settings.dicom_destinations))
        self.assembler = Assembler(settings, jobs, self.store, queue, self.receiver, self.rules)
        self.exporter = Exporter(settings, jobs, self.store)
        self.server = DicomServer(settings, self.receiver) if settings.dicom_port else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._echo: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._echo_lock = threading.Lock()

    def start(self) -> None:
        self.rules.load()
        (self.settings.spool / "dicom").mkdir(parents=True, exist_ok=True)
        self.assembler.recover(starting=True)
        if self.server is not None:
            self.server.start()
        for name, loop in (("dicom-assembler", self._assemble), ("dicom-exporter", self._export)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.dicom_destinations:
            threading.Thread(target=self._echo_at_start, name="dicom-echo", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        try:
            self.receiver.flush(time.time(), force=True)
        except Exception:
            logger.exception("DICOM node: last flush of receptions failed (their files are kept)")

    def _assemble(self) -> None:
        last_recover = time.monotonic()
        while not self._stop.wait(_ASSEMBLER_INTERVAL_S):
            try:
                self.assembler.tick()
                if time.monotonic() - last_recover > 60:
                    self.assembler.recover(starting=False)
                    last_recover = time.monotonic()
            except Exception:  # the database may be away for a moment: the next tick tries again
                logger.exception("DICOM node: assembler tick failed")

    def _export(self) -> None:
        while not self._stop.wait(_EXPORTER_INTERVAL_S):
            try:
                while self.exporter.tick() and not self._stop.is_set():
                    pass
            except Exception:
                logger.exception("DICOM node: exporter tick failed")

    def _echo_at_start(self) -> None:
        for result in self.echo().values():
            if result["reachable"]:
                logger.info("destination %s: answers (%s ms)", result["destination"], result["ms"])
            else:
                logger.warning(
                    "destination %s: unreachable at start-up (%s); exports to it wait and retry",
                    result["destination"],
                    result["detail"],
                )

    def echo(self) -> dict[str, dict[str, Any]]:
        """C-ECHO (or HTTP) every destination; cached for 5 s so that /readyz cannot flood peers."""
        with self._echo_lock:
            if self._echo is not None and time.monotonic() - self._echo[0] < _ECHO_CACHE_S:
                return self._echo[1]
            results = echo_all(self.settings)
            self._echo = (time.monotonic(), results)
            return results

    def readiness(self) -> dict[str, dict[str, Any]]:
        """The node's checks for /readyz: the SCP (fails readiness when it should listen and does not), the
        routing rules and the destinations (reported, never failing: the export queue retries)."""
        threads_alive = all(t.is_alive() for t in self._threads)
        receiving = len(self.store.receptions(Reception.state == ReceptionState.RECEIVING))
        node: dict[str, Any] = {
            "ok": threads_alive and (self.server is None or self.server.listening),
            "ae_title": self.settings.dicom_ae_title,
            "port": self.settings.dicom_port or None,
            "tls": self.settings.dicom_tls_cert is not None,
            "receiving": receiving,
            "exports": self.store.export_counts(),
        }
        if not threads_alive:
            node["detail"] = "a DICOM node thread stopped; see the service log"
        destinations = self.echo()
        unreachable = sorted(name for name, r in destinations.items() if not r["reachable"])
        return {
            "dicom_node": node,
            "routing_rules": {"ok": True, **self.rules.status()},
            "dicom_destinations": {"ok": True, "unreachable": unreachable, "destinations": destinations},
        }
