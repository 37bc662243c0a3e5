"""The optional quantitative T1 map: written on request only, physically right, valid DICOM, selected as t1_map."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.roles import Role
from operators.series_selector import select_roles
from operators.study_loader import load_study
from tests.conftest import require_tool
from tests.training.phantom.conftest import read_truth, series_dir, small_options
from training.phantom import PhantomStudy, generate_study
from training.phantom.options import ALL_ROLES, PhantomOptions
from training.phantom.tissues import tissue_params

ROLES_WITH_MAP = ("t1_pre", "t1_map", "t2", "flair")


@pytest.fixture(scope="module")
def map_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """The shared subject (seed 3, Siemens, motion) with the T1 map written beside four of the usual series."""
    return generate_study(small_options(roles=ROLES_WITH_MAP), tmp_path_factory.mktemp("phantom-t1map"))


def _pixels(study: PhantomStudy, role: str) -> np.ndarray:
    files = sorted(series_dir(study, role).iterdir())
    return np.stack([pydicom.dcmread(f).pixel_array for f in files])


def _dciodvfy_errors(path: Path, tool: str) -> list[str]:
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


class TestOptions:
    def test_default_exam_has_no_t1_map(self) -> None:
        assert "t1_map" not in PhantomOptions().roles
        assert PhantomOptions().roles == ALL_ROLES

    def test_t1_map_is_a_known_role(self) -> None:
        assert PhantomOptions(roles=("t1_pre", "t1_map")).roles == ("t1_pre", "t1_map")
        with pytest.raises(ValueError, match="t1_map"):
            PhantomOptions(roles=("t1_pre", "t1_mapp"))


class TestT1Map:
    def test_other_series_keep_every_pixel(self, map_study: PhantomStudy, study: PhantomStudy) -> None:
        """Asking for the map changes no pixel of the series the default exam writes (UIDs do change)."""
        for role in ("t1_pre", "t2", "flair"):
            np.testing.assert_array_equal(_pixels(map_study, role), _pixels(study, role))

    def test_same_grid_pose_and_time_as_the_pre_contrast_t1(self, map_study: PhantomStudy) -> None:
        pre, t1_map = map_study.series["t1_pre"], map_study.series["t1_map"]
        assert t1_map.geometry == pre.geometry
        assert t1_map.pose is pre.pose
        assert t1_map.protocol.acquisition_time == pre.protocol.acquisition_time
        assert t1_map.protocol.contrast is None
        assert t1_map.series_number == 5
        assert t1_map.description == pre.description + "_T1_Images"

    def test_values_are_tissue_t1_in_ms(self, map_study: PhantomStudy) -> None:
        """Deep white matter reads its tabulated T1 within the 3 % noise; CSF is far longer; air is 0."""
        pixels = _pixels(map_study, "t1_map").astype(np.float64)
        brain = read_truth(map_study, "brain_mask").astype(bool)
        field = map_study.params["options"]["field_strength"]
        wm, gm, csf = (tissue_params(name, field).t1_ms for name in ("wm", "gm", "csf"))
        inside = pixels[brain]
        mode_bin = np.histogram(inside, bins=np.arange(0, 5000, 50))
        peak = mode_bin[1][np.argmax(mode_bin[0])] + 25
        assert abs(peak - wm) < 0.1 * wm, f"brain histogram peak {peak} ms, white matter {wm} ms"
        assert np.percentile(inside, 99) > gm  # the longer T1s: grey matter, lesions, CSF partial volumes
        assert pixels.max() > 0.9 * csf  # pure CSF in the ventricles
        assert np.all(pixels[0] == 0) or np.median(pixels[0]) == 0  # the first sagittal slice is outside the head

    def test_noise_is_about_three_percent(self, map_study: PhantomStudy, tmp_path: Path) -> None:
        """Against the same map without noise: multiplicative, 1.5 x options.noise (3 % at the default 0.02)."""
        clean = generate_study(small_options(roles=("t1_map",), noise=0.0), tmp_path)
        noisy, exact = _pixels(map_study, "t1_map").astype(np.float64), _pixels(clean, "t1_map").astype(np.float64)
        tissue = exact > 200
        relative = (noisy[tissue] - exact[tissue]) / exact[tissue]
        assert np.std(relative) == pytest.approx(0.03, rel=0.1)
        assert abs(np.mean(relative)) < 0.003
        np.testing.assert_array_equal(noisy[~tissue & (exact == 0)], 0)
        wm = tissue_params("wm", map_study.params["options"]["field_strength"]).t1_ms
        assert map_study.params["series"]["t1_map"]["noise_sigma"] == pytest.approx(0.03 * wm)

    def test_image_type_says_t1_map_and_files_validate(self, map_study: PhantomStudy) -> None:
        tool = require_tool("dciodvfy")
        files = map_study.series["t1_map"].files
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "T1 MAP", "ND"]
        assert "ContrastBolusAgent" not in ds
        for path in files[:: max(1, len(files) // 4)]:
            assert _dciodvfy_errors(path, tool) == [], path.name

    @pytest.mark.parametrize("vendor", ["ge", "philips"])
    def test_enhanced_multiframe_map_validates_and_is_selected(self, vendor: str, tmp_path: Path) -> None:
        tool = require_tool("dciodvfy")
        options = small_options(roles=("t1_pre", "t1_map"), vendor=vendor, output_format="enhanced")
        study = generate_study(options, tmp_path)
        for truth in study.series.values():
            assert _dciodvfy_errors(truth.files[0], tool) == [], truth.role
        selection = select_roles(load_study(study.dicom_dir))
        assert selection.roles[Role.T1_MAP].series_instance_uid == study.series["t1_map"].series_instance_uid
        assert selection.roles[Role.T1_PRE].series_instance_uid == study.series["t1_pre"].series_instance_uid
        uid = study.series["t1_map"].series_instance_uid
        reasons = next(d.reasons for d in selection.decisions if d.series_instance_uid == uid)
        assert any("ImageType marks a T1 map" in reason and "T1_MAP" in reason for reason in reasons), reasons

    def test_selector_tells_the_map_from_the_weighted_t1(self, map_study: PhantomStudy) -> None:
        selection = select_roles(load_study(map_study.dicom_dir))
        for role in ROLES_WITH_MAP:
            assert selection.roles[Role(role)].series_instance_uid == map_study.series[role].series_instance_uid
