"""Sub-millimetre studies run on a 1 mm working grid and come back to the source grid (issue 10: memory bounds)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from operators.working_grid import MIN_WORKING_SPACING_MM, working_grid


def _image(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 20.0, 5.0))
    image.SetDirection((0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))  # sagittal
    return image


class TestWorkingGrid:
    @pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.94, 0.94, 1.2), (4.0, 4.0, 4.0)])
    def test_one_millimetre_and_coarser_are_left_alone(self, spacing: tuple[float, float, float]) -> None:
        assert working_grid(_image((64, 64, 48), spacing)) is None

    def test_half_millimetre_becomes_one_millimetre_over_the_same_field_of_view(self) -> None:
        source = _image((512, 512, 320), (0.5, 0.5, 0.5))
        grid = working_grid(source)
        assert grid is not None
        assert grid.GetSize() == (256, 256, 160)
        assert grid.GetSpacing() == pytest.approx((MIN_WORKING_SPACING_MM,) * 3)
        assert grid.GetDirection() == source.GetDirection()

        def corners(image: sitk.Image) -> np.ndarray:
            low = image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
            high = image.TransformContinuousIndexToPhysicalPoint(tuple(n - 0.5 for n in image.GetSize()))
            return np.asarray([low, high])

        np.testing.assert_allclose(corners(grid), corners(source), atol=1e-6)  # the same voxel edges

    def test_only_the_fine_axes_change(self) -> None:
        grid = working_grid(_image((448, 448, 120), (0.45, 0.45, 1.2)))
        assert grid is not None
        assert grid.GetSpacing()[2] == pytest.approx(1.2) and grid.GetSize()[2] == 120
        assert grid.GetSpacing()[0] == pytest.approx(448 * 0.45 / 202)
