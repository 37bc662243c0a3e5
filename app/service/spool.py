"""Receiving studies onto the spool: every file written and fsync'd, every folder renamed into place atomically.

A posted study is first written to ``spool/tmp/<uuid>/`` (one file per instance, each checked to be DICOM), then
renamed to ``spool/jobs/<job>/input/`` before the job exists: a study the service has acknowledged is always whole
on disk, and a request that fails leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

__all__ = [
    "Incoming",
    "Instance",
    "UploadError",
    "extract_zip",
    "fsync_dir",
    "move_durably",
    "remove_tree",
    "study_key",
]

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1 << 20


class UploadError(Exception):
    """A request the service refuses: the HTTP status and a message that names the offending part."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Instance:
    """One received DICOM file: where it is, what it is, and its content hash."""

    path: Path
    label: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    sha256: str
    size: int


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (same file system) and make the rename itself durable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def remove_tree(path: Path | str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _uid(dataset: Any, keyword: str) -> str | None:
    value = str(getattr(dataset, keyword, "") or "").strip()
    return value if _UID.match(value) and len(value) <= 64 else None


def read_identity(path: Path) -> tuple[str, str, str] | str:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a DICOM file, or why it is not one we can take."""
    tags = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"]
    try:
        try:
            dataset = dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except InvalidDicomError:  # no 128-byte preamble: accepted only when the three UIDs parse
            dataset = dcmread(path, stop_before_pixels=True, specific_tags=tags, force=True)
    except Exception as exc:  # any parse failure means "not DICOM" to the client
        return f"cannot be read as DICOM ({type(exc).__name__}: {str(exc)[:120]})"
    found = {keyword: _uid(dataset, keyword) for keyword in tags}
    missing = [keyword for keyword, value in found.items() if value is None]
    if missing:
        return f"is not a DICOM instance: no valid {', '.join(missing)}"
    return found["SOPClassUID"] or "", found["SOPInstanceUID"] or "", found["StudyInstanceUID"] or ""


@dataclass
class Incoming:
    """A study being received: files go into a private temporary folder until :meth:`commit` renames it."""

    spool: Path
    max_files: int
    max_bytes: int
    folder: Path = field(init=False)
    instances: list[Instance] = field(default_factory=list)
    bytes_received: int = 0

    def __post_init__(self) -> None:
        self.folder = self.spool / "tmp" / uuid.uuid4().hex
        self.folder.mkdir(parents=True)

    def _next_path(self) -> Path:
        if len(self.instances) >= self.max_files:
            raise UploadError(413, f"Too many files: at most {self.max_files} per study.")
        return self.folder / f"{len(self.instances) + 1:06d}.dcm"

    def open(self) -> PartWriter:
        """A writer for the next file (streamed parts); :meth:`PartWriter.close` checks and registers it."""
        return PartWriter(self, self._next_path())

    def add_stream(self, stream: IO[bytes], label: str, limit: int | None = None) -> Instance | str:
        writer = self.open()
        writer.label = label
        while chunk := stream.read(_CHUNK):
            writer.write(chunk)
            if limit is not None and writer.size > limit:
                writer.abort()
                raise UploadError(413, f"{label} expands to more than {limit} bytes.")
        return writer.close()

    def count(self, size: int) -> None:
        self.bytes_received += size
        if self.bytes_received > self.max_bytes:
            raise UploadError(413, f"The study is larger than the limit of {self.max_bytes} bytes.")

    def commit(self, target: Path) -> None:
        """Make every file durable, then rename the folder to ``target`` (atomic: all or nothing)."""
        fsync_dir(self.folder)
        move_durably(self.folder, target)
        self.folder = target

    def discard(self) -> None:
        remove_tree(self.folder)

    def study_uids(self) -> list[str]:
        return sorted({i.study_instance_uid for i in self.instances})


class PartWriter:
    """One file of an :class:`Incoming` study, written as its bytes arrive; hashed on the way."""

    def __init__(self, incoming: Incoming, path: Path) -> None:
        self.incoming = incoming
        self.path = path
        self.label = path.name
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        self.incoming.count(len(data))

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> Instance | str:
        """Flush and fsync the file and check it is DICOM: the :class:`Instance`, or (file removed) why not."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        identity = read_identity(self.path)
        if isinstance(identity, str):
            self.path.unlink(missing_ok=True)
            return identity
        sop_class, sop_instance, study = identity
        instance = Instance(self.path, self.label, sop_class, sop_instance, study, self._hash.hexdigest(), self.size)
        self.incoming.instances.append(instance)
        return instance


def study_key(instances: Iterable[Instance], options: Mapping[str, Any]) -> str:
    """Identity of a posted study for idempotency: its SOP Instance UIDs with their content hashes, and the
    options that change the result."""
    digest = hashlib.sha256()
    for sop_uid, sha in sorted((i.sop_instance_uid, i.sha256) for i in instances):
        digest.update(f"{sop_uid}:{sha}\n".encode())
    digest.update(json.dumps(dict(options), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"zip member {name!r} has an absolute path"
    if ".." in pure.parts:
        return f"zip member {name!r} climbs out of the archive ('..')"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"zip member {name!r} is a symbolic link"
    return None


def extract_zip(archive: Path, incoming: Incoming, *, max_bytes: int, max_ratio: float) -> list[str]:
    """Take every file of a zip as an instance of ``incoming``; return the names of members that are not DICOM.

    Raises
    ------
    UploadError
        400 for a damaged zip, a member with an absolute or ``..`` path or a link, or a member compressed more
        than ``max_ratio`` times (a zip bomb); 413 when the members (counted as they are read, not as the header
        says) exceed ``max_bytes`` or the file limit.
    """
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(400, f"The body is not a readable zip archive: {exc}") from None
    skipped: list[str] = []
    total = 0
    with bundle:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        for info in members:
            problem = _member_problem(info)
            if problem:
                raise UploadError(400, f"Refused: {problem}.")
        if len(members) > incoming.max_files:
            raise UploadError(413, f"The zip holds {len(members)} files; at most {incoming.max_files} per study.")
        for info in members:
            if info.compress_size and info.file_size / info.compress_size > max_ratio:
                raise UploadError(
                    400,
                    f"Refused: zip member {info.filename!r} expands {info.file_size / info.compress_size:.0f} times "
                    f"(at most {max_ratio:.0f}): a zip bomb?",
                )
            try:
                with bundle.open(info) as member:
                    result = incoming.add_stream(member, f"zip member {info.filename!r}", limit=max_bytes - total)
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                raise UploadError(400, f"zip member {info.filename!r} cannot be extracted: {exc}") from None
            if isinstance(result, str):
                skipped.append(info.filename)
            else:
                total += result.size
    return skipped
