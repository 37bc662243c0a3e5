"""Where not to trust a synthetic image: the input-distribution score (operators.ood) and the error model
(operators.uncertainty), on a synthetic head normalized for the linear baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import SimpleITK as sitk

from operators.brain_mask import BrainMask
from operators.model_inputs import NormalizedInputs, normalize
from operators.model_manifest import ModelManifest
from operators.ood import FEATURES as OOD_FEATURES
from operators.ood import OodReference, input_features, refuse
from operators.registration import RegisteredStudy
from operators.roles import Role
from operators.study import ContrastInfo
from operators.uncertainty import UncertaintyModel, error_features, uncertainty_map
from tests.conftest import REPO
from tests.operators.mni_head import enhancing_pair, head_volume, mni_head
from training.ood_calibration import auc
from training.uncertainty_calibration import dice_by_k

SPACING = 3.0
BASELINE = REPO / "models" / "ce-baseline-linear"
DOSE = 0.25
CONTRAST = {Role.T1_LOW_DOSE: ContrastInfo(dose=DOSE, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}


def _normalized(x_pc: np.ndarray, x_ld: np.ndarray, brain: np.ndarray) -> NormalizedInputs:
    volumes = {
        Role.T1_PRE: head_volume(x_pc, Role.T1_PRE, "1.2.1", SPACING),
        Role.T1_LOW_DOSE: head_volume(x_ld, Role.T1_LOW_DOSE, "1.2.2", SPACING),
    }
    study = RegisteredStudy(
        reference=volumes[Role.T1_PRE], images={r: v.image for r, v in volumes.items()}, volumes=volumes
    )
    mask = BrainMask(mask=brain, transform=sitk.Transform(), quality={})
    return normalize(study, mask, ModelManifest.load(BASELINE), contrast=CONTRAST)


@pytest.fixture(scope="module")
def pair() -> dict[str, np.ndarray]:
    return enhancing_pair(SPACING, sigma_pc=5.0, sigma_ld=6.0, scale_pc=3.0, scale_ld=3.3, uptake=60.0, seed=11)


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    return mni_head(SPACING)[1]


@pytest.fixture(scope="module")
def normalized(pair: dict[str, np.ndarray], brain: np.ndarray) -> NormalizedInputs:
    return _normalized(pair["x_pc"], pair["x_ld"], brain)


class TestInputFeatures:
    def test_every_feature_measured_but_registration_without_moved_series(self, normalized: NormalizedInputs) -> None:
        features = input_features(normalized)
        assert set(features) == set(OOD_FEATURES)
        assert features["voxel_mm_max"] == features["voxel_mm_min"] == SPACING
        assert features["registration_nmi"] is None
        assert all(features[k] is not None for k in ("log_snr", "intensity_p10", "intensity_p50", "bias"))
        assert 0.0 < features["intensity_p10"] < features["intensity_p50"] < 1.0  # type: ignore[operator]

    def test_more_noise_lowers_the_snr(
        self, pair: dict[str, np.ndarray], brain: np.ndarray, normalized: NormalizedInputs
    ) -> None:
        noisy = pair["x_pc"] + np.random.default_rng(3).normal(0.0, 40.0, pair["x_pc"].shape).astype(np.float32)
        worse = input_features(_normalized(noisy, pair["x_ld"], brain))
        # measured on the low-dose subtraction: eight times the pre-contrast noise is far below
        assert worse["log_snr"] < input_features(normalized)["log_snr"] - 0.5  # type: ignore[operator]

    def test_a_bias_field_raises_the_bias_feature(
        self, pair: dict[str, np.ndarray], brain: np.ndarray, normalized: NormalizedInputs
    ) -> None:
        z = np.linspace(-1.0, 1.0, pair["x_pc"].shape[0], dtype=np.float32)[:, None, None]
        biased = input_features(_normalized(pair["x_pc"] * (1.0 + 0.5 * z), pair["x_ld"] * (1.0 + 0.5 * z), brain))
        assert biased["bias"] > input_features(normalized)["bias"] + 0.2  # type: ignore[operator]


class TestReference:
    VALUES: ClassVar[list[dict[str, float | None]]] = [
        {"log_snr": 2.0, "bias": 0.10},
        {"log_snr": 3.0, "bias": 0.12},
        {"log_snr": 2.5, "bias": None},
    ]

    def test_ranges_and_floors(self) -> None:
        reference = OodReference.from_values(self.VALUES, threshold=3.0, reference="three studies")
        assert reference.ranges["log_snr"] == {"low": 2.0, "high": 3.0, "scale": pytest.approx(1.4826 * 0.5), "n": 3}
        assert reference.ranges["bias"]["n"] == 2
        assert reference.ranges["bias"]["scale"] == OOD_FEATURES["bias"][1]  # MAD 0.01 is below the floor

    def test_inside_scores_zero_outside_scores_the_distance(self) -> None:
        reference = OodReference.from_values(self.VALUES, threshold=2.0, reference="three studies")
        inside = reference.assess({"log_snr": 2.2, "bias": 0.11, "voxel_mm_max": 1.0})
        assert inside.score == 0.0 and not inside.outside and inside.worst is None
        assert "voxel_mm_max" not in inside.features  # no range for it: not scored
        outside = reference.assess({"log_snr": 0.2, "bias": 0.13})
        assert outside.worst == "log_snr"
        assert outside.score == pytest.approx(1.8 / (1.4826 * 0.5))
        assert outside.outside
        assert "log_snr 0.2 (reference 2 to 3)" in outside.describe()
        assert reference.assess({"log_snr": 0.2}, threshold=3.0).outside is False

    def test_file_round_trip_and_refusal(self, tmp_path: Path) -> None:
        reference = OodReference.from_values(self.VALUES, threshold=2.5, reference="three studies", command="x")
        path = tmp_path / "ood.json"
        path.write_text(json.dumps(reference.to_dict()))
        again = OodReference.from_file(path)
        assert again.ranges == reference.ranges and again.threshold == 2.5
        error = refuse(again.assess({"log_snr": 0.2}), series_instance_uid="1.2.3", label="series 1.2.3 ('T1')")
        assert error.attribute == "log_snr" and error.expected == "2 to 3" and error.found == "0.2"
        assert "GADSYNTH_OOD_ACTION=refuse" in str(error)

    def test_a_file_that_is_no_reference(self, tmp_path: Path) -> None:
        path = tmp_path / "ood.json"
        path.write_text(json.dumps({"schema_version": 1, "ranges": {}, "threshold": -1}))
        with pytest.raises(ValueError, match="threshold must be a positive number"):
            OodReference.from_file(path)
        path.write_text("[]")
        with pytest.raises(ValueError, match="is not a GadSynth OOD reference"):
            OodReference.from_file(path)

    def test_auc(self) -> None:
        assert auc([0.0, 1.0], [2.0, 3.0]) == 1.0
        assert auc([0.0, 0.0], [0.0, 0.0]) == 0.5
        assert auc([1.0, 3.0], [2.0]) == 0.5
        with pytest.raises(ValueError, match="at least one"):
            auc([], [1.0])


class TestErrorModel:
    MODEL = UncertaintyModel(weights={"abs_contrast": 0.5, "local_noise": 0.1}, const=0.01, low_confidence_std=0.1)

    def test_features_of_a_low_dose_model(self, normalized: NormalizedInputs) -> None:
        contrast = np.zeros(normalized.x_pc.shape, dtype=np.float32)
        features = error_features(contrast, normalized)
        assert set(features) == {
            "abs_contrast",
            "abs_contrast_smooth",
            "linear_disagreement",
            "local_noise",
            "low_dose_difference",
            "pre_residual",
        }
        assert float(features["abs_contrast"].max()) == 0.0
        # with no predicted contrast the disagreement is the smoothed linear scaling itself: large in the spheres
        assert float(features["linear_disagreement"].max()) > 100.0

    def test_inherited_noise_follows_the_low_dose_average(self, normalized: NormalizedInputs) -> None:
        """With ``average_low_dose`` the synthetic image carries the x_PC / x_LD mean's noise, not x_PC's."""
        assert normalized.x_ld is not None
        contrast = np.zeros(normalized.x_pc.shape, dtype=np.float32)
        mean = (normalized.x_pc + normalized.x_ld) / 2
        plain = error_features(contrast, normalized, mean)["pre_residual"]  # no averaging: x_PC whatever is passed
        np.testing.assert_array_equal(plain, error_features(contrast, normalized)["pre_residual"])
        post = normalized.manifest.postprocess.model_copy(update={"average_low_dose": True})
        averaging = NormalizedInputs(
            **{**normalized.__dict__, "manifest": normalized.manifest.model_copy(update={"postprocess": post})}
        )
        averaged = error_features(contrast, averaging, mean)["pre_residual"]
        as_if_acquired = NormalizedInputs(**{**normalized.__dict__, "x_pc": mean})  # the mean in x_PC's place
        np.testing.assert_array_equal(averaged, error_features(contrast, as_if_acquired)["pre_residual"])
        assert not np.array_equal(averaged, plain)

    def test_std_is_the_gaussian_scale_of_the_mean_absolute_error(self) -> None:
        features = {
            "abs_contrast": np.array([0.0, 100.0], np.float32),
            "local_noise": np.array([10.0, 10.0], np.float32),
        }
        std = self.MODEL.std(features, scale=1000.0)
        expected = (np.array([10.0, 60.0]) + 1.0) * math.sqrt(math.pi / 2)
        np.testing.assert_allclose(std, expected, rtol=1e-6)
        with pytest.raises(ValueError, match="local_noise"):
            self.MODEL.std({"abs_contrast": features["abs_contrast"]}, scale=1.0)

    def test_map_zero_outside_the_brain_and_low_confidence_above_the_threshold(
        self, normalized: NormalizedInputs, pair: dict[str, np.ndarray]
    ) -> None:
        contrast = np.where(normalized.brain, 5.0, 0.0).astype(np.float32)
        contrast[pair["x_ld"] > pair["x_pc"] + 100.0] += 200.0  # the spheres
        result = uncertainty_map(self.MODEL, contrast, normalized, enhancement=contrast > 50.0)
        assert float(result.std[~normalized.brain].max()) == 0.0
        threshold = result.summary["threshold"]
        assert result.low_confidence.any() and not result.low_confidence[~normalized.brain].any()
        # thresholded on the std smoothed over 2 mm: the region holds the spheres' high std, not isolated voxels
        assert float(np.median(result.std[result.low_confidence])) > threshold
        assert result.summary["brain"]["median"] > 0 and result.summary["low_confidence_ml"] >= 0.0
        assert set(result.summary) >= {"brain", "enhancement", "threshold", "low_confidence_fraction_of_brain"}

    def test_unknown_feature_in_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "uncertainty.json"
        path.write_text(json.dumps({**self.MODEL.to_dict(), "weights": {"texture": 1.0}}))
        with pytest.raises(ValueError, match=r"unknown features \['texture'\]"):
            UncertaintyModel.from_file(path)
        path.write_text(json.dumps(self.MODEL.to_dict()))
        assert UncertaintyModel.from_file(path).weights == self.MODEL.weights


class TestDiceByK:
    def test_perfect_reversed_and_random_rankings(self) -> None:
        error = np.random.default_rng(0).random(10_000).astype(np.float32)
        assert dice_by_k(error, error, (1, 10)) == [1.0, 1.0]
        assert dice_by_k(-error, error, (1, 10)) == [0.0, 0.0]
        chance = dice_by_k(np.random.default_rng(1).random(10_000).astype(np.float32), error, (10, 30))
        assert chance == pytest.approx([0.10, 0.30], abs=0.03)
