"""Checks on the built volumes before any registration: images with no usable content are refused in seconds.

Registration and the atlas brain mask take seconds to minutes and fail in confusing ways (or, worse, succeed) on
an image with nothing in it. Each check here is a cheap statistic with a clear meaning:

- finite values only (float pixel data can hold NaN or inf);
- non-negative magnitudes: an MR magnitude image has no negative values; many of them mean a sign or
  bit-depth error (PixelRepresentation, BitsStored, a negative RescaleSlope);
- contrast: not constant (all zero, one value) and not saturated (most voxels at the maximum);
- spatial structure: anatomy is smooth at a scale of a few voxels, noise is not; the share of the variance that
  survives a Gaussian blur of 2 voxels tells them apart (real heads keep most of it, white noise under 5 %);
- overlapping fields of view: every series to be registered must share most of its volume with the t1_pre.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from operators.errors import InputDicomError
from operators.roles import Role
from operators.study import Volume

__all__ = ["DegenerateImageError", "check_volume", "check_volumes", "field_of_view_overlap"]

logger = logging.getLogger(__name__)

#: Largest share of negative voxels an MR magnitude image may have (a few from interpolation or offsets).
MAX_NEGATIVE_FRACTION = 0.01
#: Largest share of voxels at the maximum value (saturation) or at the single most common value besides zero.
MAX_SATURATED_FRACTION = 0.25
#: Smallest share of the variance that survives a 2-voxel Gaussian blur (anatomy, not noise).
MIN_STRUCTURE = 0.1
#: Smallest share of the smaller field of view that must lie inside the other one.
MIN_OVERLAP = 0.25
#: Voxels sampled for the statistics (a stride over the volume): enough for stable fractions, fast for any size.
_SAMPLE = 2_000_000


class DegenerateImageError(InputDicomError):
    """A series holds no usable image: non-finite, negative, constant, saturated or structureless values."""


def _refuse(volume: Volume, attribute: str, expected: str, found: str, hint: str) -> DegenerateImageError:
    series = volume.series
    role = f" ({volume.role.value})" if volume.role else ""
    return DegenerateImageError(
        f"{series.label}{role}: {attribute}: expected {expected}, found {found}. {hint}",
        series_instance_uid=series.series_instance_uid,
        attribute=attribute,
        expected=expected,
        found=found,
    )


def _structure(array: np.ndarray) -> float:
    """Share of the variance left after a Gaussian blur of 2 voxels, on the whole field of view subsampled to at
    most 96 voxels per axis (the head against the air dominates; subsampling keeps noise white), each slice's mean
    taken out first (noise whose level changes from slice to slice is still noise)."""
    steps = tuple(max(1, int(np.ceil(n / 96))) for n in array.shape)
    sample = np.array(array[tuple(slice(None, None, step) for step in steps)], dtype=np.float32)  # a copy
    sample -= sample.mean(axis=(1, 2), keepdims=True)  # slice-to-slice level changes are not anatomy
    variance = float(sample.var(dtype=np.float64))
    if variance <= 0.0:
        return 0.0
    blurred = ndimage.gaussian_filter(sample, 2.0, mode="nearest")
    return float(np.var(blurred, dtype=np.float64)) / variance


def check_volume(volume: Volume) -> None:
    """Refuse a volume whose voxels cannot be a usable MR image (see the module docstring).

    Raises
    ------
    DegenerateImageError
        Naming the series, the failing property, what was expected and what was found.
    """
    array = sitk.GetArrayViewFromImage(volume.image)
    stride = max(1, int(np.ceil(array.size / _SAMPLE)))
    sample = np.asarray(array).reshape(-1)[::stride]
    finite = np.isfinite(sample)
    if not finite.all():
        raise _refuse(
            volume,
            "PixelData",
            "finite values",
            f"{100.0 * (1 - finite.mean()):.1f} % NaN or infinite voxels",
            "The pixel data or RescaleSlope / RescaleIntercept are broken.",
        )
    negative = float(np.mean(sample < 0))
    if negative > MAX_NEGATIVE_FRACTION:
        raise _refuse(
            volume,
            "PixelRepresentation/RescaleSlope",
            f"non-negative magnitudes (at most {100 * MAX_NEGATIVE_FRACTION:g} % negative voxels)",
            f"{100.0 * negative:.1f} % negative voxels",
            "Signed and unsigned pixels may be mixed up, or the rescale slope is negative.",
        )
    low, high = float(sample.min()), float(sample.max())
    if high - low <= 1e-6 * max(1.0, abs(high)):
        raise _refuse(
            volume,
            "PixelData",
            "an image with contrast",
            f"every voxel equal to {high:g}",
            "The series is blank.",
        )
    saturated = float(np.mean(sample >= high))
    if saturated > MAX_SATURATED_FRACTION:
        raise _refuse(
            volume,
            "PixelData",
            f"at most {100 * MAX_SATURATED_FRACTION:g} % of the voxels at the maximum",
            f"{100.0 * saturated:.1f} % at {high:g}",
            "The image is saturated.",
        )
    structure = _structure(np.asarray(array))
    if structure < MIN_STRUCTURE:
        raise _refuse(
            volume,
            "PixelData",
            f"anatomy (at least {MIN_STRUCTURE:g} of the variance kept by a 2-voxel blur)",
            f"{structure:.3f}: noise without structure",
            "The series holds no image of a head.",
        )


def _corners(image: sitk.Image) -> np.ndarray:
    """The 8 corners of the image's voxel grid (outer voxel faces) in patient space."""
    size = image.GetSize()
    return np.asarray(
        [
            image.TransformContinuousIndexToPhysicalPoint(
                tuple(n - 0.5 if upper else -0.5 for upper, n in zip(choice, size, strict=True))
            )
            for choice in itertools.product((False, True), repeat=3)
        ]
    )


def field_of_view_overlap(a: sitk.Image, b: sitk.Image) -> float:
    """Share of the smaller field of view (axis-aligned bounding boxes in patient space) inside the other."""
    box_a, box_b = _corners(a), _corners(b)
    low = np.maximum(box_a.min(axis=0), box_b.min(axis=0))
    high = np.minimum(box_a.max(axis=0), box_b.max(axis=0))
    inter = float(np.prod(np.clip(high - low, 0.0, None)))
    smaller = min(float(np.prod(np.ptp(box, axis=0))) for box in (box_a, box_b))
    return inter / smaller if smaller > 0 else 0.0


def check_volumes(volumes: Mapping[Role, Volume]) -> None:
    """Check every volume (:func:`check_volume`) and that each shares its field of view with the t1_pre.

    Raises
    ------
    DegenerateImageError
        For the first volume that fails, or a series whose field of view does not overlap the t1_pre's.
    """
    for volume in volumes.values():
        check_volume(volume)
    reference = volumes.get(Role.T1_PRE)
    if reference is None:
        return
    for role, volume in volumes.items():
        if role == Role.T1_PRE:
            continue
        overlap = field_of_view_overlap(reference.image, volume.image)
        if overlap < MIN_OVERLAP:
            raise _refuse(
                volume,
                "ImagePositionPatient",
                f"a field of view that overlaps the t1_pre's (at least {100 * MIN_OVERLAP:g} %)",
                f"{100.0 * overlap:.1f} % overlap",
                "The series does not cover the same head (or its positions are wrong).",
            )
