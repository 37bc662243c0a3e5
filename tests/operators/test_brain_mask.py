"""Brain mask from the MNI152 template: accuracy on heads in known poses and sizes, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from operators.brain_mask import brain_mask, template_path
from operators.errors import RegistrationError
from tests.operators.mni_head import head_image, mni_head, rigid, with_noise

SPACING = 3.5  # mm, like the phantom's small preset


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


class TestTemplate:
    def test_template_ships_with_nilearn(self) -> None:
        path = template_path()
        assert path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == (197, 233, 189)


class TestAccuracy:
    @pytest.mark.parametrize(
        ("rotation", "translation", "scale"),
        [((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0), ((10.0, -6.0, 8.0), (8.0, -10.0, 12.0), 1.08)],
    )
    def test_mask_matches_the_moved_and_scaled_brain(
        self, rotation: tuple[float, float, float], translation: tuple[float, float, float], scale: float
    ) -> None:
        head, _ = mni_head(SPACING)
        pose = rigid(head, rotation_deg=rotation, translation_mm=translation)
        image = with_noise(head_image(SPACING, pose, scale=scale), 6.0, seed=1)
        truth = sitk.GetArrayViewFromImage(head_image(SPACING, pose, scale=scale, mask=True)) > 0
        result = brain_mask(image)
        assert result.mask.GetSize() == image.GetSize()
        assert result.mask.GetOrigin() == pytest.approx(image.GetOrigin())
        assert result.mask.GetPixelID() == sitk.sitkUInt8
        assert dice(result.array(), truth) > 0.95
        truth_ml = float(truth.sum()) * SPACING**3 / 1000.0
        assert result.quality["volume_ml"] == pytest.approx(truth_ml, rel=0.08)
        assert result.quality["scale"] == pytest.approx(scale, abs=0.04)
        assert result.quality["nmi"] > 1.1

    def test_sagittal_anisotropic_acquisition(self) -> None:
        """A sagittal grid (slices along left-right, 1.2 x 1.2 mm in-plane, 4 mm slices) gets the same brain."""
        head, _ = mni_head(SPACING)
        fine, _ = mni_head(2.0)
        pose = rigid(fine, rotation_deg=(5.0, 0.0, -4.0), translation_mm=(3.0, 6.0, -4.0))
        grid = sitk.Image([110, 110, 42], sitk.sitkFloat32)  # columns along A->P, rows along S->I, slices R->L
        grid.SetSpacing((2.2, 2.2, 4.0))
        grid.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
        centre = np.asarray(head.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in head.GetSize()]))
        half = np.asarray(grid.GetDirection()).reshape(3, 3) @ (np.asarray([109, 109, 41]) * grid.GetSpacing() / 2)
        grid.SetOrigin(tuple(centre - half))
        image = sitk.Resample(head_image(2.0, pose), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
        truth_image = sitk.Resample(head_image(2.0, pose, mask=True), grid, sitk.Transform(), sitk.sitkNearestNeighbor)
        result = brain_mask(with_noise(image, 5.0, seed=2))
        assert dice(result.array(), sitk.GetArrayViewFromImage(truth_image) > 0) > 0.93


class TestFailures:
    def test_empty_image(self) -> None:
        head, _ = mni_head(SPACING)
        empty = sitk.Image(head.GetSize(), sitk.sitkFloat32)
        empty.CopyInformation(head)
        with pytest.raises(RegistrationError, match=r"t1_pre has no foreground"):
            brain_mask(empty)

    def test_not_a_head(self) -> None:
        head, _ = mni_head(SPACING)
        noise = sitk.GetImageFromArray(
            np.random.default_rng(3).uniform(0.0, 200.0, sitk.GetArrayViewFromImage(head).shape).astype(np.float32)
        )
        noise.CopyInformation(head)
        with pytest.raises(RegistrationError, match=r"Brain mask of series 5\.5 failed: the MNI152 template did not"):
            brain_mask(noise, label="series 5.5")


class TestPhantom:
    @pytest.mark.parametrize(
        "options", [{}, {"t1_orientation": "axial", "vendor": "ge"}], ids=["sagittal-siemens", "axial-ge"]
    )
    def test_mask_matches_the_phantom_brain(self, options: dict[str, str]) -> None:
        from operators.roles import Role
        from tests.operators.phantom_case import phantom_case

        case = phantom_case(4, **options)
        result = brain_mask(case.volumes[Role.T1_PRE].image)
        truth = case.truth("brain_mask") > 0
        assert result.array().shape == truth.shape
        assert dice(result.array(), truth) > 0.95
