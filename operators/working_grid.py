"""Sub-millimetre studies: processed on a working grid near the models' resolution, returned to the source grid.

A 0.5 mm 512 x 512 x 320 T1 holds 84 million voxels; with its low-dose copy, the registration, the model's
inputs and the outputs in float32 it needs over 15 GB and minutes of inference, for detail the models never saw
(they work at 1 mm and coarser). Such a study is resampled (anti-aliased) onto a grid of at least
:data:`MIN_WORKING_SPACING_MM` per axis, covering the same field of view; every stage runs there, and only the
predicted contrast signal is brought back (linear interpolation) and added to the source image at its own
resolution, so the synthetic series keeps the source's grid, slices and detail. Outside the (grown) brain mask
the signal is zero, so there the synthetic image is still the source image, voxel for voxel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from operators.postprocess import SyntheticResult
from operators.roles import Role
from operators.study import Volume

__all__ = ["MIN_WORKING_SPACING_MM", "to_source_grid", "to_working_grid", "working_grid"]

logger = logging.getLogger(__name__)

#: The finest spacing the pipeline works at; finer axes are resampled to it.
MIN_WORKING_SPACING_MM = 1.0
#: An axis within this fraction of the working spacing is left as it is (0.98 mm is not worth resampling).
_TOLERANCE = 0.9


def working_grid(reference: sitk.Image, min_spacing_mm: float = MIN_WORKING_SPACING_MM) -> sitk.Image | None:
    """An empty image defining the working grid of ``reference``, or None when it is coarse enough already.

    The grid keeps the reference's direction and field of view (voxel edges at the same place); each axis finer
    than ``min_spacing_mm`` gets that spacing.
    """
    spacing = np.asarray(reference.GetSpacing(), dtype=float)
    if np.all(spacing >= _TOLERANCE * min_spacing_mm):
        return None
    new_spacing = np.where(spacing < _TOLERANCE * min_spacing_mm, min_spacing_mm, spacing)
    extent = np.asarray(reference.GetSize(), dtype=float) * spacing
    size = np.maximum(1, np.round(extent / new_spacing)).astype(int)
    new_spacing = extent / size  # the same field of view exactly
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), dtype=float) + direction @ ((new_spacing - spacing) / 2.0)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in new_spacing))
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetDirection(reference.GetDirection())
    return grid


def _downsample(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """Anti-aliased resampling onto a coarser grid: a Gaussian of half the new spacing first, then linear."""
    sigma = [max(0.0, (new - old) / 2.0) for new, old in zip(grid.GetSpacing(), image.GetSpacing(), strict=True)]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if any(s > 0 for s in sigma) else image
    return sitk.Resample(smoothed, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def to_working_grid(volumes: Mapping[Role, Volume], grid: sitk.Image) -> dict[Role, Volume]:
    """Every volume resampled (anti-aliased) to the working spacing: the t1_pre onto ``grid``, the other series
    onto a grid of their own position and direction (registration still has their motion to find). The working
    volumes have no slices: the writers use the source t1_pre's."""
    working = {}
    for role, volume in volumes.items():
        target = grid if role == Role.T1_PRE else _own_grid(volume.image, grid)
        working[role] = replace(volume, image=_downsample(volume.image, target), slices=[])
        logger.info(
            "%s on the working grid: %s voxels of %s mm (source %s of %s mm)",
            volume.series.label,
            "x".join(str(n) for n in working[role].image.GetSize()),
            "x".join(f"{v:.2f}" for v in working[role].image.GetSpacing()),
            "x".join(str(n) for n in volume.image.GetSize()),
            "x".join(f"{v:.2f}" for v in volume.image.GetSpacing()),
        )
    return working


def _own_grid(image: sitk.Image, reference_grid: sitk.Image) -> sitk.Image:
    """A series other than t1_pre keeps its own position and direction, at the working spacing where finer."""
    grid = working_grid(image, min(reference_grid.GetSpacing()))
    if grid is None:
        grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(image)
    return grid


def _resampled(image: sitk.Image, reference: sitk.Image, interpolator: int) -> sitk.Image:
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def _from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def to_source_grid(
    result: SyntheticResult, source: Volume, work_x_pc: np.ndarray, *, clip_negative: bool
) -> SyntheticResult:
    """The synthetic images on the source grid: the source image plus the contrast signal brought back to it.

    ``work_x_pc`` is the pre-contrast image on the working grid (the beyond-dose image is x_LD + y there; its
    difference to x_PC is brought back the same way). Memory: the source image is read in place and each
    full-size array exists once (a 0.5 mm 512 x 512 x 320 volume is 336 MB in float32). The enhancement image
    stays on the working grid (only the preview draws it).
    """
    reference = source.image
    x_pc = sitk.GetArrayViewFromImage(reference)
    y_image = _resampled(result.enhancement, reference, sitk.sitkLinear)
    y = sitk.GetArrayViewFromImage(y_image)
    synthetic = np.add(x_pc, y, dtype=np.float32)
    if clip_negative:
        np.maximum(synthetic, 0.0, out=synthetic, where=y != 0)
    del y, y_image
    synthetic_image = _from_array(synthetic, reference)
    del synthetic
    beyond: sitk.Image | None = None
    if result.beyond is not None:
        delta = _from_array(sitk.GetArrayViewFromImage(result.beyond) - work_x_pc, result.beyond)
        delta_image = _resampled(delta, reference, sitk.sitkLinear)
        beyond = _from_array(np.add(x_pc, sitk.GetArrayViewFromImage(delta_image), dtype=np.float32), reference)
        del delta, delta_image
    mask_image = _from_array(result.mask.astype(np.uint8), result.enhancement)
    mask = sitk.GetArrayFromImage(_resampled(mask_image, reference, sitk.sitkNearestNeighbor)).astype(bool)
    params = {
        **result.params,
        "working_grid": {
            "size": [int(n) for n in result.enhancement.GetSize()],
            "spacing_mm": [round(float(v), 4) for v in result.enhancement.GetSpacing()],
        },
        "enhancing_voxels_source_grid": int(mask.sum()),
    }
    return replace(result, synthetic=synthetic_image, beyond=beyond, mask=mask, params=params)
