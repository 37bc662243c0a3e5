"""Head poses in the scanner and series acquisition grids, and resampling subject-space maps onto those grids."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from training.phantom.anatomy import ModelGrid

__all__ = ["Pose", "SeriesGeometry", "resample_box_to_series", "resample_to_series", "rotation_matrix"]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> npt.NDArray[np.float64]:
    """R = Rz Ry Rx for rotations (degrees) about the LPS x (pitch), y (roll) and z (yaw) axes."""
    ax, ay, az = (math.radians(a) for a in (rx_deg, ry_deg, rz_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


@dataclass(frozen=True)
class Pose:
    """Rigid head pose: p_scanner = R (p_subject - c) + c + t (LPS mm, scanner = DICOM patient coordinates).

    The transform taking t1_pre physical points to the same anatomy in series s is pose_s o pose_pre^-1:
    p_s = R_s R_pre^T (p_pre - c - t_pre) + c + t_s.
    """

    rotation: npt.NDArray[np.float64]
    translation: npt.NDArray[np.float64]
    centre: npt.NDArray[np.float64]

    def apply(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Subject points (N, 3) to scanner points."""
        return (points - self.centre) @ self.rotation.T + self.centre + self.translation

    def inverse_transform(self) -> sitk.AffineTransform:
        """Scanner -> subject as a SimpleITK transform (what sitk.Resample needs to pull subject maps)."""
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(tuple(self.rotation.T.ravel()))
        transform.SetCenter(tuple(float(v) for v in self.centre))
        transform.SetTranslation(tuple(float(v) for v in -self.rotation.T @ self.translation))
        return transform

    def to_dict(self) -> dict[str, Any]:
        """JSON form for params.json."""
        return {
            "rotation": self.rotation.tolist(),
            "translation_mm": self.translation.tolist(),
            "centre_mm": self.centre.tolist(),
            "convention": "p_scanner = rotation @ (p_subject - centre) + centre + translation (LPS mm)",
        }


