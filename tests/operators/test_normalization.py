"""Normalization: the differential method's steps (noise estimate, unit-scale local noise), direct kinds, records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import Dataset
from scipy import ndimage

from operators.brain_mask import BrainMask
from operators.direct_normalization import (
    FixedScaleNormalization,
    IdentityNormalization,
    MinMaxNormalization,
    ZScoreNormalization,
    direct_strategy,
    normalize_target,
    role_strategy,
)
from operators.errors import InputDicomError
from operators.model_inputs import condition_vector, normalize
from operators.model_manifest import (
    ConditionFeature,
    ConditionSpec,
    ModelManifest,
    NormalizationKind,
    NormalizationSpec,
)
from operators.normalization import (
    DifferentialNormalization,
    brain_percentile,
    local_mean_std,
    negative_half_sigma,
    robust_scalar,
    truncated_std_factor,
)
from operators.registration import RegisteredStudy
from operators.roles import Role
from operators.study import ContrastInfo, Instance, Series, Volume
from tests.conftest import REPO
from tests.operators.mni_head import enhancing_pair, mni_head

SPACING = 3.0
BASELINE = REPO / "models" / "ce-baseline-linear"
DIFFERENTIAL = NormalizationSpec(kind=NormalizationKind.DIFFERENTIAL)


def true_sigma(pair: dict[str, np.ndarray], params: dict[str, float], sigma_pc: float, sigma_ld: float) -> float:
    """Noise of the initial subtraction in normalized units: both images' noise through steps 3 and 4."""
    pc = sigma_pc / params["percentile_value_pc"]
    ld = params["alignment"] * sigma_ld / params["percentile_value_ld"]
    return float(np.median(pair["noise_field"][pair["brain"]]) * np.hypot(pc, ld))


class TestSteps:
    def test_percentile_inside_the_brain(self) -> None:
        image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
        brain = np.zeros_like(image, dtype=bool)
        brain[:5] = True  # values 0..499
        assert brain_percentile(image, brain, 95.0) == pytest.approx(474.05)

    def test_percentile_needs_a_brain(self) -> None:
        image = np.ones((10, 10, 10), dtype=np.float32)
        with pytest.raises(ValueError, match=r"the brain mask holds 0 voxels \(expected at least 100\)"):
            brain_percentile(image, np.zeros_like(image, dtype=bool), 95.0)
        with pytest.raises(ValueError, match=r"the 95th brain percentile is 0 \(expected a positive intensity\)"):
            brain_percentile(np.zeros_like(image), np.ones_like(image, dtype=bool), 95.0)

    def test_robust_scalar_ignores_enhancement(self) -> None:
        rng = np.random.default_rng(0)
        pre = rng.uniform(0.3, 1.0, 200_000).astype(np.float32)
        post = pre / 1.7 + rng.normal(0.0, 0.01, pre.size).astype(np.float32)
        post[:20_000] += 0.5  # 10% strongly enhancing voxels
        brain = np.ones(pre.size, dtype=bool)
        assert robust_scalar(post, pre, brain) == pytest.approx(1.7, rel=0.01)
        plain = float((post * pre).sum() / (post * post).sum())
        assert abs(plain - 1.7) > 0.05  # least squares would be pulled by the enhancement

    def test_noise_from_the_negative_half(self) -> None:
        rng = np.random.default_rng(1)
        z = rng.normal(0.0, 0.03, 300_000)
        z[:60_000] += rng.uniform(0.05, 0.5, 60_000)  # contrast only adds signal
        assert negative_half_sigma(z, np.ones(z.size, dtype=bool)) == pytest.approx(0.03, rel=0.05)

    def test_noise_needs_negative_values(self) -> None:
        z = np.abs(np.random.default_rng(2).normal(0.0, 1.0, 1000))
        with pytest.raises(ValueError, match=r"only 0 negative subtraction values in the brain"):
            negative_half_sigma(z, np.ones(z.size, dtype=bool))

    def test_truncated_normal_std(self) -> None:
        assert truncated_std_factor(2.0) == pytest.approx(0.8796, abs=1e-4)
        assert truncated_std_factor(8.0) == pytest.approx(1.0, abs=1e-6)
        samples = np.random.default_rng(3).standard_normal(1_000_000)
        assert truncated_std_factor(2.0) == pytest.approx(samples[np.abs(samples) <= 2.0].std(), abs=2e-3)

    def test_local_statistics_match_full_resolution_filter(self) -> None:
        rng = np.random.default_rng(4)
        shape = (60, 72, 64)
        smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), 10.0) * 50.0
        z = (smooth + rng.normal(0.0, 1.0, shape) * (1.0 + np.linspace(0, 1, shape[2]))).astype(np.float32)
        weights = rng.uniform(size=shape) > 0.2
        m, s = local_mean_std(z, weights, (16.0, 16.0, 16.0), fill_std=1.0)
        w = weights.astype(np.float64)
        g = {"sigma": 16.0, "mode": "constant", "truncate": 3.0}
        gw = ndimage.gaussian_filter(w, **g)
        m_ref = ndimage.gaussian_filter(w * z, **g) / gw
        s_ref = np.sqrt(ndimage.gaussian_filter(w * z * z, **g) / gw - m_ref**2)
        inner = (slice(8, -8),) * 3
        assert np.abs(m - m_ref)[inner].max() < 0.05 * np.abs(m_ref).max()
        assert np.abs(s / s_ref - 1.0)[inner].max() < 0.03


