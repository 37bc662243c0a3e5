"""A whole phantom study: six series in DICOM that validate and rebuild exactly, ground truth, determinism."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tests.conftest import require_tool
from tests.training.phantom.conftest import read_params, read_truth, series_dir, small_options
from training.phantom import PhantomStudy, generate_study
from training.phantom.options import ALL_ROLES


def _dciodvfy_errors(path: Path, tool: str) -> list[str]:
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _read_series(directory: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
    return reader.Execute()


class TestDicom:
    def test_all_six_series_written(self, study: PhantomStudy) -> None:
        assert set(study.series) == set(ALL_ROLES)
        numbers = [s.series_number for s in study.series.values()]
        assert len(set(numbers)) == 6
        for role, truth in study.series.items():
            assert series_dir(study, role).name.startswith(f"{truth.series_number:03d}_")
            assert len(truth.files) == truth.geometry.size[2]

    def test_every_file_passes_dciodvfy(self, study: PhantomStudy) -> None:
        tool = require_tool("dciodvfy")
        for role, truth in study.series.items():
            for path in truth.files:
                assert _dciodvfy_errors(path, tool) == [], f"{role}: {path.name}"

    def test_every_file_rereads_strictly(self, study: PhantomStudy) -> None:
        for truth in study.series.values():
            for path in truth.files:
                ds = pydicom.dcmread(path)  # strict: the autouse fixture makes invalid values raise
                assert ds.SeriesInstanceUID == truth.series_instance_uid
                assert ds.SeriesDescription == truth.description

    @pytest.mark.parametrize("role", ALL_ROLES)
    def test_series_reader_rebuilds_pixels_and_geometry(self, study: PhantomStudy, role: str) -> None:
        image = _read_series(series_dir(study, role))
        truth = sitk.ReadImage(str(study.truth_dir / "series" / f"{role}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(truth))
        geometry = study.series[role].geometry
        np.testing.assert_allclose(image.GetOrigin(), geometry.origin, atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), geometry.spacing, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), geometry.direction.ravel(), atol=1e-4)
        np.testing.assert_allclose(truth.GetOrigin(), geometry.origin, atol=1e-4)

    def test_contrast_attributes_only_after_contrast(self, study: PhantomStudy) -> None:
        volumes = {}
        for role, truth in study.series.items():
            ds = pydicom.dcmread(truth.files[0], stop_before_pixels=True)
            if role in ("t1_low_dose", "t1_standard_dose"):
                assert "ContrastBolusAgent" in ds
                volumes[role] = float(ds.ContrastBolusVolume)
            else:
                assert "ContrastBolusAgent" not in ds and "ContrastBolusVolume" not in ds
        params = read_params(study)
        weight = params["patient"]["weight_kg"]
        # gadobutrol 1 mmol/ml: 0.1 mmol/kg standard dose, cumulative volume on each post-contrast series.
        assert volumes["t1_standard_dose"] == pytest.approx(0.1 * weight, abs=0.06)
        assert volumes["t1_low_dose"] == pytest.approx(0.25 * 0.1 * weight, abs=0.06)

    def test_acquisition_times_in_order(self, study: PhantomStudy) -> None:
        times = [pydicom.dcmread(study.series[r].files[0], stop_before_pixels=True).AcquisitionTime for r in ALL_ROLES]
        assert times == sorted(times)

    def test_pre_and_post_t1_share_the_protocol(self, study: PhantomStudy) -> None:
        headers = [pydicom.dcmread(study.series[r].files[0], stop_before_pixels=True) for r in ALL_ROLES if "t1" in r]
        for keyword in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "SequenceName", "PixelSpacing"):
            assert len({str(ds.get(keyword)) for ds in headers}) == 1, keyword


class TestVendorFlavours:
    @pytest.mark.parametrize(
        ("vendor", "orientation", "output_format", "transfer_syntax", "t1_name"),
        [
            ("ge", "axial", "enhanced", "jpeg-ls", "Ax 3D T1 BRAVO"),
            ("philips", "sagittal", "classic", "rle", "T1W_3D_TFE"),
        ],
    )
    def test_study_validates(
        self, tmp_path: Path, vendor: str, orientation: str, output_format: str, transfer_syntax: str, t1_name: str
    ) -> None:
        tool = require_tool("dciodvfy")
        options = small_options(
            vendor=vendor,
            t1_orientation=orientation,
            output_format=output_format,
            transfer_syntax=transfer_syntax,
            lesions=None,
            lesion_count=1,
        )
        study = generate_study(options, tmp_path)
        assert study.series["t1_pre"].description == t1_name
        for role, truth in study.series.items():
            first = truth.files[0]
            assert _dciodvfy_errors(first, tool) == [], f"{vendor} {role}"
            ds = pydicom.dcmread(first)
            expected = np.asarray(
                sitk.GetArrayFromImage(sitk.ReadImage(str(study.truth_dir / "series" / f"{role}.nii.gz")))
            )
            pixels = ds.pixel_array
            np.testing.assert_array_equal(pixels, expected if output_format == "enhanced" else expected[0])


class TestTruth:
    def test_truth_volumes_on_the_t1_pre_grid(self, study: PhantomStudy) -> None:
        t1 = _read_series(series_dir(study, "t1_pre"))
        names = ["x_pc", "x_ld", "x_sd", "y_sd", "y_ld", "brain_mask", "lesions", "lesion_parts", "gd_concentration_sd"]
        for name in names:
            image = sitk.ReadImage(str(study.truth_dir / f"{name}.nii.gz"))
            assert image.GetSize() == t1.GetSize(), name
            np.testing.assert_allclose(image.GetOrigin(), t1.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(image.GetDirection(), t1.GetDirection(), atol=1e-4)
        assert sitk.ReadImage(str(study.truth_dir / "brain_mask.nii.gz")).GetPixelID() == sitk.sitkUInt8
        assert sitk.ReadImage(str(study.truth_dir / "lesions.nii.gz")).GetPixelID() == sitk.sitkUInt16
        np.testing.assert_allclose(read_truth(study, "y_sd"), read_truth(study, "x_sd") - read_truth(study, "x_pc"))

    def test_params_record_everything(self, study: PhantomStudy) -> None:
        params = read_params(study)
        assert params["options"]["seed"] == 3
        assert params["contrast"]["agent"] == "gadobutrol" and params["contrast"]["r1_per_mM_per_s"] == 4.5
        assert {lesion["type"] for lesion in params["lesions"]} == {"metastasis", "ring_metastasis", "nonenhancing"}
        for role, entry in params["series"].items():
            truth = study.series[role]
            assert entry["series_instance_uid"] == truth.series_instance_uid
            assert entry["grid"]["size"] == list(truth.geometry.size)
            assert np.allclose(entry["pose"]["rotation"], truth.pose.rotation)
            assert entry["noise_sigma"] > 0
        assert study.params["series"]["t1_pre"]["protocol"]["contrast"] is None

    def test_brain_and_lesions_are_plausible(self, study: PhantomStudy) -> None:
        brain = read_truth(study, "brain_mask")
        voxel_ml = np.prod(study.series["t1_pre"].geometry.spacing) / 1000.0
        assert 1100 < brain.sum() * voxel_ml < 2600  # adult brain incl. cerebellum, brainstem, ventricles
        labels = read_truth(study, "lesions")
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert (brain[labels > 0] == 1).mean() > 0.95
        x_pc = read_truth(study, "x_pc")
        assert x_pc[brain == 0].max() > x_pc[brain == 1].mean()  # the scalp fat is brighter than the brain


class TestDeterminism:
    def test_same_seed_same_pixels_other_seed_differs(self, study: PhantomStudy, tmp_path: Path) -> None:
        again = generate_study(small_options(), tmp_path / "again")
        for role, truth in study.series.items():
            for first, second in zip(truth.files, again.series[role].files, strict=True):
                a, b = pydicom.dcmread(first), pydicom.dcmread(second)
                assert a.PixelData == b.PixelData
                assert a.SOPInstanceUID == b.SOPInstanceUID
        for name in ("x_pc", "x_sd", "lesions"):
            np.testing.assert_array_equal(read_truth(study, name), read_truth(again, name))
        other = generate_study(small_options(seed=4, write_dicom=False, save_series_truth=False), tmp_path / "other")
        assert not np.array_equal(read_truth(study, "x_pc"), read_truth(other, "x_pc"))
        assert other.params["study"]["study_instance_uid"] != study.params["study"]["study_instance_uid"]


class TestOptionsShapeTheStudy:
    def test_resolution_override_and_role_subset(self, tmp_path: Path) -> None:
        options = small_options(resolution_mm=3.0, roles=("t1_pre", "flair"), lesions=(), save_series_truth=False)
        study = generate_study(options, tmp_path)
        assert set(study.series) == {"t1_pre", "flair"}
        assert sorted(p.name[:3] for p in study.dicom_dir.iterdir()) == ["002", "004"]
        t1 = study.series["t1_pre"].geometry
        assert t1.spacing == (3.0, 3.0, 3.0) and t1.size == (85, 85, 64)  # FOV kept: 256 x 256 x 192 mm
        flair = study.series["flair"].geometry
        assert flair.spacing[0] == pytest.approx(3.6 * 3.0 / 4.0) and flair.thickness == 6.0
        params = read_params(study)
        assert params["series"]["t2"]["written"] is False
        assert read_truth(study, "x_pc").shape == (64, 85, 85)


class TestPoses:
    def test_pose_convention_aligns_series_with_the_truth(self, study: PhantomStudy) -> None:
        """t1_pre point p maps to p_s = pose_s(pose_pre^-1(p)): resampling the low-dose series through that
        transform lands it on x_ld (the noise-free low dose on the t1_pre grid); ignoring the motion does not."""
        pre, low = study.series["t1_pre"].pose, study.series["t1_low_dose"].pose
        matrix = low.rotation @ pre.rotation.T
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(tuple(matrix.ravel()))
        transform.SetCenter(tuple(pre.centre))
        transform.SetTranslation(tuple(low.translation - matrix @ pre.translation))
        reference = sitk.ReadImage(str(study.truth_dir / "x_ld.nii.gz"))
        moving = sitk.ReadImage(str(study.truth_dir / "series" / "t1_low_dose.nii.gz"), sitk.sitkFloat32)
        x_ld = sitk.GetArrayFromImage(reference)
        interior = ndimage.binary_erosion(read_truth(study, "brain_mask") == 1, iterations=2)  # away from edges

        def error(t: sitk.Transform) -> float:
            aligned = sitk.GetArrayFromImage(sitk.Resample(moving, reference, t, sitk.sitkLinear, 0.0))
            return float(np.mean(np.abs(aligned - x_ld)[interior]))

        assert not np.allclose(matrix, np.eye(3))  # the head did move between the two series
        aligned = error(transform)
        assert aligned < 0.7 * error(sitk.Transform())  # motion ignored
        assert aligned < 0.7 * error(transform.GetInverse())  # convention reversed
        assert aligned < study.series["t1_low_dose"].noise_sigma  # what is left is noise
