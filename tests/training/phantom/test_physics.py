"""Phantom physics: contrast enhancement, dose ratio, no change without gadolinium, noise, non-enhancing lesions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.training.phantom.conftest import read_params, read_truth, series_dir, small_options
from training.phantom import PhantomStudy, generate_study
from training.phantom.signal import Mprage, mprage_signal


def _dicom_volume(study: PhantomStudy, role: str) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir(study, role))))
    return sitk.GetArrayFromImage(reader.Execute()).astype(np.float64)


def _lesion(params: dict, kind: str) -> dict:
    matches = [lesion for lesion in params["lesions"] if lesion["type"] == kind]
    if not matches:
        pytest.fail(f"no {kind} lesion was placed")
    return matches[0]


def _spgr(t1_ms: float, tr: float, flip_deg: float) -> float:
    """Spoiled gradient echo without T2* (it cancels in ratios): sin(a) (1 - E1) / (1 - cos(a) E1)."""
    e1 = math.exp(-tr / t1_ms)
    a = math.radians(flip_deg)
    return math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1)


def _expected_ratio(signal, t1_ms: float, r1: float, conc: float, dose: float) -> float:
    """(S_sd - S_pc) / (S_ld - S_pc) from a signal equation S(T1) and 1/T1 = 1/T1_0 + r1 C d."""

    def s(d: float) -> float:
        return signal(1.0 / (1.0 / t1_ms + r1 * conc * d * 1e-3))

    return (s(1.0) - s(0.0)) / (s(dose) - s(0.0))


class TestEnhancement:
    def test_enhancing_lesions_brighter_after_contrast(self, study: PhantomStudy) -> None:
        params = read_params(study)
        labels, x_pc, x_sd = read_truth(study, "lesions"), read_truth(study, "x_pc"), read_truth(study, "x_sd")
        for lesion in params["lesions"]:
            inside = labels == lesion["id"]
            if not lesion["enhancing"] or not inside.any():
                continue
            gain = x_sd[inside].mean() / x_pc[inside].mean()
            assert gain > 1.3, f"lesion {lesion['id']} ({lesion['type']}) gains only {gain:.2f}x"

    def test_enhancement_visible_in_the_dicom(self, still_study: PhantomStudy) -> None:
        params = read_params(still_study)
        lesion = _lesion(params, "metastasis")
        parts = read_truth(still_study, "lesion_parts")
        inside = (read_truth(still_study, "lesions") == lesion["id"]) & (
            parts == params["lesion_part_codes"]["enhancing"]
        )
        pre, post = _dicom_volume(still_study, "t1_pre"), _dicom_volume(still_study, "t1_standard_dose")
        low = _dicom_volume(still_study, "t1_low_dose")
        sigma = still_study.series["t1_pre"].noise_sigma
        assert post[inside].mean() - pre[inside].mean() > 10 * sigma
        assert post[inside].mean() > low[inside].mean() > pre[inside].mean()

    def test_normal_structures_enhance(self, study: PhantomStudy) -> None:
        params = read_params(study)
        names = {s["name"] for s in params["structures"]}
        assert {"superior_sagittal_sinus", "choroid_plexus", "falx", "transverse_sinuses"} <= names
        conc, y_sd, brain = (
            read_truth(study, "gd_concentration_sd"),
            read_truth(study, "y_sd"),
            read_truth(study, "brain_mask"),
        )
        outside_lesions = read_truth(study, "lesions") == 0
        enhancing = (conc > 0.05) & outside_lesions
        assert enhancing.sum() > 100  # dura, sinuses, choroid plexus
        assert (y_sd[enhancing] > 0).all()
        assert (enhancing & (brain == 0)).any() and (enhancing & (brain == 1)).any()


class TestDoseRatio:
    @pytest.mark.parametrize("kind", ["metastasis", "ring_metastasis"])
    def test_mprage_standard_over_low_dose_matches_signal_equation(self, study: PhantomStudy, kind: str) -> None:
        params = read_params(study)
        lesion = _lesion(params, kind)
        physics = params["series"]["t1_pre"]["physics"][0]
        seq = Mprage(**{k: v for k, v in physics.items() if k != "type"})
        tumour = params["tissues"]["tumour"]
        expected = _expected_ratio(
            lambda t1: float(mprage_signal(1.0, t1, 1e9, seq)),
            tumour["t1_ms"],
            params["contrast"]["r1_per_mM_per_s"],
            lesion["concentration_mM_standard_dose"],
            params["contrast"]["low_dose"],
        )
        measured = self._measured(study, lesion["id"])
        assert expected > 1.5  # the standard dose adds much more than the low dose
        np.testing.assert_allclose(measured, expected, rtol=1e-3)

    def test_spoiled_gre_ratio_from_independent_formula(self, gre_study: PhantomStudy) -> None:
        params = read_params(gre_study)
        assert params["contrast"]["field_strength_t"] == 1.5
        assert params["contrast"]["agent"] == "gadoterate"
        assert params["contrast"]["r1_per_mM_per_s"] == pytest.approx(3.9)  # METHODS.md section 2
        lesion = _lesion(params, "metastasis")
        physics = params["series"]["t1_pre"]["physics"][0]
        assert physics["type"] == "SpoiledGre"
        expected = _expected_ratio(
            lambda t1: _spgr(t1, physics["tr_ms"], physics["flip_deg"]),
            params["tissues"]["tumour"]["t1_ms"],
            3.9,
            lesion["concentration_mM_standard_dose"],
            0.1,
        )
        np.testing.assert_allclose(self._measured(gre_study, lesion["id"]), expected, rtol=1e-3)

    @staticmethod
    def _measured(study: PhantomStudy, lesion_id: int) -> np.ndarray:
        y_sd, y_ld = read_truth(study, "y_sd"), read_truth(study, "y_ld")
        labels = read_truth(study, "lesions")
        voxels = (labels == lesion_id) & (y_ld > 0.05 * y_ld.max())
        assert voxels.sum() >= 5
        return y_sd[voxels] / y_ld[voxels]


class TestNoContrastNoChange:
    def test_truth_unchanged_where_concentration_is_zero(self, study: PhantomStudy) -> None:
        conc = read_truth(study, "gd_concentration_sd")
        x_pc, x_ld, x_sd = read_truth(study, "x_pc"), read_truth(study, "x_ld"), read_truth(study, "x_sd")
        brain = read_truth(study, "brain_mask") == 1
        zero = conc == 0
        assert (zero & brain).sum() > 0.5 * brain.sum()
        np.testing.assert_array_equal(x_sd[zero], x_pc[zero])
        np.testing.assert_array_equal(x_ld[zero], x_pc[zero])
        np.testing.assert_array_equal(read_truth(study, "y_sd")[zero], 0)

    def test_dicom_difference_is_pure_noise_where_concentration_is_zero(self, still_study: PhantomStudy) -> None:
        conc = read_truth(still_study, "gd_concentration_sd")
        brain = (read_truth(still_study, "brain_mask") == 1) & (conc == 0)
        diff = _dicom_volume(still_study, "t1_standard_dose") - _dicom_volume(still_study, "t1_pre")
        sigma = still_study.series["t1_pre"].noise_sigma
        values = diff[brain]
        assert abs(values.mean()) < 4 * math.sqrt(2) * sigma / math.sqrt(values.size)
        # Two independent noise realizations: the difference has sqrt(2) sigma (Rician ~ Gaussian at this SNR).
        assert values.std() == pytest.approx(math.sqrt(2) * sigma, rel=0.05)


class TestNoise:
    def test_background_follows_rayleigh_with_requested_sigma(self, study: PhantomStudy) -> None:
        pixels = _dicom_volume(study, "t1_pre")
        air = read_truth(study, "x_pc") == 0
        assert air.sum() > 10_000
        sigma = study.series["t1_pre"].noise_sigma
        assert sigma == pytest.approx(0.02 * 900)  # noise 2% of the 99th percentile, scaled to 900 (Siemens)
        background = pixels[air]
        # Rayleigh: E[M^2] = 2 sigma^2 and E[M] = sigma sqrt(pi / 2).
        assert math.sqrt(np.mean(background**2) / 2) == pytest.approx(sigma, rel=0.03)
        assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)

    def test_tissue_noise_matches_sigma(self, study: PhantomStudy) -> None:
        residual = _dicom_volume(study, "t1_pre") - read_truth(study, "x_pc")
        bright = read_truth(study, "x_pc") > 15 * study.series["t1_pre"].noise_sigma
        assert residual[bright].std() == pytest.approx(study.series["t1_pre"].noise_sigma, rel=0.05)

    def test_spatially_varying_noise_is_higher_in_the_centre(self, tmp_path: Path) -> None:
        options = small_options(noise_spatially_varying=True, roles=("t1_pre",), lesions=(), write_dicom=False)
        study = generate_study(options, tmp_path)
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(study.truth_dir / "series" / "t1_pre.nii.gz")))
        air = read_truth(study, "x_pc") == 0
        rows, cols = np.indices(pixels.shape[1:])
        centre = (abs(rows - 31.5) < 8) & (abs(cols - 31.5) < 8)
        edge = (abs(rows - 31.5) > 26) | (abs(cols - 31.5) > 26)

        def rms(region: np.ndarray) -> float:
            return math.sqrt(np.mean(pixels[air & region[None]] ** 2.0) / 2)

        sigma = study.series["t1_pre"].noise_sigma
        assert rms(edge) == pytest.approx(sigma, rel=0.1)
        assert rms(centre) > 1.3 * sigma


class TestNonEnhancingLesions:
    def test_no_change_on_t1_after_contrast(self, study: PhantomStudy) -> None:
        lesion = _lesion(read_params(study), "nonenhancing")
        inside = read_truth(study, "lesions") == lesion["id"]
        assert inside.sum() > 20
        assert not lesion["enhancing"]
        np.testing.assert_array_equal(read_truth(study, "y_sd")[inside], 0)
        np.testing.assert_array_equal(read_truth(study, "gd_concentration_sd")[inside], 0)

    @pytest.mark.parametrize("role", ["t2", "flair"])
    def test_bright_on_t2_and_flair(self, still_study: PhantomStudy, role: str) -> None:
        lesion = _lesion(read_params(still_study), "nonenhancing")
        reference = sitk.ReadImage(str(still_study.truth_dir / "x_pc.nii.gz"))
        image = sitk.ReadImage(str(still_study.truth_dir / "series" / f"{role}.nii.gz"), sitk.sitkFloat32)
        # No motion: both series see the head in the same place, so resampling in scanner space aligns them.
        on_t1 = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0))
        inside = read_truth(still_study, "lesions") == lesion["id"]
        brain = (read_truth(still_study, "brain_mask") == 1) & (read_truth(still_study, "lesions") == 0)
        assert on_t1[inside].mean() > 1.3 * np.median(on_t1[brain])

    def test_pose_maps_t1_pre_points_into_each_series(self, study: PhantomStudy) -> None:
        """The documented convention: t1_pre point -> series point is pose_s o pose_pre^-1."""
        params = read_params(study)
        lesion = _lesion(params, "nonenhancing")
        centre_pre = np.array(lesion["centre_t1_pre_mm"])
        pre, flair = study.series["t1_pre"].pose, study.series["flair"].pose
        subject = pre.rotation.T @ (centre_pre - pre.centre - pre.translation) + pre.centre
        np.testing.assert_allclose(subject, lesion["centre_subject_mm"], atol=1e-6)
        point = flair.apply(subject[None, :])[0]
        image = sitk.ReadImage(str(study.truth_dir / "series" / "flair.nii.gz"), sitk.sitkFloat32)
        value = image.EvaluateAtPhysicalPoint(tuple(point), sitk.sitkLinear)
        assert value > 1.3 * np.median(sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(image) > 0])