@pytest.fixture(scope="module")
def pair() -> dict[str, np.ndarray]:
    """Pre and low-dose with three enhancing spheres; noise 6 and 9 (t1_pre and low-dose intensity units)."""
    return enhancing_pair(SPACING, sigma_pc=6.0, sigma_ld=9.0, seed=5)


@pytest.fixture(scope="module")
def image() -> tuple[np.ndarray, np.ndarray]:
    """The MNI head and its brain."""
    head, brain = mni_head(SPACING)
    return sitk.GetArrayFromImage(head), sitk.GetArrayFromImage(brain) > 0


class TestDifferential:
    def test_noise_estimate_within_10_percent(self, pair: dict[str, np.ndarray]) -> None:
        result = DifferentialNormalization(DIFFERENTIAL).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        assert result.sigma == pytest.approx(true_sigma(pair, result.params, 6.0, 9.0), rel=0.10)
        # in t1_pre's units: x_ld (2 x head) is brought to x_pc's scale (3 x head), so its noise counts 1.5 times
        assert result.params["sigma_source"] == pytest.approx(np.hypot(6.0, 9.0 * 1.5), rel=0.10)

    def test_local_normalization_has_unit_noise(self, pair: dict[str, np.ndarray]) -> None:
        result = DifferentialNormalization(DIFFERENTIAL).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        quiet = pair["brain"] & ~ndimage.binary_dilation(pair["enhancing"], iterations=2)
        unit = (result.z_tilde - result.m_ld) / result.s_ld
        assert float(unit[quiet].std()) == pytest.approx(1.0, abs=0.1)
        assert float(result.z_ld[quiet].std()) == pytest.approx(result.sigma, rel=0.1)

    def test_spatially_varying_noise_is_unit_everywhere(self) -> None:
        """Noise rising by half across the head: after local normalization every third of the brain is unit."""
        pair = enhancing_pair(SPACING, sigma_pc=5.0, sigma_ld=7.0, noise_gradient=0.5, seed=6)
        result = DifferentialNormalization(DIFFERENTIAL).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        quiet = pair["brain"] & ~ndimage.binary_dilation(pair["enhancing"], iterations=2)
        unit = (result.z_tilde - result.m_ld) / result.s_ld
        columns = np.indices(unit.shape)[2]
        width = unit.shape[2]
        raw = result.z_tilde - result.m_ld
        for low, high in ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)):
            band = quiet & (columns >= low * width) & (columns < high * width)
            assert float(unit[band].std()) == pytest.approx(1.0, abs=0.1), (low, high)
        left, right = quiet & (columns < width / 3), quiet & (columns >= 2 * width / 3)
        assert float(raw[right].std() / raw[left].std()) > 1.15  # the raw subtraction's noise did vary

    @pytest.mark.parametrize("region", ["brain", "image"])
    def test_second_pass_and_region_options(self, pair: dict[str, np.ndarray], region: str) -> None:
        spec = NormalizationSpec(kind="differential", local_iterations=2, local_region=region)  # type: ignore[arg-type]
        result = DifferentialNormalization(spec).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        quiet = pair["brain"] & ~ndimage.binary_dilation(pair["enhancing"], iterations=2)
        unit = (result.z_tilde - result.m_ld) / result.s_ld
        assert float(unit[quiet].std()) == pytest.approx(1.0, abs=0.1)
        assert result.params["local_iterations"] == 2 and result.params["local_region"] == region

    def test_alignment_and_enhancement(self, pair: dict[str, np.ndarray]) -> None:
        result = DifferentialNormalization(DIFFERENTIAL).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        params = result.params
        # x_ld = 2 * head, x_pc = 3 * head: after step 3 the ratio left for step 4 is (3 / p_pc) / (2 / p_ld)
        expected = 3.0 / params["percentile_value_pc"] / (2.0 / params["percentile_value_ld"])
        assert params["alignment"] == pytest.approx(expected, rel=0.01)
        assert float(np.median(result.z_ld[pair["enhancing"]])) > 10 * result.sigma
        quiet = pair["brain"] & ~pair["enhancing"]
        assert abs(float(np.median(result.z_tilde[quiet]))) < 0.2 * result.sigma

    def test_record_is_json_ready(self, pair: dict[str, np.ndarray]) -> None:
        import json

        result = DifferentialNormalization(DIFFERENTIAL).run(
            pair["x_pc"], pair["x_ld"], pair["brain"], spacing_zyx=(SPACING,) * 3
        )
        record = json.loads(json.dumps(result.params))
        assert record["kind"] == "differential"
        assert record["truncation_factor"] == pytest.approx(0.8796, abs=1e-4)
        assert record["local_sigma_vox"] == [16.0, 16.0, 16.0]
        np.testing.assert_allclose(result.x_pc * record["percentile_value_pc"], pair["x_pc"], rtol=1e-5, atol=1e-3)

    def test_window_in_mm(self) -> None:
        spec = NormalizationSpec(kind="differential", local_sigma=16.0, local_sigma_unit="mm")
        assert DifferentialNormalization(spec).sigma_vox((4.0, 1.0, 2.0)) == (4.0, 16.0, 8.0)

    def test_wrong_kind(self) -> None:
        with pytest.raises(ValueError, match=r"needs kind 'differential', found 'zscore'"):
            DifferentialNormalization(NormalizationSpec(kind="zscore"))


