"""The output folder of a job: checked before any work, filled atomically (staged, then moved into place).

A run writes its DICOM files and preview into a hidden staging folder inside the output folder; only when every
stage has succeeded are they moved to their final names. A failed run leaves report.json alone (with the failing
stage) and no partial series that a PACS forwarder could pick up.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from operators.errors import InputDicomError

__all__ = ["STAGING_PREFIX", "OutputFolderError", "discard", "prepare_output", "publish"]

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".gadsynth-partial-"


class OutputFolderError(InputDicomError):
    """The output folder cannot take this job's results (not empty, not a folder, not writable)."""


def _refuse(folder: Path, expected: str, found: str) -> OutputFolderError:
    return OutputFolderError(
        f"Output folder {folder}: expected {expected}, found {found}. Choose an empty or new folder.",
        attribute="output",
        expected=expected,
        found=found,
    )


def prepare_output(folder: Path, job_id: str) -> Path:
    """Check the output folder (new, or existing and empty), create it and a staging folder inside it.

    Returns
    -------
    Path
        The staging folder the writers fill.

    Raises
    ------
    OutputFolderError
        When the path is a file, a non-empty folder (an earlier run's results are never overwritten) or cannot be
        created or written.
    """
    if folder.exists() and not folder.is_dir():
        raise _refuse(folder, "a folder", "a file")
    if folder.is_dir():
        entries = [p.name for p in folder.iterdir() if not p.name.startswith(STAGING_PREFIX)]
        if entries:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise _refuse(folder, "a new or empty folder", f"{len(entries)} entries ({shown})")
    staging = folder / f"{STAGING_PREFIX}{job_id}"
    try:
        staging.mkdir(parents=True)
        probe = staging / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _refuse(folder, "a folder this process can write", f"{type(exc).__name__}: {exc.strerror}") from exc
    return staging


def publish(staging: Path, folder: Path) -> None:
    """Move everything staged into the output folder (a rename per entry, on the same file system), then fsync."""
    for entry in sorted(staging.iterdir()):
        os.replace(entry, folder / entry.name)
    staging.rmdir()
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def discard(staging: Path) -> None:
    """Remove a failed job's staged files."""
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Discarded the partial outputs in %s", staging)
