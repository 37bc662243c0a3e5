"""Tests of the losses: weighted Huber (Pinetz et al.), L1, L2, 3D SSIM, and the sigmoid target helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from training import losses, metrics
from training.losses import (
    LossConfig,
    compute_loss,
    contrast_target,
    crop_margin,
    enhancement_probability,
    l1_loss,
    l2_loss,
    sigmoid_target_params,
    ssim3d,
    ssim_loss,
    weighted_huber_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _huber(r: float, eps: float) -> float:
    return 0.5 * r * r if abs(r) <= eps else eps * (abs(r) - 0.5 * eps)


class TestSigmoidTarget:
    @pytest.mark.parametrize("sigma", [1.0, 0.03, 0.5, 7.0])
    def test_probability_at_one_and_four_sigma(self, sigma: float) -> None:
        w, b = sigmoid_target_params(sigma)
        assert _sigmoid(w * sigma + b) == pytest.approx(0.01, abs=1e-12)
        assert _sigmoid(w * 4 * sigma + b) == pytest.approx(0.99, abs=1e-12)

    def test_unit_parameters_scale_with_sigma(self) -> None:
        w1, b1 = sigmoid_target_params(1.0)
        w, b = sigmoid_target_params(0.25)
        assert w == pytest.approx(w1 / 0.25)
        assert b == pytest.approx(b1)
        # hand computation: logit(0.99) = -logit(0.01) = ln 99; 3 w = 2 ln 99; b = -ln 99 - w
        assert w1 == pytest.approx(2 * math.log(99) / 3)
        assert b1 == pytest.approx(-math.log(99) - 2 * math.log(99) / 3)

    def test_enhancement_probability_tensor(self) -> None:
        sigma = 0.04
        z = torch.tensor([sigma, 4 * sigma, -sigma, 40 * sigma]).reshape(1, 1, 1, 1, 4)
        p = enhancement_probability(z, sigma).flatten()
        assert p[0].item() == pytest.approx(0.01, abs=1e-6)
        assert p[1].item() == pytest.approx(0.99, abs=1e-6)
        assert p[2].item() < 0.01 and p[3].item() > 0.99999

    def test_per_sample_sigma(self) -> None:
        sigmas = torch.tensor([0.02, 0.05])
        z = torch.ones(2, 1, 2, 2, 2) * (4 * sigmas).reshape(2, 1, 1, 1, 1)
        p = enhancement_probability(z, sigmas)
        torch.testing.assert_close(p, torch.full_like(p, 0.99))

    def test_contrast_target_suppresses_noise_and_keeps_enhancement(self) -> None:
        torch.manual_seed(0)
        sigma = 0.03
        noise = torch.randn(1, 1, 16, 16, 16) * sigma
        z = noise.clone()
        z[..., 4:8, 4:8, 4:8] += 20 * sigma
        y, p = contrast_target(z, sigma)
        torch.testing.assert_close(y, p * z)
        enhancing = y[..., 4:8, 4:8, 4:8]
        torch.testing.assert_close(enhancing, z[..., 4:8, 4:8, 4:8], atol=1e-6, rtol=1e-6)
        background = y.clone()
        background[..., 4:8, 4:8, 4:8] = 0
        assert float(background.abs().mean()) < 0.1 * float(noise.abs().mean())  # noise suppressed 10x

    @pytest.mark.parametrize(
        "kwargs,message",
        [
            ({"sigma": 0.0}, "sigma must be positive"),
            ({"low": 0.5, "high": 0.4}, "0 < low < high < 1"),
            ({"low_at": 4.0, "high_at": 1.0}, "low_at must be below high_at"),
        ],
    )
    def test_bad_parameters(self, kwargs: dict[str, float], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            sigmoid_target_params(**kwargs)

    def test_nonpositive_sigma_tensor(self) -> None:
        with pytest.raises(ValueError, match="sigma must be positive"):
            enhancement_probability(torch.zeros(2, 1, 2, 2, 2), torch.tensor([0.1, -0.1]))


class TestWeightedHuber:
    def test_hand_computation(self) -> None:
        prediction = torch.tensor([0.0, 0.05, 0.3, 1.0, -0.2, 0.1]).reshape(1, 1, 1, 2, 3)
        target = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0, 0.1]).reshape(1, 1, 1, 2, 3)
        brain = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 1, 2, 3)
        p = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.2, 0.0]).reshape(1, 1, 1, 2, 3)
        expected = 0.0
        for pr, t, bm, pp in zip(
            prediction.flatten().tolist(),
            target.flatten().tolist(),
            brain.flatten().tolist(),
            p.flatten().tolist(),
            strict=True,
        ):
            expected += (bm + 0.01 + 1.0 * pp) * _huber(pr - t, 0.1)
        found = weighted_huber_loss(prediction, target, brain, p, margin=0, reduction="sum")
        assert found.item() == pytest.approx(expected, rel=1e-6)
        mean = weighted_huber_loss(prediction, target, brain, p, margin=0, reduction="mean")
        assert mean.item() == pytest.approx(expected / 6, rel=1e-6)

    def test_lambdas_weight_outside_brain_and_enhancement(self) -> None:
        prediction = torch.full((1, 1, 1, 1, 2), 0.05)
        target = torch.zeros_like(prediction)
        brain = torch.tensor([0.0, 0.0]).reshape(1, 1, 1, 1, 2)
        p = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
        loss = weighted_huber_loss(prediction, target, brain, p, lambda1=0.5, lambda2=2.0, margin=0, reduction="sum")
        assert loss.item() == pytest.approx((0.5 + 2.5) * 0.5 * 0.05**2, rel=1e-6)

    def test_margin_is_ignored(self) -> None:
        def summed(prediction: torch.Tensor) -> float:
            zeros, ones = torch.zeros_like(prediction), torch.ones_like(prediction)
            return float(weighted_huber_loss(prediction, zeros, ones, zeros, reduction="sum"))

        prediction = torch.zeros(1, 1, 20, 20, 20)
        prediction[..., 10, 10, 10] = 1.0
        clean = summed(prediction)
        prediction[..., :8, :, :] = 100.0
        prediction[..., :, :, -8:] = -100.0
        assert summed(prediction) == pytest.approx(clean)
        assert clean == pytest.approx(1.01 * 0.1 * (1.0 - 0.05), rel=1e-6)

    def test_margin_too_large(self) -> None:
        x = torch.zeros(1, 1, 16, 16, 16)
        with pytest.raises(ValueError, match="margin of 8 voxels leaves nothing of a patch of size"):
            weighted_huber_loss(x, x, x, x)

    def test_shape_mismatch(self) -> None:
        x = torch.zeros(1, 1, 20, 20, 20)
        with pytest.raises(ValueError, match="same shape"):
            weighted_huber_loss(x, x, x, torch.zeros(1, 1, 20, 20, 19))

    def test_unknown_reduction(self) -> None:
        x = torch.zeros(1, 1, 4, 4, 4)
        with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'patch'"):
            weighted_huber_loss(x, x, x, x, margin=0, reduction="max")  # type: ignore[arg-type]

    def test_gradient_flows(self) -> None:
        prediction = torch.zeros(1, 1, 18, 18, 18, requires_grad=True)
        target = torch.ones(1, 1, 18, 18, 18)
        loss = weighted_huber_loss(prediction, target, torch.ones_like(target), torch.ones_like(target))
        loss.backward()
        assert prediction.grad is not None
        assert float(prediction.grad[..., 9, 9, 9]) < 0.0  # pushes the prediction up towards the target
        assert float(prediction.grad[..., 0, 0, 0]) == 0.0  # margin voxel


class TestPatchReduction:
    """``reduction="patch"``: every patch counts the same, however much brain its grid puts in it (issue 12)."""

    @staticmethod
    def _batch(brain_voxels: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Two 1x4x16 patches with brain in the first ``n`` voxels of each, the prediction 0.05 off inside it."""
        brain = torch.zeros(2, 1, 1, 4, 16)
        for sample, n in enumerate(brain_voxels):
            brain.view(2, -1)[sample, :n] = 1.0
        prediction = 0.05 * brain
        return prediction, torch.zeros_like(brain), brain, torch.zeros_like(brain)

    def test_hand_computation(self) -> None:
        prediction, target, brain, p = self._batch((64, 8))
        per_voxel = 0.5 * 0.05**2  # Huber below eps, weight 1.01 in the brain, 0.01 outside (no error there)
        expected = [1.01 * 64 * per_voxel / (1.01 * 64), 1.01 * 8 * per_voxel / (1.01 * 8 + 0.01 * 56)]
        found = weighted_huber_loss(prediction, target, brain, p, margin=0, reduction="patch")
        assert found.item() == pytest.approx(sum(expected) / 2, rel=1e-6)

    def test_a_coarse_patch_pulls_as_hard_as_a_fine_one(self) -> None:
        """The same error in a patch with an eighth of the brain gets (nearly) the same total gradient under
        ``patch``, an eighth of it under ``mean``."""
        shares = {}
        for reduction in ("mean", "patch"):
            prediction, target, brain, p = self._batch((64, 8))
            prediction.requires_grad_(True)
            weighted_huber_loss(prediction, target, brain, p, margin=0, reduction=reduction).backward()
            assert prediction.grad is not None
            pull = prediction.grad.abs().flatten(1).sum(1)
            shares[reduction] = float(pull[1] / pull[0])
        assert shares["mean"] == pytest.approx(8 / 64, rel=1e-6)
        assert shares["patch"] == pytest.approx((1.01 * 64) / (1.01 * 8 + 0.01 * 56) * 8 / 64, rel=1e-6)
        assert 0.9 < shares["patch"] <= 1.0

    def test_equal_patches_give_the_mean(self) -> None:
        """With the same brain in every patch, ``patch`` is ``mean`` times a constant (the same minimizer)."""
        torch.manual_seed(5)
        prediction, target = torch.rand(2, 1, 20, 20, 20), torch.rand(2, 1, 20, 20, 20)
        brain, p = torch.ones_like(prediction), torch.zeros_like(prediction)
        mean = weighted_huber_loss(prediction, target, brain, p, reduction="mean")
        patch = weighted_huber_loss(prediction, target, brain, p, reduction="patch")
        assert patch.item() == pytest.approx(mean.item() / 1.01, rel=1e-5)
        l2_patch = l2_loss(prediction, target, reduction="patch")
        assert l2_patch.item() == pytest.approx(l2_loss(prediction, target).item())

    def test_through_the_config(self) -> None:
        prediction, target, brain, p = self._batch((64, 8))
        config = LossConfig(margin=0, reduction="patch")
        expected = weighted_huber_loss(prediction, target, brain, p, margin=0, reduction="patch")
        assert compute_loss(config, prediction, target, brain=brain, p=p).item() == pytest.approx(expected.item())
        with pytest.raises(ValueError, match="loss reduction must be one of"):
            LossConfig(reduction="max")  # type: ignore[arg-type]


