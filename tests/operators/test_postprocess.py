"""Post-processing: undoing the normalization, the baseline end to end, the enhancement mask."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from operators.brain_mask import BrainMask
from operators.inference import InferenceSettings, Prediction, infer
from operators.model_inputs import NormalizedInputs, normalize
from operators.model_manifest import ModelManifest, OutputScale
from operators.postprocess import (
    BRAIN_MARGIN_MM,
    SyntheticResult,
    brain_region,
    contrast_signal,
    enhancement_mask,
    gate_below_threshold,
    postprocess,
)
from operators.registration import RegisteredStudy
from operators.roles import Role
from operators.study import ContrastInfo, Volume
from tests.conftest import REPO
from tests.operators.mni_head import enhancing_pair, head_volume, mni_head

SPACING = 3.0
BASELINE = REPO / "models" / "ce-baseline-linear"
DOSE = 0.25
CONTRAST = {Role.T1_LOW_DOSE: ContrastInfo(dose=DOSE, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}


def _volume(array: np.ndarray, role: Role, uid: str) -> Volume:
    return head_volume(array, role, uid, SPACING)


@pytest.fixture(scope="module")
def pair() -> dict[str, np.ndarray]:
    return enhancing_pair(SPACING, sigma_pc=5.0, sigma_ld=6.0, scale_pc=3.0, scale_ld=3.3, uptake=60.0, seed=11)


@pytest.fixture(scope="module")
def normalized(pair: dict[str, np.ndarray]) -> NormalizedInputs:
    """The pair normalized for the baseline (already on one grid, true brain mask)."""
    volumes = {
        Role.T1_PRE: _volume(pair["x_pc"], Role.T1_PRE, "1.2.1"),
        Role.T1_LOW_DOSE: _volume(pair["x_ld"], Role.T1_LOW_DOSE, "1.2.2"),
    }
    study = RegisteredStudy(
        reference=volumes[Role.T1_PRE], images={r: v.image for r, v in volumes.items()}, volumes=volumes
    )
    _, brain = mni_head(SPACING)
    mask = BrainMask(mask=brain, transform=sitk.Transform(), quality={})
    return normalize(study, mask, ModelManifest.load(BASELINE), contrast=CONTRAST)


def _prediction(output: np.ndarray, manifest: ModelManifest) -> Prediction:
    return Prediction(output, manifest.name, manifest.version, manifest.sha256, ["CPUExecutionProvider"], False, 1, 0.0)


class TestBaselineEndToEnd:
    def test_output_is_linear_dose_scaling_in_the_brain(
        self, pair: dict[str, np.ndarray], normalized: NormalizedInputs
    ) -> None:
        result = postprocess(infer(normalized, InferenceSettings(tta=False)), normalized)
        synthetic = sitk.GetArrayFromImage(result.synthetic)
        x_pc = pair["x_pc"]
        assert normalized.x_ld is not None
        x_ld = normalized.x_ld  # low dose radiometrically aligned to x_pc's scale
        brain = pair["brain"]
        expected = np.maximum(x_pc + (x_ld - x_pc) / DOSE, 0.0)
        np.testing.assert_allclose(synthetic[brain], expected[brain], rtol=1e-4, atol=1e-2)
        region = brain_region(normalized.brain, (SPACING,) * 3, BRAIN_MARGIN_MM)
        np.testing.assert_array_equal(synthetic[~region], x_pc[~region].astype(np.float32))  # the source, as is
        # x_ld is x_pc's anatomy at 3.3 / 3 the intensity: the alignment must bring it back
        aligned = normalized.params["alignment"] * normalized.params["percentile_value_pc"]
        assert aligned / normalized.params["percentile_value_ld"] == pytest.approx(3.0 / 3.3, rel=0.01)

    def test_enhancing_regions_brighter_than_pre_contrast(
        self, pair: dict[str, np.ndarray], normalized: NormalizedInputs
    ) -> None:
        result = postprocess(infer(normalized, InferenceSettings(tta=False)), normalized)
        synthetic = sitk.GetArrayFromImage(result.synthetic)
        enhancement = sitk.GetArrayFromImage(result.enhancement)
        enhancing, x_pc = pair["enhancing"], pair["x_pc"]
        gain = float(np.mean(synthetic[enhancing] - x_pc[enhancing]))
        # true uptake 60 in head units = 180 in x_pc units at the low dose; linear scaling multiplies by 1 / d
        assert gain == pytest.approx(3.0 * 60.0 / DOSE, rel=0.1)
        quiet = pair["brain"] & ~ndimage.binary_dilation(enhancing, iterations=2)
        assert abs(float(np.mean(enhancement[quiet]))) < 0.05 * gain
        assert result.beyond is not None
        beyond = sitk.GetArrayFromImage(result.beyond)
        assert float(np.mean(beyond[enhancing] - synthetic[enhancing])) == pytest.approx(3.0 * 60.0, rel=0.15)

    def test_mask_finds_the_enhancing_spheres(self, pair: dict[str, np.ndarray], normalized: NormalizedInputs) -> None:
        result = postprocess(infer(normalized, InferenceSettings(tta=False)), normalized)
        enhancing = pair["enhancing"]
        hits = float((result.mask & enhancing).sum()) / float(enhancing.sum())
        false = float((result.mask & ~enhancing).sum()) / float(pair["brain"].sum())
        assert hits > 0.9
        assert false < 0.005
        assert result.noise_source == "negative half of y in the brain"
        assert result.threshold == pytest.approx(3.0 * result.noise_sigma)
        # the noise of y is the subtraction noise amplified by 1 / d
        assert result.noise_sigma == pytest.approx(normalized.noise_sigma_source / DOSE, rel=0.1)  # type: ignore[operator]

    def test_brain_box_gives_the_whole_volume_result(self, normalized: NormalizedInputs) -> None:
        """The network runs on the brain's box only; for a voxel-wise model the synthetic image is the same."""
        cropped = infer(normalized, InferenceSettings(tta=False))
        whole = infer(normalized, InferenceSettings(tta=False, brain_crop=False))
        assert whole.region is None and cropped.region is not None
        box = cropped.region
        assert box.volume_shape == normalized.brain.shape
        assert np.prod(box.shape) < np.prod(box.volume_shape)
        region = brain_region(normalized.brain, (SPACING,) * 3, BRAIN_MARGIN_MM)
        inside = np.zeros_like(region)
        inside[box.slices] = True
        assert not (region & ~inside).any()  # everything post-processing keeps lies in the box
        assert cropped.to_dict()["region"]["shape_zyx"] == list(box.shape)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(postprocess(cropped, normalized).synthetic),
            sitk.GetArrayFromImage(postprocess(whole, normalized).synthetic),
        )

    def test_geometry_and_model_record(self, normalized: NormalizedInputs) -> None:
        result = postprocess(infer(normalized, InferenceSettings(tta=False)), normalized)
        for image in (result.synthetic, result.enhancement):
            assert image.GetSize() == normalized.reference.GetSize()
            assert image.GetOrigin() == normalized.reference.GetOrigin()
            assert image.GetDirection() == normalized.reference.GetDirection()
            assert image.GetPixelID() == sitk.sitkFloat32
        assert result.mask.shape == normalized.x_pc.shape and result.mask.dtype == bool
        assert result.model["name"] == "ce-baseline-linear"
        assert len(result.model["sha256"]) == 64
        assert result.params["enhancing_voxels"] == int(result.mask.sum())


