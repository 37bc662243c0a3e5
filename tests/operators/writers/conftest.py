"""Fixtures for the writer tests: source volumes (classic written here, real Enhanced MR) and a model identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from operators.roles import Role
from operators.study import Volume
from operators.writers import ModelIdentity
from tests.conftest import require_path
from tests.operators.writers._sources import ENHANCED_T1W, load_volume, write_classic_series


@pytest.fixture(scope="session")
def model() -> ModelIdentity:
    """A model identity with a real sha256 (of a fixed byte string)."""
    return ModelIdentity("ce-lowdose-v1", "1.0.0", hashlib.sha256(b"gadsynth writer tests").hexdigest())


@pytest.fixture(scope="session")
def model_kwargs(model: ModelIdentity) -> dict[str, ModelIdentity]:
    """The model keyword argument every writer takes."""
    return {"model": model}


@pytest.fixture(scope="session")
def classic_uint16(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """Oblique classic MR, unsigned 12-bit, no rescale."""
    folder = tmp_path_factory.mktemp("classic_uint16")
    write_classic_series(folder, signed=False, seed=1)
    return load_volume(folder)


@pytest.fixture(scope="session")
def classic_int16_rescaled(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """Oblique classic MR, signed 12-bit, RescaleSlope 2 and RescaleIntercept -100."""
    folder = tmp_path_factory.mktemp("classic_int16")
    write_classic_series(folder, signed=True, rescale=(2.0, -100.0), seed=2)
    return load_volume(folder)


@pytest.fixture(scope="session")
def enhanced(real_dicom: Path) -> Volume:
    """The real Siemens XA30 Enhanced MR T1w (96 frames of 128 x 128, geometry in per-frame groups)."""
    return load_volume(require_path(real_dicom / ENHANCED_T1W))


@pytest.fixture(scope="session", params=["classic_uint16", "classic_int16_rescaled", "enhanced"])
def source(request: pytest.FixtureRequest) -> Volume:
    """Each kind of source in turn."""
    volume: Volume = request.getfixturevalue(request.param)
    return volume


@pytest.fixture(scope="session")
def study_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume]:
    """A t1_pre (8 slices 2.5 mm apart) and a low-dose T1 of the same study (14 slices 1.25 mm apart, 0.3 mm lower)."""
    study_uid, for_uid = generate_uid(), generate_uid()
    pre, low = tmp_path_factory.mktemp("pair_t1_pre"), tmp_path_factory.mktemp("pair_t1_low_dose")
    write_classic_series(pre, signed=False, seed=5, study_instance_uid=study_uid, frame_of_reference_uid=for_uid)
    write_classic_series(
        low,
        signed=False,
        seed=6,
        n_slices=14,
        gap=1.25,
        shift_mm=-0.3,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        series_description="t1_mprage_sag_p2_iso_KM_LD",
        series_number=7,
    )
    return load_volume(pre), load_volume(low, Role.T1_LOW_DOSE)
