"""Training losses: the paper's brain- and enhancement-weighted Huber loss, L1, L2, 3D SSIM, and the target helper."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch.nn import functional

__all__ = [
    "HUBER_EPS",
    "HUBER_LAMBDA1",
    "HUBER_LAMBDA2",
    "PAPER_MARGIN",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "LossConfig",
    "LossKind",
    "Reduction",
    "compute_loss",
    "contrast_target",
    "crop_margin",
    "enhancement_probability",
    "gaussian_window",
    "l1_loss",
    "l2_loss",
    "sigmoid_target_params",
    "ssim3d",
    "ssim_loss",
    "weighted_huber_loss",
]

logger = logging.getLogger(__name__)

LossKind = Literal["weighted_huber", "l1", "l2", "ssim"]
Reduction = Literal["mean", "sum", "patch"]
_KINDS: tuple[str, ...] = ("weighted_huber", "l1", "l2", "ssim")
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)
#: The paper's weighted Huber loss (Pinetz et al.): weight outside the brain, extra weight on enhancing voxels,
#: Huber threshold; the defaults of ``weighted_huber_loss`` and of ``LossConfig``.
HUBER_LAMBDA1 = 0.01
HUBER_LAMBDA2 = 1.0
HUBER_EPS = 0.1
#: Voxels the paper's loss ignores at each face of a patch, against boundary artefacts.
PAPER_MARGIN = 8
#: SSIM's Gaussian window: standard deviation and truncation, in voxels. The values of ``training.metrics``,
#: restated because the training loop must import without scipy (a packed cache on a GPU machine).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sigmoid_target_params(
    sigma: float = 1.0,
    *,
    low: float = 0.01,
    high: float = 0.99,
    low_at: float = 1.0,
    high_at: float = 4.0,
) -> tuple[float, float]:
    """The (w, b) of p = sigmoid(w z + b) with p(low_at * sigma) = low and p(high_at * sigma) = high.

    With the defaults, p(sigma) = 0.01 and p(4 sigma) = 0.99 (METHODS.md section 2); ``sigma = 1`` gives the
    values in units of sigma_LD that the manifest's ``TrainingTarget`` records (w = 3.063, b = -7.658).

    Raises
    ------
    ValueError
        When sigma is not positive, the probabilities are not 0 < low < high < 1, or low_at >= high_at.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive (the low-dose noise level); found {sigma}")
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"probabilities must satisfy 0 < low < high < 1; found low={low}, high={high}")
    if not low_at < high_at:
        raise ValueError(f"low_at must be below high_at; found low_at={low_at}, high_at={high_at}")
    w = (_logit(high) - _logit(low)) / ((high_at - low_at) * sigma)
    b = _logit(low) - w * low_at * sigma
    return w, b


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample (N,) value broadcast against ``like`` (N, ...)."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 1:
        tensor = tensor.reshape(-1, *([1] * (like.ndim - 1)))
    return tensor