@dataclass(frozen=True)
class SeriesGeometry:
    """Acquisition grid in scanner (DICOM patient, LPS) coordinates.

    ``direction`` columns are the row, column and slice directions; ``size`` is (columns, rows, slices) and
    ``spacing`` (column spacing, row spacing, slice spacing) in mm. ``thickness`` is the slice thickness (for 2D
    series it may be smaller than the slice spacing: a gap); the slice profile is integrated over it.
    """

    origin: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    direction: npt.NDArray[np.float64]
    thickness: float

    @classmethod
    def centred(
        cls,
        centre: npt.NDArray[np.float64],
        *,
        spacing: tuple[float, float, float],
        size: tuple[int, int, int],
        direction: npt.NDArray[np.float64],
        thickness: float,
    ) -> SeriesGeometry:
        """A grid whose centre (between its middle voxels) lies at ``centre``."""
        half = (np.array(size, dtype=np.float64) - 1.0) / 2.0 * np.array(spacing)
        return cls(centre - direction @ half, spacing, size, direction, thickness)

    def reference(self, *, offset: npt.NDArray[np.float64] | None = None) -> sitk.Image:
        """Empty image with this geometry, optionally shifted by ``offset`` (in voxel units of each axis)."""
        image = sitk.Image([int(n) for n in self.size], sitk.sitkUInt8)
        origin = self.origin if offset is None else self.origin + self.direction @ (offset * np.array(self.spacing))
        image.SetOrigin(tuple(float(v) for v in origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def image(self, array: npt.NDArray[np.generic]) -> sitk.Image:
        """Wrap an array (slices, rows, columns) as a SimpleITK image with this geometry."""
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def physical_points(self, index_xyz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scanner coordinates of continuous indices (N, 3) given as (column, row, slice)."""
        return np.asarray(self.origin + (index_xyz * np.array(self.spacing)) @ self.direction.T, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for params.json (SimpleITK conventions: origin, spacing, direction row-major, size)."""
        return {
            "origin": self.origin.tolist(),
            "spacing": list(self.spacing),
            "direction": self.direction.ravel().tolist(),
            "size": list(self.size),
            "slice_thickness": self.thickness,
        }

    def index_of(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Continuous (column, row, slice) indices of scanner points (N, 3)."""
        return np.asarray(((points - self.origin) @ self.direction) / np.array(self.spacing), dtype=np.float64)

    def sub_grid(self, low: npt.NDArray[np.int_], high: npt.NDArray[np.int_]) -> SeriesGeometry:
        """The part of this grid from index ``low`` to ``high`` (exclusive), same spacing and direction."""
        origin = self.physical_points(low[None, :].astype(np.float64))[0]
        size = tuple(int(v) for v in high - low)
        return SeriesGeometry(origin, self.spacing, size, self.direction, self.thickness)  # type: ignore[arg-type]

    def supersampling(self, model_spacing: float) -> tuple[int, int, int]:
        """Sub-samples per axis so that each output voxel averages the model over its footprint."""
        extents = (self.spacing[0], self.spacing[1], self.thickness)
        return tuple(max(1, round(e / model_spacing)) for e in extents)  # type: ignore[return-value]


def resample_to_series(
    maps: list[F32],
    grid: ModelGrid,
    geometry: SeriesGeometry,
    pose: Pose,
    *,
    interpolator: int = sitk.sitkLinear,
    supersample: bool = True,
    coarsen: bool = False,
) -> list[F32]:
    """Resample subject-space maps onto a series grid at a head pose, averaging over each voxel's footprint.

    Each output voxel is the mean of n_x * n_y * n_z point samples spread over its in-plane size and its slice
    thickness (a box slice profile), so coarse series integrate the anatomy instead of aliasing it. Points outside
    the model grid read 0 (air).

    With ``coarsen``, maps are first block-averaged 2x2x2 (for series whose voxels are at least twice as large
    as the model's: the same footprint average with 8 times fewer samples).

    Returns
    -------
    list of arrays (slices, rows, columns), float32, one per input map.
    """
    if coarsen:
        maps, grid = _block_average(maps, grid)
    transform = pose.inverse_transform()
    counts = geometry.supersampling(grid.spacing) if supersample else (1, 1, 1)
    extents = np.array([geometry.spacing[0], geometry.spacing[1], geometry.thickness]) / np.array(geometry.spacing)
    offsets = [((np.arange(n) + 0.5) / n - 0.5) * e for n, e in zip(counts, extents, strict=True)]
    images = [grid.image(m) for m in maps]
    out = [np.zeros(geometry.size[::-1], dtype=np.float32) for _ in maps]
    total = counts[0] * counts[1] * counts[2]
    size = [int(n) for n in geometry.size]
    spacing = tuple(float(v) for v in geometry.spacing)
    direction = tuple(float(v) for v in geometry.direction.ravel())
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                shift = geometry.direction @ (np.array([ox, oy, oz]) * np.array(geometry.spacing))
                origin = tuple(float(v) for v in geometry.origin + shift)
                for k, image in enumerate(images):
                    sampled = sitk.Resample(
                        image, size, transform, interpolator, origin, spacing, direction, 0.0, sitk.sitkFloat32
                    )
                    out[k] += sitk.GetArrayViewFromImage(sampled)
    if total > 1:
        for array in out:
            array *= np.float32(1.0 / total)
    return out


def _block_average(maps: list[F32], grid: ModelGrid) -> tuple[list[F32], ModelGrid]:
    """2x2x2 block means of the maps and the grid they live on (its voxel centres sit between the old ones)."""
    nz, ny, nx = (n // 2 for n in grid.shape)
    out = []
    for m in maps:
        blocks = m[: 2 * nz, : 2 * ny, : 2 * nx].reshape(nz, 2, ny, 2, nx, 2)
        out.append(blocks.mean(axis=(1, 3, 5), dtype=np.float32))
    coarse = ModelGrid(origin=grid.origin + grid.spacing / 2.0, spacing=2.0 * grid.spacing, shape=(nz, ny, nx))
    return out, coarse


def resample_box_to_series(
    maps: list[F32],
    grid: ModelGrid,
    box: tuple[slice, slice, slice],
    geometry: SeriesGeometry,
    pose: Pose,
) -> list[F32]:
    """Nearest-neighbour resampling of maps that are zero outside a model-grid box (e.g. lesion labels).

    Only the part of the series grid that the box can reach is computed; the rest is 0.
    """
    out = [np.zeros(geometry.size[::-1], dtype=np.float32) for _ in maps]
    corners_zyx = np.array(
        [
            [z, y, x]
            for z in (box[0].start, box[0].stop)
            for y in (box[1].start, box[1].stop)
            for x in (box[2].start, box[2].stop)
        ]
    )
    index = geometry.index_of(pose.apply(grid.coordinates(corners_zyx)))
    size = np.array(geometry.size)
    low = np.clip(np.floor(index.min(axis=0)).astype(int) - 1, 0, size)
    high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(high <= low):
        return out
    sub = geometry.sub_grid(low, high)
    sampled = resample_to_series(
        [m for m in maps], grid, sub, pose, interpolator=sitk.sitkNearestNeighbor, supersample=False
    )
    target = (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))
    for array, part in zip(out, sampled, strict=True):
        array[target] = part
    return out
