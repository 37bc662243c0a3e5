"""Shared fixtures: strict DICOM reading, real test data, external tools that must exist in CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DICOM = SHARED / "testdata" / "real-dicom"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Return the path of an external program; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (run `make setup`, which installs the Debian packages)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_path(path: Path) -> Path:
    """Return a test-data path; fail in CI, skip elsewhere, when it is missing (e.g. a checkout without ../shared)."""
    if not path.exists():
        message = f"test data {path} is missing: it lives in ../shared beside the repository"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _strict_dicom_reading() -> Iterator[None]:
    """Every DICOM read in a test is strict: an invalid value raises instead of warning."""
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = previous


@pytest.fixture(scope="session")
def real_dicom() -> Path:
    """Root of the real scanner DICOM (dcm2niix validation sets) in ../shared/testdata/real-dicom."""
    return require_path(REAL_DICOM)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Path of dicom3tools' validator."""
    return require_tool("dciodvfy")