class TestUndo:
    def test_local_std_scale(self, normalized: NormalizedInputs) -> None:
        base = normalized.manifest
        output = base.output.model_copy(update={"scale": OutputScale.LOCAL_STD, "gamma": 1.3})
        manifest = base.model_copy(update={"output": output})
        y_hat = np.full(normalized.x_pc.shape, 2.0, dtype=np.float32)
        local = NormalizedInputs(**{**normalized.__dict__, "manifest": manifest})
        y = contrast_signal(_prediction(y_hat, manifest), local)
        assert normalized.s_ld is not None
        expected = 1.3 * normalized.s_ld * 2.0 / normalized.params["sigma"] * normalized.params["percentile_value_pc"]
        np.testing.assert_allclose(y, expected, rtol=1e-5)

    def test_nonnegative_output(self, normalized: NormalizedInputs) -> None:
        base = normalized.manifest
        manifest = base.model_copy(update={"output": base.output.model_copy(update={"nonnegative": True})})
        local = NormalizedInputs(**{**normalized.__dict__, "manifest": manifest})
        y = contrast_signal(_prediction(np.full(normalized.x_pc.shape, -1.0, np.float32), manifest), local)
        assert float(y.min()) == 0.0

    def test_local_std_needs_the_differential_record(self, normalized: NormalizedInputs) -> None:
        base = normalized.manifest
        manifest = base.model_copy(update={"output": base.output.model_copy(update={"scale": OutputScale.LOCAL_STD})})
        local = NormalizedInputs(**{**normalized.__dict__, "manifest": manifest, "s_ld": None})
        with pytest.raises(ValueError, match=r"output scale 'local_std' needs s_LD and sigma"):
            contrast_signal(_prediction(np.zeros_like(normalized.x_pc), manifest), local)


