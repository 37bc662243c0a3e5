"""Fixtures of the DICOM node's tests: small phantom studies (two subjects, so two Study Instance UIDs)."""

from __future__ import annotations

import pytest

from training.phantom import PhantomOptions, PhantomStudy, generate_study


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[PhantomStudy]:
    """Two small phantom studies (a job takes a few seconds each)."""
    root = tmp_path_factory.mktemp("dicom-node-studies")
    return [generate_study(PhantomOptions(seed=seed, size="small"), root / f"seed{seed}") for seed in (41, 42)]
