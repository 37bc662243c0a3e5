"""Registration maths shared by the study registration and the atlas brain mask (SimpleITK, Mattes MI)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from operators.errors import RegistrationError

__all__ = [
    "RegistrationSettings",
    "build_pyramid",
    "image_similarity",
    "pyramid_level",
    "run_registration",
    "sampling_fraction",
    "transform_motion",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationSettings:
    """How a registration runs and when its result is rejected.

    Parameters
    ----------
    levels_mm:
        Resolution of each pyramid level in mm, coarse to fine; the shrink factor of a level is this divided by the
        fixed image's finest spacing (at least 1) and the smoothing sigma is half of it.
    sampling_percentage, min_samples:
        Fraction of the fixed image's voxels sampled at random (seeded) for the metric, per level, but at least
        ``min_samples`` voxels (all of them on small levels): too few samples make the metric noisy and the
        optimizer stop early in a local optimum.
    histogram_bins:
        Mattes mutual information bins.
    iterations:
        Maximum optimizer iterations per level.
    learning_rate_mm, min_step_mm:
        Regular-step gradient descent: first step at the coarsest level and smallest step at the finest, in mm of
        physical shift; both scale with the level's resolution (a finer level only refines).
    min_nmi:
        Reject the result when the normalized mutual information after registration is below this
        (1.0 = independent images, 2.0 = identical).
    max_rotation_deg, max_translation_mm:
        Reject a rigid result that moves the head by more than this (inter-series motion within one exam is small).
    seed:
        Seed of the metric's random sampling, so that runs are reproducible.
    final_interpolator:
        SimpleITK interpolator for the output image. Cubic B-spline (default) keeps most of the noise texture
        that the differential normalization measures (noise std 0.82 of the original at random sub-voxel shifts,
        against 0.54 for linear) but costs about 2 s on 256 x 256 x 192 here; ``sitk.sitkLinear`` takes 0.15 s
        and makes the noise estimate read about 20% low.
    """

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    sampling_percentage: float = 0.02
    min_samples: int = 50_000
    histogram_bins: int = 32
    iterations: int = 200
    learning_rate_mm: float = 2.0
    min_step_mm: float = 1e-4
    min_nmi: float = 1.03
    max_rotation_deg: float = 30.0
    max_translation_mm: float = 60.0
    seed: int = 20250101
    final_interpolator: int = sitk.sitkBSpline


def transform_motion(transform: sitk.Transform, centre: tuple[float, float, float]) -> tuple[float, float]:
    """Rotation angle (degrees) and displacement of ``centre`` (mm) of a rigid or affine transform.

    For an affine transform the rotation is that of the polar decomposition's orthogonal factor.
    """
    matrix = np.eye(3)
    inner: sitk.Transform = transform
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        inner = transform.GetNthTransform(0)
    if hasattr(inner, "GetMatrix"):
        matrix = np.asarray(inner.GetMatrix(), dtype=float).reshape(3, 3)
        u, _, vt = np.linalg.svd(matrix)
        matrix = u @ vt
    cos_angle = float(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))
    moved = np.asarray(transform.TransformPoint(centre), dtype=float)
    return math.degrees(math.acos(cos_angle)), float(np.linalg.norm(moved - np.asarray(centre)))


def _foreground(fixed: np.ndarray) -> np.ndarray:
    """Voxels clearly above background: more than 10% of the 99th percentile."""
    return fixed > 0.1 * float(np.percentile(fixed, 99.0))


def image_similarity(
    fixed: np.ndarray, moving: np.ndarray, *, bins: int = 32, subsample: bool = True
) -> tuple[float, float, float]:
    """Normalized mutual information, Pearson correlation and overlap of two arrays on the same grid.

    ``moving`` may hold NaN where it has no data; those voxels are left out. Statistics use the fixed image's
    foreground (voxels above 10% of its 99th percentile), subsampled by 2 along each axis when ``subsample``.

    Returns
    -------
    nmi, ncc, overlap
        NMI = (H(A) + H(B)) / H(A, B) in [1, 2]; Pearson correlation; fraction of foreground voxels covered.
    """
    step = (slice(None, None, 2 if subsample else 1),) * fixed.ndim
    f = fixed[step]
    m = moving[step]
    fg = _foreground(f)
    valid = fg & np.isfinite(m)
    n_fg = int(fg.sum())
    overlap = float(valid.sum()) / n_fg if n_fg else 0.0
    if valid.sum() < 100:
        return 1.0, 0.0, overlap
    a = f[valid].astype(np.float64)
    b = m[valid].astype(np.float64)
    lo_a, hi_a = np.percentile(a, [0.5, 99.5])
    lo_b, hi_b = np.percentile(b, [0.5, 99.5])
    joint, _, _ = np.histogram2d(
        np.clip(a, lo_a, hi_a), np.clip(b, lo_b, hi_b), bins=bins, range=[[lo_a, hi_a + 1e-9], [lo_b, hi_b + 1e-9]]
    )
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_joint = entropy(p)
    nmi = (entropy(p.sum(axis=0)) + entropy(p.sum(axis=1))) / h_joint if h_joint > 0 else 1.0
    sa, sb = a.std(), b.std()
    ncc = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb)) if sa > 0 and sb > 0 else 0.0
    return float(nmi), ncc, overlap


def pyramid_level(image: sitk.Image, level_mm: float) -> sitk.Image:
    """Shrink an image to a resolution of about ``level_mm`` by averaging blocks of voxels (``BinShrink``).

    Block averaging both low-passes and subsamples in one memory-bound pass (a Gaussian at full resolution costs
    over ten times more on 256 x 256 x 192). Axes whose spacing is already at least ``level_mm`` are left alone
    (thick 2D slices).
    """
    factors = [max(1, round(level_mm / s)) for s in image.GetSpacing()]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)


def build_pyramid(image: sitk.Image, levels_mm: tuple[float, ...]) -> list[tuple[float, sitk.Image]]:
    """Images at each level, coarse to fine, each built from the next finer one (one full-resolution filter).

    A level finer than the image's spacing is the image itself (the same object, so callers can skip it).
    """
    built: list[tuple[float, sitk.Image]] = []
    current = image
    for level in sorted(set(levels_mm)):
        current = pyramid_level(current, level)
        built.append((level, current))
    return built[::-1]


def sampling_fraction(image: sitk.Image, settings: RegistrationSettings) -> float:
    """Fraction of the fixed image's voxels the Mattes MI metric samples (at least ``min_samples``)."""
    voxels = math.prod(image.GetSize())
    return float(min(1.0, max(settings.sampling_percentage, settings.min_samples / max(voxels, 1))))