class TestDirect:
    def test_zscore(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        array, brain = image
        strategy = ZScoreNormalization(NormalizationSpec(kind="zscore"))
        out, params = strategy.run(array, brain)
        assert float(out[brain].mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(out[brain].std()) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(strategy.undo(out, params), array, atol=1e-3)

    def test_zscore_clip(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        array, brain = image
        out, _ = ZScoreNormalization(NormalizationSpec(kind="zscore", zscore_clip=1.0)).run(array, brain)
        assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0

    def test_minmax(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        array, brain = image
        strategy = MinMaxNormalization(NormalizationSpec(kind="minmax"))
        out, params = strategy.run(array, brain)
        assert float(out.min()) == 0.0 and float(out.max()) == 1.0
        assert float(np.mean(out[brain] >= 1.0)) == pytest.approx(0.005, abs=0.003)
        inside = (array >= params["low"]) & (array <= params["high"])
        np.testing.assert_allclose(strategy.undo(out, params)[inside], array[inside], rtol=1e-5, atol=1e-3)

    def test_standard_dose_target_keeps_enhancement_above_one(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        """Inputs clip at the pre-contrast's 99.5th percentile; the target only at ``target_max`` (issue 12)."""
        array, brain = image
        spec = NormalizationSpec(kind="minmax", target_max=4.0)
        _, params = MinMaxNormalization(spec).run(array, brain)
        bright = array * 3.0
        target = normalize_target(spec, bright, params)
        assert float(MinMaxNormalization(spec).apply(bright, params).max()) == 1.0
        assert 1.0 < float(target.max()) <= 4.0
        inside = (bright >= params["low"]) & (bright <= params["low"] + 4.0 * (params["high"] - params["low"]))
        np.testing.assert_allclose(
            MinMaxNormalization(spec).undo(target, params)[inside], bright[inside], rtol=1e-5, atol=1e-2
        )
        assert NormalizationSpec(kind="minmax").target_max == 1.0  # shipped manifests without it: as before
        assert float(normalize_target(NormalizationSpec(kind="minmax"), bright, params).max()) == 1.0

    def test_identity_and_dispatch(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        array, brain = image
        assert isinstance(direct_strategy(NormalizationSpec(kind="none")), IdentityNormalization)
        assert isinstance(direct_strategy(NormalizationSpec(kind="minmax")), MinMaxNormalization)
        out, params = IdentityNormalization(NormalizationSpec(kind="none")).run(array, brain)
        assert params == {} and np.array_equal(out, array)
        with pytest.raises(ValueError, match=r"no per-modality strategy for kind 'differential'"):
            direct_strategy(DIFFERENTIAL)

    def test_quantitative_t1_map_keeps_its_unit(self, image: tuple[np.ndarray, np.ndarray]) -> None:
        """A T1 map is divided by 4000 ms whatever the study: a longer T1 stays longer (min-max would erase it)."""
        _, brain = image
        spec = NormalizationSpec(kind="minmax")
        strategy = role_strategy(spec, "t1_map")
        assert isinstance(strategy, FixedScaleNormalization)
        assert isinstance(role_strategy(spec, "t1_pre"), MinMaxNormalization)
        t1 = np.where(brain, 1084.0, 0.0).astype(np.float32)  # white matter at 3 T
        out, params = strategy.run(t1, brain)
        assert params == {"scale": 4000.0}
        np.testing.assert_allclose(out[brain], 1084.0 / 4000.0, rtol=1e-6)
        longer, _ = strategy.run(t1 * 1.5, brain)
        np.testing.assert_allclose(longer[brain], 1.5 * 1084.0 / 4000.0, rtol=1e-6)
        np.testing.assert_allclose(strategy.undo(out, params), t1, rtol=1e-6)
        assert float(strategy.run(np.full_like(t1, 20000.0), brain)[0].max()) == 2.0  # clipped


def _study(pair: dict[str, np.ndarray], roles: tuple[Role, ...]) -> tuple[RegisteredStudy, BrainMask]:
    head, brain = mni_head(SPACING)
    images: dict[Role, sitk.Image] = {}
    volumes: dict[Role, Volume] = {}
    for role, key in ((Role.T1_PRE, "x_pc"), (Role.T1_LOW_DOSE, "x_ld")):
        if role not in roles:
            continue
        image = sitk.GetImageFromArray(pair[key])
        image.CopyInformation(head)
        images[role] = image
        series = Series(f"1.2.{len(volumes)}", "1.2", "MR", len(volumes) + 1, role.value)
        volumes[role] = Volume(role=role, series=series, image=image, slices=[])
    study = RegisteredStudy(reference=volumes[Role.T1_PRE], images=images, volumes=volumes)
    return study, BrainMask(mask=brain, transform=sitk.Transform(), quality={})


class TestNormalize:
    def test_baseline_inputs_and_condition(self, pair: dict[str, np.ndarray]) -> None:
        manifest = ModelManifest.load(BASELINE)
        study, mask = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}
        normalized = normalize(study, mask, manifest, contrast=contrast)
        assert normalized.inputs.shape == (3, *pair["x_pc"].shape)
        assert normalized.inputs.dtype == np.float32
        assert normalized.condition is not None and normalized.condition.tolist() == [0.25]
        assert normalized.params["condition"] == {"dose": {"value": 0.25, "source": "header"}}
        p95 = normalized.params["percentile_value_pc"]
        np.testing.assert_allclose(normalized.inputs[0] * p95, pair["x_pc"], rtol=1e-5, atol=1e-3)
        assert np.array_equal(normalized.inputs[2] > 0, pair["brain"])
        assert normalized.x_ld is not None and normalized.s_ld is not None
        assert normalized.noise_sigma_source == pytest.approx(normalized.params["sigma"] * p95)

    def test_full_condition_vector(self, pair: dict[str, np.ndarray]) -> None:
        features: list[ConditionFeature] = ["dose", "field_strength_t", "r1", "sigma"]
        manifest = ModelManifest.load(BASELINE).model_copy(update={"condition": ConditionSpec(features=features)})
        study, _ = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.33, agent="dotarem", field_strength_t=1.5, r1=None)}
        vector, sources = condition_vector(manifest, contrast=contrast, volumes=study.volumes, sigma=0.02)
        assert vector is not None
        np.testing.assert_allclose(vector, [0.33, 1.5, 3.9, 0.02], rtol=1e-6)
        assert sources["r1"]["source"] == "agent table"

    def test_voxel_size_feature(self, pair: dict[str, np.ndarray]) -> None:
        """A model conditioned on its grid gets the geometric mean of the spacing the network runs on."""
        features: list[ConditionFeature] = ["dose", "voxel_mm"]
        manifest = ModelManifest.load(BASELINE).model_copy(update={"condition": ConditionSpec(features=features)})
        study, mask = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}
        vector, sources = condition_vector(
            manifest, contrast=contrast, volumes=study.volumes, sigma=0.02, spacing=(1.0, 1.0, 8.0)
        )
        assert vector is not None and vector.tolist() == [0.25, 2.0]
        assert sources["voxel_mm"] == {"value": 2.0, "source": "grid"}
        normalized = normalize(study, mask, manifest, contrast=contrast)
        spacing = study.images[Role.T1_PRE].GetSpacing()
        assert normalized.condition is not None
        assert normalized.condition[1] == pytest.approx(float(np.prod(spacing)) ** (1 / 3), rel=1e-6)

    @pytest.mark.parametrize(
        ("header", "expected", "source"),
        [
            (
                {"ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SP", "MP"], "InversionTime": "900"},
                1.0,
                "header",
            ),
            ({"ScanningSequence": "GR", "SequenceVariant": ["SP", "SS"]}, 0.0, "header"),  # spoiled gradient echo
            ({"ScanningSequence": "GR", "InversionTime": "450"}, 1.0, "header"),  # IR-FSPGR: only TI says so
            ({"EchoPulseSequence": "GRADIENT", "InversionRecovery": "YES"}, 1.0, "header"),  # Enhanced MR
            ({"EchoPulseSequence": "GRADIENT", "InversionRecovery": "NO"}, 0.0, "header"),
            ({}, 0.0, "model default"),  # the header says nothing: the manifest's default, if it has one
        ],
    )
    def test_inversion_preparation_feature(
        self, pair: dict[str, np.ndarray], header: dict[str, object], expected: float, source: str
    ) -> None:
        """A model conditioned on the T1 sequence gets q = 1 for an inversion-prepared T1, 0 for a gradient echo."""
        features: list[ConditionFeature] = ["dose", "inversion_prepared"]
        condition = ConditionSpec(features=features, defaults={"inversion_prepared": 0.0})
        manifest = ModelManifest.load(BASELINE).model_copy(update={"condition": condition})
        study, _ = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        dataset = Dataset()
        for keyword, value in header.items():
            setattr(dataset, keyword, value)
        series = study.volumes[Role.T1_LOW_DOSE].series
        series.instances.append(
            Instance(Path("x.dcm"), "1.2.3", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1", dataset)
        )
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}
        vector, sources = condition_vector(manifest, contrast=contrast, volumes=study.volumes, sigma=0.02)
        assert vector is not None and vector.tolist() == [0.25, expected]
        assert sources["inversion_prepared"] == {"value": expected, "source": source}

    def test_unknown_inversion_preparation_without_default_is_a_clear_input_error(
        self, pair: dict[str, np.ndarray]
    ) -> None:
        features: list[ConditionFeature] = ["dose", "inversion_prepared"]
        manifest = ModelManifest.load(BASELINE).model_copy(update={"condition": ConditionSpec(features=features)})
        study, _ = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}
        with pytest.raises(InputDicomError, match="inversion_prepared") as raised:
            condition_vector(manifest, contrast=contrast, volumes=study.volumes, sigma=0.02)
        assert raised.value.attribute == "ScanningSequence / InversionTime"

    def test_missing_dose_is_a_clear_input_error(self, pair: dict[str, np.ndarray]) -> None:
        manifest = ModelManifest.load(BASELINE)
        study, mask = _study(pair, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=None, agent=None, field_strength_t=3.0, r1=None)}
        with pytest.raises(InputDicomError, match=r"needs the dose of the low-dose series, but series 1\.2\.1") as info:
            normalize(study, mask, manifest, contrast=contrast)
        assert info.value.attribute is not None and "ContrastBolusVolume" in info.value.attribute

    def test_missing_role(self, pair: dict[str, np.ndarray]) -> None:
        study, mask = _study(pair, (Role.T1_PRE,))
        with pytest.raises(InputDicomError, match=r"missing after registration: \['t1_low_dose'\]"):
            normalize(study, mask, ModelManifest.load(BASELINE), contrast={})

    def test_degenerate_image(self, pair: dict[str, np.ndarray]) -> None:
        flat = dict(pair, x_ld=np.zeros_like(pair["x_ld"]))
        study, mask = _study(flat, (Role.T1_PRE, Role.T1_LOW_DOSE))
        contrast = {Role.T1_LOW_DOSE: ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}
        with pytest.raises(InputDicomError, match=r"Cannot normalize the inputs of series 1\.2\.0 .* percentile is 0"):
            normalize(study, mask, ModelManifest.load(BASELINE), contrast=contrast)


