"""Fixtures of the service tests: small phantom studies and one real `gadsynth serve` shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from training.bench.service_process import ServiceProcess
from training.phantom import PhantomOptions, PhantomStudy, generate_study

#: Settings of the shared service: short quiet period and lease so the tests do not wait, small limits to hit.
SHARED_SETTINGS = {
    "stow_quiet_seconds": 1.0,
    "supervisor_interval_s": 0.3,
    "lease_seconds": 10,
    "max_files": 400,
    "max_upload_bytes": 64 * 2**20,
    "zip_max_bytes": 64 * 2**20,
    "spool_min_free_mb": 16,
}


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[PhantomStudy]:
    """Three small phantom studies (different subjects, so different UIDs)."""
    root = tmp_path_factory.mktemp("service-studies")
    return [generate_study(PhantomOptions(seed=seed, size="small"), root / f"seed{seed}") for seed in (21, 22, 23)]


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One `gadsynth serve` with one worker process for every API test."""
    with ServiceProcess(tmp_path_factory.mktemp("service"), settings=SHARED_SETTINGS) as process:
        yield process


@pytest.fixture(scope="session")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())