@pytest.mark.parametrize("switch", ["average_low_dose", "gate_below_threshold"])
def test_switch_off_by_default_and_absent_from_old_manifests(switch: str) -> None:
    manifest = ModelManifest.load(BASELINE)
    assert getattr(manifest.postprocess, switch) is False
    assert switch not in manifest.to_json()
    on = manifest.postprocess.model_copy(update={switch: True})
    assert f'"{switch}": true' in manifest.model_copy(update={"postprocess": on}).to_json()


class TestLowDoseAverage:
    """``average_low_dose``: unenhanced tissue becomes the mean of x_PC and x_LD; enhancement stays x_PC + y."""

    @pytest.fixture
    def results(self, normalized: NormalizedInputs) -> tuple[NormalizedInputs, SyntheticResult, SyntheticResult]:
        base = normalized.manifest
        manifest = base.model_copy(
            update={"postprocess": base.postprocess.model_copy(update={"average_low_dose": True})}
        )
        averaging = NormalizedInputs(**{**normalized.__dict__, "manifest": manifest})
        # a contrast of 0 in most of the brain, a ramp through the threshold and a bright block
        y_hat = np.zeros(normalized.x_pc.shape, np.float32)
        y_hat[20:30, 20:40, 20:40] = np.linspace(0.0, 1.0, 20, dtype=np.float32)[None, None, :]
        y_hat[35:40, 25:35, 25:35] = 2.0
        plain = postprocess(_prediction(y_hat, base), normalized)
        averaged = postprocess(_prediction(y_hat, manifest), averaging)
        return normalized, plain, averaged

    def test_unenhanced_brain_is_the_mean_of_both_acquisitions(
        self, pair: dict[str, np.ndarray], results: tuple[NormalizedInputs, SyntheticResult, SyntheticResult]
    ) -> None:
        normalized, plain, averaged = results
        assert normalized.x_ld is not None
        y = sitk.GetArrayFromImage(plain.enhancement)
        region = brain_region(normalized.brain, (SPACING,) * 3, BRAIN_MARGIN_MM)
        flat = region & (y == 0) & (normalized.x_pc > 0) & (normalized.x_ld > 0)
        assert flat.sum() > 1000
        image = sitk.GetArrayFromImage(averaged.synthetic)
        np.testing.assert_allclose(image[flat], ((normalized.x_pc + normalized.x_ld) / 2)[flat], rtol=1e-5, atol=1e-3)
        # two acquisitions with independent noise (sigma 5 and 6 / 1.1 after alignment): the error against the
        # noise-free head falls to about sqrt(5^2 + 5.45^2) / 2 = 3.7 from 5
        clean = 3.0 * sitk.GetArrayFromImage(mni_head(SPACING)[0]).astype(np.float32)
        brain = flat & normalized.brain & ~pair["enhancing"]
        noise_plain = np.std((sitk.GetArrayFromImage(plain.synthetic) - clean)[brain])
        noise_mean = np.std((image - clean)[brain])
        assert noise_plain == pytest.approx(5.0, rel=0.1)
        assert noise_mean < 0.8 * noise_plain
        assert averaged.params["average_low_dose"] is True and plain.params["average_low_dose"] is False

    def test_enhancement_and_outside_keep_the_plain_form(
        self, results: tuple[NormalizedInputs, SyntheticResult, SyntheticResult]
    ) -> None:
        normalized, plain, averaged = results
        y = sitk.GetArrayFromImage(plain.enhancement)
        image, before = sitk.GetArrayFromImage(averaged.synthetic), sitk.GetArrayFromImage(plain.synthetic)
        above = y >= averaged.threshold
        assert above.sum() > 100
        np.testing.assert_array_equal(image[above], before[above])  # x_PC + y where y reaches the threshold
        region = brain_region(normalized.brain, (SPACING,) * 3, BRAIN_MARGIN_MM)
        np.testing.assert_array_equal(image[~region], normalized.x_pc[~region])  # the source outside
        ramp = (y > 0) & (y < averaged.threshold) & region
        added = (image - before)[ramp]
        half = ((normalized.x_ld - normalized.x_pc) / 2)[ramp]
        weight = 1 - y[ramp] / averaged.threshold
        np.testing.assert_allclose(added, weight * half, rtol=1e-4, atol=1e-3)
        # the mask, the beyond image and the enhancement do not change
        np.testing.assert_array_equal(averaged.mask, plain.mask)
        assert plain.beyond is not None and averaged.beyond is not None
        np.testing.assert_array_equal(sitk.GetArrayFromImage(averaged.beyond), sitk.GetArrayFromImage(plain.beyond))


