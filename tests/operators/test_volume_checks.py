"""Volumes with no usable image are refused before registration, naming the series and what was found."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from operators.roles import Role
from operators.study import Volume
from operators.volume_checks import DegenerateImageError, check_volume, check_volumes, field_of_view_overlap
from tests.operators.phantom_case import phantom_case


def _with(volume: Volume, change: Callable[[np.ndarray], np.ndarray]) -> Volume:
    array = sitk.GetArrayFromImage(volume.image).astype(np.float32)
    image = sitk.GetImageFromArray(change(array).astype(np.float32))
    image.CopyInformation(volume.image)
    return Volume(role=volume.role, series=volume.series, image=image, slices=volume.slices)


def _noise(array: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.abs(rng.normal(float(array.mean()), float(array.std()), array.shape))


def _saturated(array: np.ndarray) -> np.ndarray:
    return np.minimum(array, np.percentile(array, 40))


def _nan_slice(array: np.ndarray) -> np.ndarray:
    array[3] = np.nan
    return array


DEGENERATE = [
    ("all zero", lambda a: np.zeros_like(a), "PixelData", r"every voxel equal to 0"),
    ("constant", lambda a: np.full_like(a, 417.0), "PixelData", r"every voxel equal to 417"),
    ("noise", _noise, "PixelData", r"noise without structure"),
    ("saturated", _saturated, "PixelData", r"% at "),
    ("negative slope", lambda a: -a, "PixelRepresentation/RescaleSlope", r"negative voxels"),
    ("wrapped signed", lambda a: np.where(a > np.percentile(a, 70), a - 4096.0, a), "PixelRepresentation", r"neg"),
    ("NaN", _nan_slice, "PixelData", r"NaN or infinite"),
]


class TestDegenerateImages:
    def test_phantom_volumes_pass(self) -> None:
        case = phantom_case(11)
        check_volumes(case.volumes)

    @pytest.mark.parametrize(("name", "change", "attribute", "found"), DEGENERATE, ids=[d[0] for d in DEGENERATE])
    def test_refused_in_well_under_a_second(
        self, name: str, change: Callable[[np.ndarray], np.ndarray], attribute: str, found: str
    ) -> None:
        case = phantom_case(11)
        volume = _with(case.volumes[Role.T1_LOW_DOSE], change)
        started = time.perf_counter()
        with pytest.raises(DegenerateImageError, match=found) as info:
            check_volume(volume)
        assert time.perf_counter() - started < 5.0  # generous: it is a few array statistics
        assert info.value.series_instance_uid == volume.series.series_instance_uid
        assert info.value.attribute is not None and info.value.attribute.startswith(attribute)
        assert info.value.expected and info.value.found
        assert "t1_low_dose" in str(info.value)


class TestFieldOfView:
    def test_same_grid_overlaps_fully(self) -> None:
        image = phantom_case(11).volumes[Role.T1_PRE].image
        assert field_of_view_overlap(image, image) == pytest.approx(1.0)

    def test_series_500_mm_away_is_refused(self) -> None:
        volumes = dict(phantom_case(11).volumes)
        low = volumes[Role.T1_LOW_DOSE]
        moved = sitk.Image(low.image)
        moved.SetOrigin(tuple(v + 500.0 for v in moved.GetOrigin()))
        volumes[Role.T1_LOW_DOSE] = Volume(role=low.role, series=low.series, image=moved, slices=low.slices)
        with pytest.raises(DegenerateImageError, match=r"ImagePositionPatient: expected a field of view that overlaps"):
            check_volumes(volumes)