def enhancement_probability(z: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """CE mask p = sigmoid(w z + b), p(sigma) = 0.01 and p(4 sigma) = 0.99; ``sigma`` scalar or per sample (N,).

    Raises
    ------
    ValueError
        When a sigma is not positive.
    """
    sigma_t = _per_sample(sigma, z)
    if not bool(torch.all(sigma_t > 0)):
        raise ValueError(f"sigma must be positive (the low-dose noise level); found {sigma_t.flatten().tolist()}")
    w_unit, b = sigmoid_target_params(1.0)
    return torch.sigmoid(w_unit * z / sigma_t + b)


def contrast_target(z_sd: torch.Tensor, sigma: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training target y_SD = p * z_SD with p = ``enhancement_probability(z_SD, sigma)``; returns (y, p)."""
    p = enhancement_probability(z_sd, sigma)
    return p * z_sd, p


def crop_margin(tensor: torch.Tensor, margin: int) -> torch.Tensor:
    """The tensor without ``margin`` voxels at each face of its last three (spatial) axes.

    Raises
    ------
    ValueError
        When the margin is negative or leaves nothing of an axis.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0; found {margin}")
    if margin == 0:
        return tensor
    spatial = tuple(tensor.shape[-3:])
    if any(n <= 2 * margin for n in spatial):
        raise ValueError(f"a margin of {margin} voxels leaves nothing of a patch of size {spatial}")
    return tensor[..., margin:-margin, margin:-margin, margin:-margin]


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"loss inputs must have the same shape (N, C, D, H, W); found {shapes}")
    first = next(iter(shapes.values()))
    if len(first) != 5:
        raise ValueError(f"loss inputs must be (N, C, D, H, W); found shape {first}")


def _reduce(values: torch.Tensor, reduction: Reduction, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum, mean over all voxels, or (``patch``) each sample's mean (weighted by ``weight``), averaged over samples."""
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    if reduction == "patch":
        if weight is None:
            return values.flatten(1).mean(1).mean()
        counted = weight.flatten(1).sum(1).clamp_min(torch.finfo(values.dtype).tiny)
        return (values.flatten(1).sum(1) / counted).mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'patch'; found {reduction!r}")


def weighted_huber_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    brain: torch.Tensor,
    p: torch.Tensor,
    *,
    lambda1: float = HUBER_LAMBDA1,
    lambda2: float = HUBER_LAMBDA2,
    eps: float = HUBER_EPS,
    margin: int = PAPER_MARGIN,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """The paper's loss: sum over voxels of (b + lambda1 + lambda2 * p_SD) * Huber_eps(y_hat - y_SD).

    Huber_eps(r) = r^2 / 2 for |r| <= eps, eps * (|r| - eps / 2) above (``torch.nn.functional.huber_loss``).

    Parameters
    ----------
    prediction, target:
        y_hat and y_SD, (N, 1, D, H, W).
    brain:
        Brain mask b (0/1), same shape.
    p:
        CE mask p_SD in [0, 1], same shape (from ``contrast_target``).
    lambda1, lambda2:
        Weights outside the brain and on enhancing voxels (0.01, 1).
    eps:
        Huber threshold (0.1).
    margin:
        Voxels ignored at each face of the patch (8), against boundary artefacts.
    reduction:
        ``"sum"``: the paper's sum over voxels and samples; ``"mean"``: that sum divided by the number of voxels
        counted (same minimizer, independent of patch and batch size): every voxel counts the same, so a sample
        with more brain in its patch counts more; ``"patch"``: each sample's weighted mean (its sum divided by its
        own sum of weights), averaged over the samples: every patch counts the same, whatever its voxel size. In
        ce-lowdose-v1 1.5.0's mix an 80-voxel patch at 1 mm carried 5.5 times the weight of one at 4 mm, so under
        ``mean`` the 4 mm grid drew 40 % of the patches and 12 % of the weight
        (``training/runs/loss_weight_by_grid.py``).

    Raises
    ------
    ValueError
        When shapes differ, the margin leaves nothing, or the reduction is unknown.
    """
    _check_same_shape(prediction=prediction, target=target, brain=brain, p=p)
    weight = brain + lambda1 + lambda2 * p
    huber = functional.huber_loss(prediction, target, reduction="none", delta=eps)
    return _reduce(crop_margin(weight * huber, margin), reduction, crop_margin(weight, margin))


def l1_loss(
    prediction: torch.Tensor, target: torch.Tensor, *, margin: int = 0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Mean (or sum) absolute error inside the margin."""
    _check_same_shape(prediction=prediction, target=target)
    return _reduce(crop_margin((prediction - target).abs(), margin), reduction)


def l2_loss(
    prediction: torch.Tensor, target: torch.Tensor, *, margin: int = 0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Mean (or sum) squared error inside the margin (the loss of Bone et al.)."""
    _check_same_shape(prediction=prediction, target=target)
    return _reduce(crop_margin((prediction - target) ** 2, margin), reduction)


def gaussian_window(sigma: float = SSIM_SIGMA, *, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """Normalized 1D Gaussian taps of standard deviation ``sigma``, radius ceil(truncate * sigma)."""
    if not sigma > 0:
        raise ValueError(f"SSIM window sigma must be positive; found {sigma}")
    radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(torch.float32)


def _blur_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, D, H, W), 'valid' region only (no padding)."""
    channels = x.shape[1]
    n = taps.numel()
    taps = taps.to(dtype=x.dtype, device=x.device)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = n
        kernel = taps.reshape(shape).expand(channels, 1, *shape)
        x = functional.conv3d(x, kernel, groups=channels)
    return x


def ssim3d(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = SSIM_SIGMA,
    truncate: float = SSIM_TRUNCATE,
    k1: float = 0.01,
    k2: float = 0.03,
    margin: int = 0,
) -> torch.Tensor:
    """Mean 3D SSIM with a Gaussian window (std ``sigma``), over the voxels where the window fits entirely.

    Raises
    ------
    ValueError
        When shapes differ, or the window (radius ceil(truncate * sigma)) does not fit inside the patch.
    """
    _check_same_shape(prediction=prediction, target=target)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive; found {data_range}")
    x = crop_margin(prediction, margin)
    y = crop_margin(target, margin)
    taps = gaussian_window(sigma, truncate=truncate)
    if any(n < taps.numel() for n in x.shape[-3:]):
        raise ValueError(f"SSIM window of {taps.numel()} voxels does not fit a patch of {tuple(x.shape[-3:])}")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _blur_valid(x, taps)
    mu_y = _blur_valid(y, taps)
    var_x = _blur_valid(x * x, taps) - mu_x**2
    var_y = _blur_valid(y * y, taps) - mu_y**2
    cov = _blur_valid(x * y, taps) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """1 - ``ssim3d`` (same keyword arguments)."""
    return 1.0 - ssim3d(prediction, target, **kwargs)


@dataclass(frozen=True)
class LossConfig:
    """Which loss to train with, and its parameters (stored with checkpoints).

    Parameters
    ----------
    kind:
        ``weighted_huber`` (the paper's, needs brain and p), ``l1``, ``l2`` (Bone et al.) or ``ssim`` (1 - SSIM).
    lambda1, lambda2, eps:
        Weighted Huber parameters (0.01, 1, 0.1).
    margin:
        Voxels ignored at each patch face (8 in the paper).
    ssim_weight:
        Adds ``ssim_weight * (1 - SSIM)`` to an ``l1`` / ``l2`` / ``weighted_huber`` loss (0 = off).
    ssim_sigma, data_range:
        SSIM Gaussian window std and the intensity range of the images.
    reduction:
        ``mean`` or ``sum`` over voxels, or ``patch``: each patch's (weighted) mean, averaged over the batch (see
        ``weighted_huber_loss``).
    """

    kind: LossKind = "weighted_huber"
    lambda1: float = HUBER_LAMBDA1
    lambda2: float = HUBER_LAMBDA2
    eps: float = HUBER_EPS
    margin: int = PAPER_MARGIN
    ssim_weight: float = 0.0
    ssim_sigma: float = SSIM_SIGMA
    data_range: float = 1.0
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"loss kind must be one of {list(_KINDS)}; found {self.kind!r}")
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"loss reduction must be one of {list(_REDUCTIONS)}; found {self.reduction!r}")
        if self.eps <= 0 or self.lambda1 < 0 or self.lambda2 < 0 or self.ssim_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0 and eps > 0; found lambda1={self.lambda1}, lambda2={self.lambda2}, "
                f"eps={self.eps}, ssim_weight={self.ssim_weight}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def compute_loss(
    config: LossConfig,
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    brain: torch.Tensor | None = None,
    p: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss ``config`` describes, for one batch.

    Raises
    ------
    ValueError
        When ``weighted_huber`` is asked for without ``brain`` and ``p``, or the inputs do not fit.
    """
    if config.kind == "weighted_huber":
        if brain is None or p is None:
            raise ValueError("the weighted Huber loss needs the brain mask and the CE mask p (from contrast_target)")
        loss = weighted_huber_loss(
            prediction,
            target,
            brain,
            p,
            lambda1=config.lambda1,
            lambda2=config.lambda2,
            eps=config.eps,
            margin=config.margin,
            reduction=config.reduction,
        )
    elif config.kind == "l1":
        loss = l1_loss(prediction, target, margin=config.margin, reduction=config.reduction)
    elif config.kind == "l2":
        loss = l2_loss(prediction, target, margin=config.margin, reduction=config.reduction)
    else:
        return ssim_loss(
            prediction, target, data_range=config.data_range, sigma=config.ssim_sigma, margin=config.margin
        )
    if config.ssim_weight > 0:
        loss = loss + config.ssim_weight * ssim_loss(
            prediction, target, data_range=config.data_range, sigma=config.ssim_sigma, margin=config.margin
        )
    return loss