class TestGateBelowThreshold:
    """``gate_below_threshold``: contrast below the enhancement threshold fades to 0; above it nothing changes."""

    @staticmethod
    def _with(normalized: NormalizedInputs, **flags: bool) -> NormalizedInputs:
        base = normalized.manifest
        manifest = base.model_copy(update={"postprocess": base.postprocess.model_copy(update=flags)})
        return NormalizedInputs(**{**normalized.__dict__, "manifest": manifest})

    @staticmethod
    def _y_hat(shape: tuple[int, ...]) -> np.ndarray:
        y_hat = np.zeros(shape, np.float32)  # a fine ramp through the threshold and a bright block
        y_hat[20:30, 20:40, 20:40] = np.linspace(0.0, 0.25, 20, dtype=np.float32)[None, None, :]
        y_hat[35:40, 25:35, 25:35] = 2.0
        return y_hat

    def test_the_contrast_added_is_y_times_y_over_threshold_below_it(self, normalized: NormalizedInputs) -> None:
        gating = self._with(normalized, gate_below_threshold=True)
        y_hat = self._y_hat(normalized.x_pc.shape)
        plain = postprocess(_prediction(y_hat, normalized.manifest), normalized)
        gated = postprocess(_prediction(y_hat, gating.manifest), gating)
        y = sitk.GetArrayFromImage(plain.enhancement)
        threshold = gated.threshold
        assert threshold == plain.threshold > 0
        added = sitk.GetArrayFromImage(gated.synthetic) - normalized.x_pc
        above, ramp = y >= threshold, (y > 0) & (y < threshold)
        assert above.sum() > 100 and ramp.sum() > 100
        np.testing.assert_allclose(added[above], y[above], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(added[ramp], (y * y / threshold)[ramp], rtol=1e-4, atol=1e-3)
        assert (added[ramp] < y[ramp]).all()
        # the beyond image gets the same contrast; the mask and the enhancement map (the model's y) do not change
        assert gated.beyond is not None and normalized.x_ld is not None
        np.testing.assert_allclose(sitk.GetArrayFromImage(gated.beyond) - normalized.x_ld, added, atol=1e-3)
        np.testing.assert_array_equal(gated.mask, plain.mask)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(gated.enhancement), y)
        assert gated.params["gate_below_threshold"] is True and plain.params["gate_below_threshold"] is False

    def test_with_the_low_dose_average_the_two_weights_sum_to_one(self, normalized: NormalizedInputs) -> None:
        both = self._with(normalized, gate_below_threshold=True, average_low_dose=True)
        result = postprocess(_prediction(self._y_hat(normalized.x_pc.shape), both.manifest), both)
        assert normalized.x_ld is not None
        y, t = sitk.GetArrayFromImage(result.enhancement), result.threshold
        region = brain_region(normalized.brain, (SPACING,) * 3, BRAIN_MARGIN_MM)
        ramp = (y > 0) & (y < t) & region
        assert ramp.sum() > 100
        weight = y / t  # of x_PC + y; 1 - weight of the mean of x_PC and x_LD
        expected = weight * (normalized.x_pc + y) + (1 - weight) * (normalized.x_pc + normalized.x_ld) / 2
        np.testing.assert_allclose(sitk.GetArrayFromImage(result.synthetic)[ramp], expected[ramp], rtol=1e-4, atol=1e-2)

    def test_it_removes_most_of_the_bias_of_rectified_noise(self) -> None:
        # y = max(noise, 0) in unenhanced tissue: mean 0.40 sigma; gated at 3 sigma: E[y^2 / 3 sigma; y > 0] = sigma / 6
        rng = np.random.default_rng(3)
        y = np.maximum(rng.normal(0.0, 1.0, 1_000_000), 0.0).astype(np.float32)
        assert y.mean() == pytest.approx(0.399, abs=0.003)
        assert gate_below_threshold(y, 3.0).mean() == pytest.approx(1 / 6, abs=0.003)
        lesion = np.float32([3.0, 5.0, 50.0])
        np.testing.assert_array_equal(gate_below_threshold(lesion, 3.0), lesion)


