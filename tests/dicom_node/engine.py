"""The DICOM node's receiving and assembly parts in the test process, on a real SQLite job database and Huey queue
(no SCP, no server): instances are handed to the :class:`Receiver` as the C-STORE handler does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from app.dicom_node.assembly import Assembler
from app.dicom_node.instances import InstanceFacts, own_output_reason, read_facts
from app.dicom_node.reception import Receiver
from app.dicom_node.records import NodeStore
from app.dicom_node.routing import RuleBook
from app.service.queue import JobQueue
from app.service.settings import ServiceSettings
from app.service.store import JobStore

__all__ = ["Engine", "make_engine"]


@dataclass
class Engine:
    settings: ServiceSettings
    jobs: JobStore
    queue: JobQueue
    store: NodeStore
    receiver: Receiver
    assembler: Assembler

    def receive(self, files: list[Path], calling: str = "PACS") -> list[str]:
        """Hand each file to the receiver as the SCP does; what became of each (reception id or skip reason)."""
        outcomes = []
        for path in files:
            dataset = dcmread(path)
            facts = read_facts(dataset)
            assert isinstance(facts, InstanceFacts), facts
            own = own_output_reason(dataset, facts, self.settings.dicom_own_series_numbers)
            if own is not None:
                self.receiver.note_skipped(calling, facts.study_instance_uid, facts, own)
                outcomes.append(f"own: {own}")
                continue
            outcome = self.receiver.keep(
                facts, path.read_bytes(), calling_ae=calling, called_ae="GADSYNTH", peer="127.0.0.1", quiet=0.0
            )
            outcomes.append(outcome.reception_id or f"skipped: {outcome.skipped}")
        return outcomes

    def restarted(self) -> Engine:
        """The same database and spool seen by a new process (what a restart after kill -9 finds)."""
        return make_engine(self.settings)


def make_engine(settings: ServiceSettings | None = None, tmp: Path | None = None, **values: Any) -> Engine:
    if settings is None:
        assert tmp is not None
        settings = ServiceSettings(data_dir=tmp, spool_min_free_mb=16, dicom_quiet_seconds=0, dicom_port=0, **values)
    jobs = JobStore(settings.database)
    queue = JobQueue(settings)
    store = NodeStore(jobs)
    receiver = Receiver(settings, store)
    rules = RuleBook(settings.routing_rules, list(settings.dicom_destinations))
    rules.load()
    assembler = Assembler(settings, jobs, store, queue, receiver, rules)
    return Engine(settings, jobs, queue, store, receiver, assembler)
