"""Rigid registration of every input series onto the t1_pre grid (SimpleITK, Mattes MI, multi-resolution)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.errors import RegistrationError, describe_series
from operators.image_registration import (
    RegistrationSettings,
    build_pyramid,
    image_similarity,
    run_registration,
    sampling_fraction,
    transform_motion,
)
from operators.roles import Role
from operators.study import Volume

__all__ = [
    "RegisteredStudy",
    "RegistrationQuality",
    "RegistrationResult",
    "RegistrationSettings",
    "register_rigid",
    "register_volumes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationQuality:
    """Quality figures of one registration, all measured on the fixed grid after alignment.

    ``metric`` is the optimizer's final Mattes MI value (negative; lower is better); ``nmi`` the normalized mutual
    information (H(A) + H(B)) / H(A, B) over the fixed image's foreground (1 = independent, 2 = identical); ``ncc``
    the Pearson correlation over the same voxels (meaningful for same-contrast pairs only); ``overlap`` the fraction
    of foreground voxels that the moving image covers.
    """

    metric: float
    nmi: float
    ncc: float
    overlap: float
    iterations: int
    stop_condition: str
    rotation_deg: float
    translation_mm: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for report.json."""
        return {
            "metric_mattes_mi": self.metric,
            "nmi": self.nmi,
            "ncc": self.ncc,
            "overlap": self.overlap,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "rotation_deg": self.rotation_deg,
            "translation_mm": self.translation_mm,
            "seconds": self.seconds,
        }


@dataclass
class RegistrationResult:
    """One series aligned to the reference.

    ``transform`` maps points of the reference (fixed) physical space to the moving series' physical space, the
    SimpleITK resampling convention; ``image`` is the moving series resampled onto the reference grid.
    """

    role: Role
    image: sitk.Image
    transform: sitk.Transform
    quality: RegistrationQuality


@dataclass
class RegisteredStudy:
    """Every selected series on the t1_pre grid.

    ``images[Role.T1_PRE]`` is the reference image itself; ``results`` holds one entry per moved series;
    ``volumes`` are the source volumes (the writers need the reference's slices).
    """

    reference: Volume
    images: dict[Role, sitk.Image]
    results: dict[Role, RegistrationResult] = field(default_factory=dict)
    volumes: dict[Role, Volume] = field(default_factory=dict)

    def quality_report(self) -> dict[str, dict[str, Any]]:
        """Registration figures per role for report.json."""
        return {role.value: result.quality.to_dict() for role, result in self.results.items()}