class TestPhantomNoise:
    """On phantom studies read back through the ingest, registered and masked by the pipeline itself."""

    @pytest.mark.parametrize(
        ("seed", "options"),
        [(1, {}), (7, {"noise": 0.04}), (9, {"field_strength": 1.5, "agent": "gadoterate", "dose": 0.1})],
        ids=["default", "noisy", "1.5T-gadoterate-d0.1"],
    )
    def test_noise_estimate_within_10_percent_of_the_truth(self, seed: int, options: dict[str, object]) -> None:
        from operators.brain_mask import brain_mask
        from operators.registration import register_volumes
        from tests.operators.phantom_case import phantom_case

        case = phantom_case(seed, **options)
        study = register_volumes(case.volumes, roles=(Role.T1_LOW_DOSE,))
        mask = brain_mask(case.volumes[Role.T1_PRE].image)
        normalized = normalize(study, mask, ModelManifest.load(BASELINE), contrast=case.selection.contrast)
        params = normalized.params
        # both series' noise (pixel units of each series) carried into t1_pre's units by steps 3 and 4
        to_pre = params["alignment"] * params["percentile_value_pc"] / params["percentile_value_ld"]
        truth = float(np.hypot(case.noise_sigma(Role.T1_PRE), to_pre * case.noise_sigma(Role.T1_LOW_DOSE)))
        assert normalized.noise_sigma_source == pytest.approx(truth, rel=0.10)

        # the noise-normalized subtraction has unit noise where nothing enhances
        spacing = case.volumes[Role.T1_PRE].image.GetSpacing()
        result = DifferentialNormalization(DIFFERENTIAL).run(
            sitk.GetArrayFromImage(study.images[Role.T1_PRE]),
            sitk.GetArrayFromImage(study.images[Role.T1_LOW_DOSE]),
            mask.array(),
            spacing_zyx=(spacing[2], spacing[1], spacing[0]),
        )
        uptake = np.abs(case.truth("y_ld"))
        lesions = ndimage.binary_dilation(case.truth("lesions") > 0, iterations=1)
        quiet = mask.array() & (uptake < 1e-3 * uptake.max()) & ~lesions
        unit = (result.z_tilde - result.m_ld) / result.s_ld
        assert float(unit[quiet].std()) == pytest.approx(1.0, abs=0.1)
