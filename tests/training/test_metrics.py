"""Evaluation metrics on hand-made arrays with answers known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as m

SHAPE = (12, 14, 10)


def _ramp() -> np.ndarray:
    """A smooth positive reference image with structure (SSIM needs variance)."""
    z, y, x = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in SHAPE), indexing="ij")
    return 100.0 + 50.0 * np.sin(3 * x) * np.cos(2 * y) + 20.0 * z


def _box(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


class TestPsnr:
    def test_identical_images_are_capped(self) -> None:
        ref = _ramp()
        assert m.psnr(ref, ref) == m.PSNR_CAP_DB
        assert m.psnr(ref, ref.copy(), _box((2, 2, 2), (5, 5, 5))) == m.PSNR_CAP_DB

    def test_known_mse_and_range(self) -> None:
        ref = np.full(SHAPE, 10.0)
        x = ref + 1.0  # MSE 1, R 10 -> 20 dB
        assert m.psnr(x, ref) == pytest.approx(20.0)
        assert m.psnr(x, ref, data_range=100.0) == pytest.approx(40.0)

    def test_region_only_counts_its_voxels(self) -> None:
        ref = np.full(SHAPE, 10.0)
        x = ref.copy()
        region = _box((0, 0, 0), (3, 3, 3))
        x[~region] += 5.0  # error outside the region only
        assert m.psnr(x, ref, region) == m.PSNR_CAP_DB
        x[region] += 2.0  # MSE 4 inside -> 10 log10(100 / 4)
        assert m.psnr(x, ref, region) == pytest.approx(10 * math.log10(25.0))

    def test_default_range_is_reference_max_in_region(self) -> None:
        ref = np.full(SHAPE, 10.0)
        ref[0, 0, 0] = 1000.0  # outside the region: must not set R
        region = _box((2, 2, 2), (6, 6, 6))
        assert m.psnr(ref + 1.0, ref, region) == pytest.approx(20.0)
        assert m.brain_range(ref, region) == 10.0

    def test_errors(self) -> None:
        ref = np.ones(SHAPE)
        with pytest.raises(ValueError, match="same shape"):
            m.psnr(np.ones((2, 2, 2)), ref)
        with pytest.raises(ValueError, match="PSNR mask is empty"):
            m.psnr(ref, ref, np.zeros(SHAPE, dtype=bool))
        with pytest.raises(ValueError, match="data range must be positive"):
            m.psnr(ref, ref, data_range=0.0)
        with pytest.raises(ValueError, match="positive somewhere in the brain"):
            m.brain_range(-ref, np.ones(SHAPE, dtype=bool))


class TestSsim:
    def test_identical_is_one(self) -> None:
        ref = _ramp()
        assert m.ssim(ref, ref) == pytest.approx(1.0)
        assert m.ssim(ref, ref, _box((3, 3, 3), (9, 9, 7))) == pytest.approx(1.0)

    def test_noise_and_offset_lower_it(self) -> None:
        ref = _ramp()
        rng = np.random.default_rng(0)
        noisy = ref + rng.normal(0.0, 10.0, SHAPE)
        noisier = ref + rng.normal(0.0, 30.0, SHAPE)
        assert 0.0 < m.ssim(noisier, ref) < m.ssim(noisy, ref) < 1.0
        assert m.ssim(ref + 40.0, ref) < 1.0

    def test_scale_invariance_of_the_convention(self) -> None:
        ref = _ramp()
        x = ref + np.random.default_rng(1).normal(0.0, 5.0, SHAPE)
        assert m.ssim(3.0 * x, 3.0 * ref) == pytest.approx(m.ssim(x, ref))

    def test_constant_reference_raises(self) -> None:
        with pytest.raises(ValueError, match="reference is constant"):
            m.ssim(np.ones(SHAPE), np.ones(SHAPE))


class TestErrors:
    def test_mae_and_l2_known_values(self) -> None:
        ref = np.zeros(SHAPE)
        x = np.full(SHAPE, 2.0)
        region = _box((0, 0, 0), (4, 4, 4))
        x[region] = 4.0
        assert m.mae(x, ref, region, data_range=2.0) == pytest.approx(2.0)
        assert m.mae(x, ref) == pytest.approx((64 * 4.0 + (x.size - 64) * 2.0) / x.size)
        assert m.tumour_l2(x, ref, region, data_range=4.0) == pytest.approx(1.0)
        assert m.tumour_l2(ref, ref, region) == 0.0

    def test_errors(self) -> None:
        ref = np.zeros(SHAPE)
        with pytest.raises(ValueError, match="MAE data range must be positive"):
            m.mae(ref, ref, data_range=-1.0)
        with pytest.raises(ValueError, match="tumour mask is empty"):
            m.tumour_l2(ref, ref, np.zeros(SHAPE, dtype=bool))


class TestRelativeEnhancement:
    def setup_method(self) -> None:
        self.lesion = _box((3, 3, 3), (7, 7, 6))
        self.y_sd = np.zeros(SHAPE)
        self.y_sd[self.lesion] = np.linspace(10.0, 50.0, int(self.lesion.sum()))

    def test_truth_is_one_and_x_pc_is_zero(self) -> None:
        assert m.c_bar(self.y_sd, self.y_sd, self.lesion) == pytest.approx(1.0)
        assert m.c_hat(self.y_sd, self.y_sd, self.lesion) == pytest.approx(1.0)
        zero = np.zeros(SHAPE)  # x = x_PC
        assert m.c_bar(zero, self.y_sd, self.lesion) == 0.0
        assert m.c_hat(zero, self.y_sd, self.lesion) == 0.0

    def test_scaled_and_peaked_predictions(self) -> None:
        assert m.c_bar(0.5 * self.y_sd, self.y_sd, self.lesion) == pytest.approx(0.5)
        peaked = self.y_sd.copy()
        peaked[4, 4, 4] = 100.0  # max doubles, the sum changes by the one voxel
        assert m.c_hat(peaked, self.y_sd, self.lesion) == pytest.approx(2.0)
        expected = (self.y_sd[self.lesion].sum() - self.y_sd[4, 4, 4] + 100.0) / self.y_sd[self.lesion].sum()
        assert m.c_bar(peaked, self.y_sd, self.lesion) == pytest.approx(expected)

    def test_non_enhancing_lesion_gives_nan(self) -> None:
        assert math.isnan(m.c_bar(self.y_sd, np.zeros(SHAPE), self.lesion))
        assert math.isnan(m.c_hat(self.y_sd, np.zeros(SHAPE), self.lesion))

    def test_empty_lesion_raises(self) -> None:
        with pytest.raises(ValueError, match="lesion mask is empty"):
            m.c_bar(self.y_sd, self.y_sd, np.zeros(SHAPE, dtype=bool))


class TestFalseEnhancement:
    def test_prediction_equal_to_x_pc_scores_zero(self) -> None:
        region = _box((1, 1, 1), (5, 5, 5))
        assert m.false_enhancement(np.zeros(SHAPE), region, 100.0) == (0.0, 0.0)

    def test_signed_and_positive_means(self) -> None:
        region = _box((0, 0, 0), (2, 2, 2))  # 8 voxels
        contrast = np.zeros(SHAPE)
        contrast[region] = [20.0, -20.0] * 4
        fe, fe_pos = m.false_enhancement(contrast, region, 100.0)
        assert fe == pytest.approx(0.0)
        assert fe_pos == pytest.approx(0.1)

    def test_bad_level_raises(self) -> None:
        with pytest.raises(ValueError, match="contrast level must be positive"):
            m.false_enhancement(np.zeros(SHAPE), _box((0, 0, 0), (2, 2, 2)), 0.0)

    def test_normal_brain_excludes_lesions_and_enhancing_structures(self) -> None:
        brain = _box((1, 1, 1), (11, 13, 9))
        lesion = _box((4, 4, 4), (6, 6, 6))
        contrast = np.zeros(SHAPE)
        contrast[2, 10, 5] = 50.0  # a vessel
        normal = m.normal_brain_region(brain, lesion, contrast, 5.0, margin=1)
        assert not normal[lesion].any() and not normal[2, 10, 5] and not normal[3, 4, 4] and not normal[2, 9, 5]
        assert normal[8, 4, 4] and not normal[0, 0, 0]
        assert int(m.ce_region(contrast, brain, 5.0).sum()) == 1
        with pytest.raises(ValueError, match="threshold must be >= 0"):
            m.ce_region(contrast, brain, -1.0)


class TestTopK:
    def test_mask_size_is_k_percent_of_roi(self) -> None:
        contrast = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) + 1.0  # all distinct, positive
        roi = np.ones(SHAPE, dtype=bool)
        for k in (1, 10, 30):
            mask = m.top_k_mask(contrast, roi, k)
            assert int(mask.sum()) == round(k / 100 * roi.size)
            assert contrast[mask].min() > contrast[~mask].max()

    def test_identical_gives_one_and_x_pc_gives_zero(self) -> None:
        contrast = np.random.default_rng(2).random(SHAPE)
        roi = np.ones(SHAPE, dtype=bool)
        dices, jaccards = m.top_k_overlap(contrast, contrast, roi)
        assert dices == [1.0] * 30 and jaccards == [1.0] * 30
        dices, jaccards = m.top_k_overlap(np.zeros(SHAPE), contrast, roi, ks=(5, 20))
        assert dices == [0.0, 0.0] and jaccards == [0.0, 0.0]

    def test_absolute_value_is_thresholded(self) -> None:
        contrast = np.zeros(SHAPE)
        contrast[0, 0, 0] = -9.0
        mask = m.top_k_mask(contrast, np.ones(SHAPE, dtype=bool), 0.01)
        assert mask[0, 0, 0] and int(mask.sum()) == 1

    def test_dice_and_jaccard_known_overlap(self) -> None:
        a, b = _box((0, 0, 0), (2, 2, 2)), _box((1, 0, 0), (3, 2, 2))  # 8 and 8 voxels, 4 shared
        assert m.dice(a, b) == pytest.approx(0.5)
        assert m.jaccard(a, b) == pytest.approx(4 / 12)
        empty = np.zeros(SHAPE, dtype=bool)
        assert m.dice(empty, empty) == 1.0 and m.jaccard(empty, empty) == 1.0
        assert m.dice(a, empty) == 0.0

    def test_errors(self) -> None:
        roi = np.ones(SHAPE, dtype=bool)
        with pytest.raises(ValueError, match=r"percentage within \(0, 100\]"):
            m.top_k_mask(np.ones(SHAPE), roi, 0.0)
        with pytest.raises(ValueError, match="ROI mask is empty"):
            m.top_k_mask(np.ones(SHAPE), np.zeros(SHAPE, dtype=bool), 5)
        with pytest.raises(ValueError, match="same shape"):
            m.dice(roi, np.ones((2, 2, 2), dtype=bool))