class TestL1L2:
    def test_hand_values(self) -> None:
        prediction = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2)
        target = torch.tensor([1.5, 2.0, 1.0, 5.0]).reshape(1, 1, 1, 2, 2)
        assert l1_loss(prediction, target).item() == pytest.approx((0.5 + 0 + 2 + 1) / 4)
        assert l2_loss(prediction, target).item() == pytest.approx((0.25 + 0 + 4 + 1) / 4)
        assert l2_loss(prediction, target, reduction="sum").item() == pytest.approx(5.25)

    def test_crop_margin(self) -> None:
        x = torch.arange(6 * 7 * 8, dtype=torch.float32).reshape(1, 1, 6, 7, 8)
        assert crop_margin(x, 2).shape == (1, 1, 2, 3, 4)
        torch.testing.assert_close(crop_margin(x, 2), x[..., 2:4, 2:5, 2:6])
        with pytest.raises(ValueError, match="margin must be >= 0"):
            crop_margin(x, -1)


def _ssim_reference(x: np.ndarray, y: np.ndarray, *, sigma: float, radius: int, data_range: float) -> float:
    """SSIM with scipy's Gaussian filter, averaged over the voxels whose window lies inside the volume."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    truncate = radius / sigma

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=truncate, mode="constant")

    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    inner = tuple(slice(radius, n - radius) for n in x.shape)
    return float(ssim[inner].mean())


class TestSSIM:
    def test_identical_images(self) -> None:
        x = torch.rand(1, 1, 16, 16, 16)
        assert ssim3d(x, x).item() == pytest.approx(1.0, abs=1e-5)
        assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)

    def test_matches_scipy_reference(self) -> None:
        rng = np.random.default_rng(1)
        x = ndimage.gaussian_filter(rng.random((18, 20, 22)), 2.0)
        y = x + 0.05 * rng.standard_normal(x.shape)
        found = ssim3d(torch.from_numpy(x[None, None]).float(), torch.from_numpy(y[None, None]).float(), sigma=1.5)
        expected = _ssim_reference(x, y, sigma=1.5, radius=math.ceil(3.5 * 1.5), data_range=1.0)
        assert found.item() == pytest.approx(expected, abs=2e-4)

    def test_decreases_with_noise(self) -> None:
        torch.manual_seed(2)
        x = torch.rand(1, 1, 16, 16, 16)
        values = [ssim3d(x, x + s * torch.randn_like(x)).item() for s in (0.01, 0.1, 0.5)]
        assert values[0] > values[1] > values[2]

    def test_window_must_fit(self) -> None:
        x = torch.rand(1, 1, 8, 16, 16)
        with pytest.raises(ValueError, match="SSIM window of 13 voxels does not fit"):
            ssim3d(x, x, sigma=1.5, truncate=4.0)

    def test_same_window_as_the_evaluation_metric(self) -> None:
        assert (losses.SSIM_SIGMA, losses.SSIM_TRUNCATE) == (metrics.SSIM_SIGMA, metrics.SSIM_TRUNCATE)


class TestComputeLoss:
    def test_weighted_huber_needs_masks(self) -> None:
        x = torch.zeros(1, 1, 20, 20, 20)
        with pytest.raises(ValueError, match="needs the brain mask and the CE mask p"):
            compute_loss(LossConfig(), x, x)

    def test_dispatch_matches_functions(self) -> None:
        torch.manual_seed(3)
        a, b = torch.rand(1, 1, 20, 20, 20), torch.rand(1, 1, 20, 20, 20)
        brain, p = torch.ones_like(a), torch.rand_like(a)
        cases = {
            LossConfig(): weighted_huber_loss(a, b, brain, p),
            LossConfig(kind="l1", margin=0): l1_loss(a, b),
            LossConfig(kind="l2", margin=2): l2_loss(a, b, margin=2),
            LossConfig(kind="ssim", margin=0): ssim_loss(a, b),
            LossConfig(kind="l2", margin=0, ssim_weight=0.5): l2_loss(a, b) + 0.5 * ssim_loss(a, b),
        }
        for config, expected in cases.items():
            found = compute_loss(config, a, b, brain=brain, p=p)
            assert found.item() == pytest.approx(expected.item(), rel=1e-6), config

    @pytest.mark.parametrize(
        "kwargs,message",
        [({"kind": "l3"}, "loss kind must be one of"), ({"eps": 0.0}, "eps > 0"), ({"lambda1": -1.0}, ">= 0")],
    )
    def test_bad_config(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            LossConfig(**kwargs)  # type: ignore[arg-type]