def _evaluate(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, settings: RegistrationSettings
) -> float:
    """Mattes MI of ``moving`` under ``transform`` at the coarsest level; +inf when it cannot be evaluated."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction(fixed, settings), settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return math.inf


def _initial_rigid(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings) -> sitk.Euler3DTransform:
    """Best of identity (series share the scanner frame) and a centre-of-mass initializer, by Mattes MI.

    ``fixed`` and ``moving`` are the coarsest pyramid level (cheap to evaluate); the rotation centre is the
    fixed image's centre.
    """
    size = fixed.GetSize()
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in size])
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centre)
    candidates = [identity]
    try:
        candidates.append(
            sitk.Euler3DTransform(
                sitk.CenteredTransformInitializer(
                    fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
                )
            )
        )
    except RuntimeError:  # an image with zero total mass: the later checks report it
        logger.debug("moments initializer failed; starting from identity")
    scores = [_evaluate(fixed, moving, t, settings) for t in candidates]
    best = int(np.argmin(scores))
    logger.debug("rigid initialization scores (identity, moments): %s -> %d", scores, best)
    return candidates[best]


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    role: Role,
    label: str = "",
    settings: RegistrationSettings | None = None,
    interpolator: int | None = None,
    fixed_pyramid: list[tuple[float, sitk.Image]] | None = None,
) -> RegistrationResult:
    """Rigidly register ``moving`` onto ``fixed`` (6 degrees of freedom) and resample it onto the fixed grid.

    Parameters
    ----------
    fixed, moving:
        Float images with physical geometry (LPS).
    role:
        The moving series' role (recorded in the result).
    label:
        Series label for messages (UID and description, never patient data).
    settings:
        Pyramid, sampling and acceptance thresholds; defaults to ``RegistrationSettings()``.
    interpolator:
        Final resampling interpolator, overriding ``settings.final_interpolator`` (cubic B-spline, which keeps
        the noise texture that the differential normalization estimates).
    fixed_pyramid:
        ``build_pyramid(fixed, settings.levels_mm)`` when several series register onto the same fixed image.

    Returns
    -------
    RegistrationResult

    Raises
    ------
    RegistrationError
        When SimpleITK fails, the moving image covers too little of the fixed foreground, the normalized mutual
        information is below ``settings.min_nmi``, or the motion exceeds ``settings.max_rotation_deg`` /
        ``settings.max_translation_mm``.
    """
    settings = settings or RegistrationSettings()
    label = label or role.value
    started = time.perf_counter()
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    if fixed_pyramid is None:
        fixed_pyramid = build_pyramid(fixed_f, settings.levels_mm)
    moving_pyramid = build_pyramid(moving_f, settings.levels_mm)
    initial = _initial_rigid(fixed_pyramid[0][1], moving_pyramid[0][1], settings)
    transform, metric, iterations, stop = run_registration(
        fixed_pyramid, moving_pyramid, initial, settings=settings, label=label
    )
    # Quality on the finest pyramid level: cheap, and the smoothing makes it robust to noise.
    fixed_q, moving_q = fixed_pyramid[-1][1], moving_pyramid[-1][1]
    probe = sitk.Resample(moving_q, fixed_q, transform, sitk.sitkLinear, math.nan, sitk.sitkFloat32)
    nmi, ncc, overlap = image_similarity(
        sitk.GetArrayViewFromImage(fixed_q), sitk.GetArrayViewFromImage(probe), subsample=fixed_q is fixed_f
    )
    size = fixed_f.GetSize()
    centre = fixed_f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in size])
    rotation, translation = transform_motion(transform, centre)
    quality = RegistrationQuality(
        metric=metric,
        nmi=nmi,
        ncc=ncc,
        overlap=overlap,
        iterations=iterations,
        stop_condition=stop,
        rotation_deg=rotation,
        translation_mm=translation,
        seconds=time.perf_counter() - started,
    )
    problems = []
    if overlap < 0.5:
        problems.append(f"the moving image covers {overlap:.0%} of the t1_pre foreground (expected at least 50%)")
    if nmi < settings.min_nmi:
        problems.append(f"normalized mutual information {nmi:.3f} is below the threshold {settings.min_nmi:.3f}")
    if rotation > settings.max_rotation_deg:
        problems.append(f"rotation {rotation:.1f} deg exceeds {settings.max_rotation_deg:.1f} deg")
    if translation > settings.max_translation_mm:
        problems.append(f"translation {translation:.1f} mm exceeds {settings.max_translation_mm:.1f} mm")
    if problems:
        raise RegistrationError(
            f"Registration of {label} onto the t1_pre grid did not converge to a plausible alignment: "
            + "; ".join(problems)
            + f" (optimizer: {stop}). Check that both series show the same head in the same exam.",
            expected=f"NMI >= {settings.min_nmi}, rotation <= {settings.max_rotation_deg} deg, "
            f"translation <= {settings.max_translation_mm} mm",
            found=f"NMI {nmi:.3f}, rotation {rotation:.1f} deg, translation {translation:.1f} mm, "
            f"overlap {overlap:.0%}",
        )
    if _same_grid(fixed_f, moving_f) and rotation < 1e-3 and translation < 1e-3:
        image = moving_f  # no motion on the same grid: keep the pixels untouched
    else:
        final = settings.final_interpolator if interpolator is None else interpolator
        image = sitk.Resample(moving_f, fixed_f, transform, final, 0.0, sitk.sitkFloat32)
    quality = dataclasses.replace(quality, seconds=time.perf_counter() - started)
    logger.info(
        "registered %s: NMI %.3f, NCC %.3f, rotation %.2f deg, translation %.2f mm, %d iterations, %.2f s",
        label,
        nmi,
        ncc,
        rotation,
        translation,
        iterations,
        quality.seconds,
    )
    return RegistrationResult(role=role, image=image, transform=transform, quality=quality)


def register_volumes(
    volumes: dict[Role, Volume],
    *,
    reference: Role = Role.T1_PRE,
    roles: tuple[Role, ...] | None = None,
    settings: RegistrationSettings | None = None,
) -> RegisteredStudy:
    """Register the selected volumes onto the reference volume's grid.

    Parameters
    ----------
    volumes:
        Role -> Volume from the ingest.
    reference:
        The role whose grid everything lands on (``t1_pre``).
    roles:
        Which roles to register (default: every role present). Roles not present are skipped.
    settings:
        Registration settings shared by every pair.

    Raises
    ------
    RegistrationError
        When the reference is missing or any registration fails (see ``register_rigid``).
    """
    if reference not in volumes:
        raise RegistrationError(
            f"No {reference.value} volume to register onto; found roles {sorted(r.value for r in volumes)}.",
            expected=reference.value,
            found=", ".join(sorted(r.value for r in volumes)) or "none",
        )
    ref = volumes[reference]
    fixed = sitk.Cast(ref.image, sitk.sitkFloat32)
    wanted = roles if roles is not None else tuple(volumes)
    settings = settings or RegistrationSettings()
    pyramid = build_pyramid(fixed, settings.levels_mm)
    study = RegisteredStudy(reference=ref, images={reference: fixed}, volumes=dict(volumes))
    for role in wanted:
        if role == reference or role not in volumes:
            continue
        volume = volumes[role]
        label = describe_series(volume.series.series_instance_uid, volume.series.description)
        try:
            result = register_rigid(
                fixed, volume.image, role=role, label=f"{role.value} {label}", settings=settings, fixed_pyramid=pyramid
            )
        except RegistrationError as exc:
            exc.series_instance_uid = volume.series.series_instance_uid
            raise
        study.results[role] = result
        study.images[role] = result.image
    return study
