"""Receiving instances: each one written durably to the spool before it is acknowledged, grouped into receptions.

A reception is one study from one calling AE, open until no instance of it has come for its quiet period. Its
folder is ``spool/dicom/<reception>/``: MR images under ``mr/`` (what a job reads), every other storage class under
``other/`` (kept, not routed). A file is written to a temporary name, fsync'd, renamed to ``<SOPInstanceUID>.dcm``
and its folder fsync'd: an acknowledged instance survives a crash of the process or the machine.

The database row of a reception is written when its first instance arrives; its counts are brought up to date about
once a second (:meth:`Receiver.flush`), and a node restarted after a crash counts the files again (the files are
the truth).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.dicom_node.instances import InstanceFacts, clean_uid
from app.dicom_node.records import NodeStore, Reception, ReceptionState
from app.service.settings import ServiceSettings
from app.service.spool import fsync_dir

__all__ = ["OpenReception", "Receiver", "StoreOutcome", "count_files", "node_name", "write_durably"]

logger = logging.getLogger(__name__)

#: C-STORE statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110

_FLUSH_INTERVAL_S = 1.0
_HEARTBEAT_S = 30.0
_KNOWN_STUDIES = 256


def node_name() -> str:
    """This process as a reception holder: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def write_durably(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` atomically and durably: temporary file, fdatasync, rename, fsync of the folder."""
    temporary = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fdatasync(fd)  # the data and the size; the rename below is made durable by the folder's fsync
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, folder / name)
    fsync_dir(folder)


def _make_dir(path: Path) -> None:
    """Create a folder (and its parents) and make its entry durable."""
    if path.is_dir():
        return
    _make_dir(path.parent)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def count_files(folder: Path) -> tuple[int, int, int]:
    """(MR instances, other instances, bytes) of a reception folder; temporary leftovers of a crash are removed."""
    counts = [0, 0]
    size = 0
    for index, sub in enumerate(("mr", "other")):
        directory = folder / sub
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            if entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)
            elif entry.is_file():
                counts[index] += 1
                size += entry.stat().st_size
    return counts[0], counts[1], size


@dataclass
class OpenReception:
    """A reception this process is receiving into (memory is ahead of the database row by up to a second)."""

    id: str
    study_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    folder: Path
    quiet_seconds: float
    first_at: float
    last_at: float
    n_instances: int = 0
    n_other: int = 0
    n_skipped: int = 0
    bytes_received: int = 0
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed: bool = False
    dirty: bool = True
    flushed_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def values(self) -> dict[str, Any]:
        """The row's counts as they are now."""
        return {
            "n_instances": self.n_instances,
            "n_other": self.n_other,
            "n_skipped": self.n_skipped,
            "bytes_received": self.bytes_received,
            "series": {uid: dict(entry) for uid, entry in self.series.items()},
            "last_received_at": self.last_at,
        }


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one instance: its status, and the reception it went into (None when not kept)."""

    status: int
    reception_id: str | None = None
    skipped: str | None = None


class Receiver:
    """Takes instances from the C-STORE handler; hands quiet receptions to the assembler."""

    def __init__(self, settings: ServiceSettings, store: NodeStore) -> None:
        self.settings, self.store = settings, store
        self.root = settings.spool / "dicom"
        self.root.mkdir(parents=True, exist_ok=True)
        self.node = node_name()
        self._open: dict[tuple[str, str], OpenReception] = {}
        self._lock = threading.Lock()
        self._known: OrderedDict[str, set[str]] = OrderedDict()
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- the C-STORE path ----------------------------------------------------------------------------------------

    def has_space(self) -> bool:
        free = shutil.disk_usage(self.settings.spool).free
        return free >= self.settings.spool_min_free_mb * 2**20

    def keep(
        self, facts: InstanceFacts, data: bytes, *, calling_ae: str, called_ae: str, peer: str, quiet: float
    ) -> StoreOutcome:
        """Keep one instance (not our own output: the caller checked). Raises OSError when the disk fails."""
        study = facts.study_instance_uid
        if facts.sop_instance_uid in self.known_instances(study):
            self.note_skipped(calling_ae, study, facts, "already received in an earlier reception of the study")
            return StoreOutcome(SUCCESS, skipped="duplicate")
        name = clean_uid(facts.sop_instance_uid) + ".dcm"
        sub = "mr" if facts.routed else "other"
        while True:
            reception = self._reception(study, calling_ae, called_ae, peer, quiet)
            with reception.lock:
                if reception.closed:  # the assembler took it between the two steps: open a new one
                    continue
                target = reception.folder / sub
                _make_dir(target)
                existed = (target / name).exists()
                write_durably(target, name, data)
                now = time.time()
                reception.last_at = now
                if not existed:
                    if facts.routed:
                        reception.n_instances += 1
                    else:
                        reception.n_other += 1
                    reception.bytes_received += len(data)
                    entry = reception.series.setdefault(
                        facts.series_instance_uid,
                        {
                            "modality": facts.modality,
                            "number": facts.series_number,
                            "description": facts.series_description,
                            "sop_class_uid": facts.sop_class_uid,
                            "count": 0,
                        },
                    )
                    entry["count"] += 1
                reception.dirty = True
                return StoreOutcome(SUCCESS, reception_id=reception.id)

    def _reception(self, study: str, calling_ae: str, called_ae: str, peer: str, quiet: float) -> OpenReception:
        key = (calling_ae, study)
        with self._lock:
            current = self._open.get(key)
            if current is not None and not current.closed:
                return current
            reception_id = uuid.uuid4().hex[:16]
            folder = self.root / reception_id
            _make_dir(folder)
            now = time.time()
            reception = OpenReception(
                id=reception_id,
                study_uid=study,
                calling_ae=calling_ae,
                called_ae=called_ae,
                peer=peer,
                folder=folder,
                quiet_seconds=quiet,
                first_at=now,
                last_at=now,
            )
            self.store.add_reception(
                Reception(
                    id=reception_id,
                    state=ReceptionState.RECEIVING,
                    study_instance_uid=study,
                    calling_ae=calling_ae,
                    called_ae=called_ae,
                    peer=peer,
                    node=self.node,
                    folder=str(folder),
                    quiet_seconds=quiet,
                    first_received_at=now,
                    last_received_at=now,
                    updated_at=now,
                )
            )
            reception.flushed_at = now
            self._open[key] = reception
        logger.info(
            "reception %s: receiving study %s from %s@%s (called %s)", reception_id, study, calling_ae, peer, called_ae
        )
        return reception

    def note_skipped(self, calling_ae: str, study: str, facts: InstanceFacts, why: str) -> None:
        """Count an instance that is not kept; log it once per series."""
        with self._lock:
            current = self._open.get((calling_ae, study))
            if current is not None and not current.closed:
                current.n_skipped += 1
                current.dirty = True
            key = (facts.series_instance_uid, why)
            first = key not in self._logged
            self._logged[key] = None
            while len(self._logged) > 1024:
                self._logged.popitem(last=False)
        if first:
            logger.info(
                "study %s from %s: series %s (#%s %r) skipped: %s",
                study,
                calling_ae,
                facts.series_instance_uid,
                facts.series_number,
                facts.series_description,
                why,
            )

    def known_instances(self, study: str) -> set[str]:
        """SOP Instance UIDs of the study's closed receptions (cached; see :meth:`forget`)."""
        with self._lock:
            cached = self._known.get(study)
            if cached is not None:
                self._known.move_to_end(study)
                return cached
        found = self.store.closed_instances(study)
        with self._lock:
            self._known[study] = found
            while len(self._known) > _KNOWN_STUDIES:
                self._known.popitem(last=False)
        return found

    def remember(self, study: str, uids: list[str]) -> None:
        """Count ``uids`` as received for the study (a reception being routed, not closed in the database yet)."""
        known = self.known_instances(study)
        with self._lock:
            known.update(uids)

    def forget(self, study: str) -> None:
        with self._lock:
            self._known.pop(study, None)

    # --- the assembler's side ------------------------------------------------------------------------------------

    def open_receptions(self) -> list[OpenReception]:
        with self._lock:
            return list(self._open.values())

    def take_quiet(self, now: float) -> list[OpenReception]:
        """Close and hand over the receptions whose quiet period has passed (none is mid-write)."""
        taken = []
        with self._lock:
            for key, reception in list(self._open.items()):
                if now - reception.last_at < reception.quiet_seconds:
                    continue
                if not reception.lock.acquire(blocking=False):
                    continue  # an instance is being written: it is not quiet
                try:
                    reception.closed = True
                finally:
                    reception.lock.release()
                del self._open[key]
                taken.append(reception)
        return taken

    def flush(self, now: float, *, force: bool = False) -> None:
        """Bring the rows of open receptions up to date (counts at most once a second, a heartbeat every 30 s)."""
        for reception in self.open_receptions():
            due = reception.dirty and now - reception.flushed_at >= _FLUSH_INTERVAL_S
            if not (force or due or now - reception.flushed_at >= _HEARTBEAT_S):
                continue
            with reception.lock:
                values = reception.values()
                reception.dirty = False
            self.store.update_reception(
                reception.id, Reception.state == ReceptionState.RECEIVING, node=self.node, **values
            )
            reception.flushed_at = now

    def adopt(self, row: Reception) -> OpenReception:
        """Take over a reception of a dead node (this process before a crash): its files are counted again."""
        folder = Path(row.folder)
        n_mr, n_other, size = count_files(folder)
        newest = row.last_received_at
        for sub in ("mr", "other"):
            if (folder / sub).is_dir():
                for entry in os.scandir(folder / sub):
                    newest = max(newest, entry.stat().st_mtime)
        reception = OpenReception(
            id=row.id,
            study_uid=row.study_instance_uid,
            calling_ae=row.calling_ae,
            called_ae=row.called_ae,
            peer=row.peer,
            folder=folder,
            quiet_seconds=row.quiet_seconds,
            first_at=row.first_received_at,
            last_at=newest,
            n_instances=n_mr,
            n_other=n_other,
            n_skipped=row.n_skipped,
            bytes_received=size,
            series=dict(row.series or {}),
        )
        with self._lock:
            self._open[(row.calling_ae, row.study_instance_uid)] = reception
        self.store.update_reception(
            row.id, Reception.state == ReceptionState.RECEIVING, node=self.node, **reception.values()
        )
        logger.info(
            "reception %s: adopted from %s after a restart (%d MR and %d other instances on disk)",
            row.id,
            row.node,
            n_mr,
            n_other,
        )
        return reception