def run_registration(
    fixed: list[tuple[float, sitk.Image]],
    moving: list[tuple[float, sitk.Image]],
    initial: sitk.Transform,
    *,
    settings: RegistrationSettings,
    label: str,
    moving_mask: sitk.Image | None = None,
) -> tuple[sitk.Transform, float, int, str]:
    """Optimize ``initial`` (in place) with Mattes MI, level by level, over two pyramids from ``build_pyramid``.

    The pyramid is built here (both images smoothed and shrunk per level) rather than by SimpleITK's
    registration method, which smooths the full-resolution moving image at every level and is several times
    slower on 256 x 256 x 192 volumes.

    Returns
    -------
    transform, metric, iterations, stop_condition

    Raises
    ------
    RegistrationError
        When SimpleITK fails (e.g. the images do not overlap, too few valid samples).
    """
    metric = math.inf
    iterations = 0
    stop = "not run"
    finest = min(level for level, _ in fixed)
    coarsest = max(level for level, _ in fixed)
    previous: tuple[sitk.Image, sitk.Image] | None = None
    for (level, fixed_level), (_, moving_level) in zip(fixed, moving, strict=True):
        if previous is not None and previous[0] is fixed_level and previous[1] is moving_level:
            continue
        previous = (fixed_level, moving_level)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling_fraction(fixed_level, settings), settings.seed)
        # Image gradients only at the samples: a full gradient image per level costs more than all iterations.
        method.SetMetricUseFixedImageGradientFilter(False)
        method.SetMetricUseMovingImageGradientFilter(False)
        if moving_mask is not None:
            method.SetMetricMovingMask(moving_mask)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=settings.learning_rate_mm * level / coarsest,
            minStep=settings.min_step_mm * level / finest,
            numberOfIterations=settings.iterations,
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(initial, inPlace=True)
        count = [0]
        method.AddCommand(sitk.sitkIterationEvent, lambda count=count: count.__setitem__(0, count[0] + 1))
        level_started = time.perf_counter()
        try:
            method.Execute(fixed_level, moving_level)
        except RuntimeError as exc:
            text = str(exc).strip()
            first_line = text.splitlines()[-1] if text else type(exc).__name__
            raise RegistrationError(
                f"Registration of {label} onto the t1_pre grid failed in SimpleITK at the {level:g} mm level: "
                f"{first_line}. The series probably do not overlap or one of them is empty.",
                expected="overlapping images of the same head",
                found=first_line,
            ) from exc
        iterations += count[0]
        metric = float(method.GetMetricValue())
        stop = method.GetOptimizerStopConditionDescription()
        logger.debug(
            "%s: level %g mm (%s voxels), %d iterations, metric %.4f, %.2f s",
            label,
            level,
            "x".join(str(n) for n in fixed_level.GetSize()),
            count[0],
            metric,
            time.perf_counter() - level_started,
        )
    return initial, metric, iterations, stop