class TestEnhancementMask:
    def test_fallback_noise_without_negative_values(self) -> None:
        y = np.zeros((20, 20, 20), dtype=np.float32)
        y[5:9, 5:9, 5:9] = 10.0
        y[15, 15, 15] = 10.0  # a single voxel: dropped as smaller than min_voxels
        brain = np.ones_like(y, dtype=bool)
        mask, threshold, sigma, source = enhancement_mask(
            y, brain, threshold_sigma=3.0, min_voxels=3, fallback_sigma=1.0
        )
        assert source == "noise of the low-dose subtraction" and sigma == 1.0 and threshold == 3.0
        assert int(mask.sum()) == 64 and not mask[15, 15, 15]

    def test_outside_brain_never_enhances(self) -> None:
        y = np.random.default_rng(0).normal(0.0, 1.0, (20, 20, 20)).astype(np.float32)
        y[:, :, :10] += 20.0
        brain = np.zeros_like(y, dtype=bool)
        brain[:, :, 5:] = True
        mask, _, sigma, _ = enhancement_mask(y, brain, threshold_sigma=3.0, min_voxels=1, fallback_sigma=None)
        assert sigma == pytest.approx(1.0, rel=0.1)
        assert not mask[:, :, :5].any()
        assert mask[:, :, 5:10].mean() > 0.99


class TestPhantomBaseline:
    def test_enhancing_lesions_brighter_than_t1_pre(self) -> None:
        """A phantom with one solid, one ring-enhancing and one non-enhancing lesion, through the whole chain."""
        from operators.brain_mask import brain_mask
        from operators.registration import register_volumes
        from tests.operators.phantom_case import phantom_case
        from training.phantom import LesionSpec

        lesions = (
            LesionSpec("metastasis", 16.0),
            LesionSpec("ring_metastasis", 20.0),
            LesionSpec("nonenhancing", 16.0),
        )
        case = phantom_case(2, lesions=lesions)
        manifest = ModelManifest.load(BASELINE)
        study = register_volumes(case.volumes, roles=tuple(manifest.required_roles))
        mask = brain_mask(case.volumes[Role.T1_PRE].image)
        normalized = normalize(study, mask, manifest, contrast=case.selection.contrast)
        result = postprocess(infer(normalized), normalized)
        synthetic = sitk.GetArrayFromImage(result.synthetic)
        x_pc = sitk.GetArrayFromImage(case.volumes[Role.T1_PRE].image)
        dose = case.selection.contrast[Role.T1_LOW_DOSE].dose
        assert dose is not None and dose == pytest.approx(case.params["contrast"]["low_dose"], rel=0.02)

        brain = mask.array()
        assert normalized.x_ld is not None
        expected = np.maximum(x_pc + (normalized.x_ld - x_pc) / dose, 0.0)
        np.testing.assert_allclose(synthetic[brain], expected[brain], rtol=1e-4, atol=0.05)
        np.testing.assert_allclose(synthetic[~brain], np.maximum(x_pc[~brain], 0.0), atol=1e-3)

        labels, y_sd = case.truth("lesions"), case.truth("y_sd")
        gains = {}
        for lesion in case.params["lesions"]:
            inside = labels == lesion["id"]
            if lesion["enhancing"]:
                inside &= y_sd > 0.25 * float(y_sd[inside].max())
            gains[lesion["type"]] = float(np.mean(synthetic[inside] - x_pc[inside]))
            if lesion["enhancing"]:
                assert gains[lesion["type"]] > 0.5 * float(np.mean(y_sd[inside])), lesion["type"]
                assert float(result.mask[inside].mean()) > 0.5, lesion["type"]
        assert abs(gains["nonenhancing"]) < 0.2 * min(gains["metastasis"], gains["ring_metastasis"])
