"""Small phantom studies shared by the phantom tests (generated once per session; the small preset is ~64^3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from training.phantom import LesionSpec, PhantomOptions, PhantomStudy, generate_study

#: Lesions big enough to have pure interior voxels on the small (4 mm) grid, one of each behaviour.
LESIONS = (
    LesionSpec("metastasis", 24.0),
    LesionSpec("ring_metastasis", 22.0),
    LesionSpec("nonenhancing", 24.0),
)


def small_options(**changes: Any) -> PhantomOptions:
    """The options every shared study starts from."""
    base: dict[str, Any] = {"seed": 3, "size": "small", "lesions": LESIONS, "save_series_truth": True}
    base.update(changes)
    return PhantomOptions(**base)


def read_truth(study: PhantomStudy, name: str) -> np.ndarray:
    """A truth volume as an array (slices, rows, columns)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(study.truth_dir / f"{name}.nii.gz")))


def read_params(study: PhantomStudy) -> dict[str, Any]:
    """truth/params.json as written."""
    return json.loads((study.truth_dir / "params.json").read_text())


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """Siemens, sagittal MPRAGE, classic DICOM, head motion between series: the study the DICOM tests check."""
    return generate_study(small_options(), tmp_path_factory.mktemp("phantom-seed3"))


@pytest.fixture(scope="session")
def still_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """Same subject without motion or bias, so that series can be compared voxel by voxel in scanner space."""
    return generate_study(small_options(motion=False, bias=0.0), tmp_path_factory.mktemp("phantom-still"))


@pytest.fixture(scope="session")
def gre_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """Spoiled-gradient-echo T1 at 1.5 T with gadoterate, ground truth only."""
    options = small_options(
        t1_sequence="gre", field_strength=1.5, agent="Dotarem", dose=0.1, write_dicom=False, save_series_truth=False
    )
    return generate_study(options, tmp_path_factory.mktemp("phantom-gre"))


def series_dir(study: PhantomStudy, role: str) -> Path:
    """The DICOM folder of one series (fails the test if it was not written)."""
    directory = study.series[role].directory
    if directory is None:
        pytest.fail(f"series {role} has no DICOM directory")
    return directory
