"""Subject anatomy: the MNI152 2009a brain warped per subject, inside a layered head (CSF, dura, skull, scalp, neck)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from training.phantom.template import NECK_MM, Template, load_template

__all__ = [
    "HEAD_LAYERS",
    "OUTER_LAYERS",
    "SKIN_Q_MM",
    "SKULL_Q_MM",
    "Anatomy",
    "Deformation",
    "ModelGrid",
    "build_anatomy",
    "displacement_on_grid",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

#: Layers outside the brain envelope as (tissue, outer boundary in mm of the head-depth coordinate q): q is the
#: distance from a smoothed hull of the brain, divided by a smooth per-subject thickness factor. Between the hull and
#: the brain the template's own CSF applies. Typical adult values: subarachnoid CSF 1-3 mm, dura ~1 mm, skull
#: 5-7 mm (inner table, diploe, outer table), scalp 5-7 mm (galea, fat, skin).
HEAD_LAYERS: tuple[tuple[str, float], ...] = (
    ("csf", 1.5),
    ("dura", 2.5),
    ("bone", 4.0),
    ("marrow", 6.5),
    ("bone", 8.0),
)
#: Scalp and neck soft tissue by depth below the outer skin surface (mm): skin, subcutaneous fat, then muscle.
OUTER_LAYERS: tuple[tuple[str, float], ...] = (("skin", 2.0), ("fat", 6.0), ("muscle", 1e6))
#: Outer skin surface of the head, in the head-depth coordinate (skull outer table + 7 mm scalp).
SKIN_Q_MM = 15.0
SKULL_Q_MM = HEAD_LAYERS[-1][1]

_HEAD_MARGIN_MM = 20.0  # model grid margin around the template brain for the head layers


@dataclass(frozen=True)
class ModelGrid:
    """Regular LPS grid (identity direction) in subject space on which the anatomy is built; arrays are (z, y, x)."""

    origin: npt.NDArray[np.float64]  # (x, y, z) of voxel (0, 0, 0), mm
    spacing: float
    shape: tuple[int, int, int]  # (z, y, x)

    def reference(self) -> sitk.Image:
        """An empty image with this geometry (for sitk.Resample)."""
        image = sitk.Image([int(n) for n in self.shape[::-1]], sitk.sitkUInt8)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing((self.spacing,) * 3)
        return image

    def image(self, array: npt.NDArray[np.generic]) -> sitk.Image:
        """Wrap an array of this grid's shape as a SimpleITK image with this geometry."""
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing((self.spacing,) * 3)
        return image

    def coordinates(self, index_zyx: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
        """Physical (x, y, z) of voxel indices given as an (N, 3) array of (z, y, x)."""
        return self.origin + index_zyx[:, ::-1].astype(np.float64) * self.spacing

    def axis(self, dim: int) -> npt.NDArray[np.float64]:
        """Physical coordinates along x (0), y (1) or z (2)."""
        n = self.shape[2 - dim]
        return np.asarray(self.origin[dim] + np.arange(n) * self.spacing, dtype=np.float64)


@dataclass(frozen=True)
class Deformation:
    """Subject -> template mapping: p_t = c + S^-1 (p + u(p) - c), u a smooth displacement on a coarse grid.

    ``scale`` (x, y, z) is subject size over template size; ``field`` is (z, y, x, 3) displacement in mm.
    """

    centre: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    field: npt.NDArray[np.float64]
    field_origin: npt.NDArray[np.float64]
    field_spacing: float

    def to_template(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Map (N, 3) subject points to template points (linear interpolation of the field, as ITK does)."""
        index = ((points - self.field_origin) / self.field_spacing)[:, ::-1].T  # (3, N) as (z, y, x)
        u = np.stack([ndimage.map_coordinates(self.field[..., k], index, order=1, mode="nearest") for k in range(3)])
        return np.asarray(self.centre + (points + u.T - self.centre) / self.scale, dtype=np.float64)


@dataclass
class Anatomy:
    """Tissue fractions and head fields of one subject on the model grid (all float32, shape grid.shape).

    ``gm``, ``wm``, ``csf`` are brain fractions (they sum to ``brain``); outside the brain the head-depth
    coordinate ``q`` (mm from the brain hull, thickness-normalized) selects CSF, dura, skull and marrow up to
    SKULL_Q_MM, and beyond it ``depth_out`` (mm below the skin of head and neck) selects skin, fat and muscle.
    """

    grid: ModelGrid
    deformation: Deformation
    centre: npt.NDArray[np.float64]
    brain: F32
    gm: F32
    wm: F32
    csf: F32
    q: F32
    depth_out: F32


def _model_grid(template: Template, scale: npt.NDArray[np.float64], spacing: float) -> ModelGrid:
    low, high = template.brain_box
    low = low - _HEAD_MARGIN_MM - np.array([0.0, 0.0, NECK_MM - _HEAD_MARGIN_MM])
    high = high + _HEAD_MARGIN_MM
    c = template.centre
    low_s, high_s = c + scale * (low - c) - 4.0, c + scale * (high - c) + 4.0
    shape_xyz = np.ceil((high_s - low_s) / spacing).astype(int) + 1
    return ModelGrid(origin=low_s, spacing=spacing, shape=(int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])))


def _random_deformation(
    rng: np.random.Generator, template: Template, *, enabled: bool, warp_mm: float = 2.0
) -> Deformation:
    spacing = 12.0
    low, high = template.brain_box
    origin = low - 60.0 - np.array([0.0, 0.0, NECK_MM])
    n = np.ceil((high + 60.0 - origin) / spacing).astype(int) + 1
    field = rng.standard_normal((int(n[2]), int(n[1]), int(n[0]), 3))
    global_scale = rng.uniform(0.92, 1.08)
    scale = global_scale * rng.uniform(0.97, 1.03, size=3)
    if not enabled:
        return Deformation(template.centre, np.ones(3), np.zeros_like(field), origin, spacing)
    for k in range(3):
        field[..., k] = ndimage.gaussian_filter(field[..., k], 1.2, mode="nearest")
    field *= warp_mm / np.sqrt(np.mean(np.sum(field**2, axis=-1)))
    return Deformation(template.centre, scale, field, origin, spacing)


def _interpolation_matrix(
    n_out: int, origin_out: float, spacing_out: float, deformation: Deformation, dim: int
) -> npt.NDArray[np.float64]:
    """Dense (n_out, n_field) matrix of 1D linear interpolation weights from the coarse field's nodes along ``dim``."""
    n_in = deformation.field.shape[2 - dim]
    pos = (origin_out + np.arange(n_out) * spacing_out - deformation.field_origin[dim]) / deformation.field_spacing
    pos = np.clip(pos, 0.0, n_in - 1.000001)
    low = np.floor(pos).astype(int)
    frac = pos - low
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] = frac
    return weights


def displacement_on_grid(
    deformation: Deformation, origin: npt.NDArray[np.float64], spacing: float, shape: tuple[int, int, int]
) -> npt.NDArray[np.float64]:
    """T(p) - p (mm) on a regular grid, as (nz, ny, nx, 3) with components x, y, z (the layout of a vector image).

    The coarse field is upsampled separably (small matrix products), much faster than letting ITK interpolate a
    displacement-field transform voxel by voxel; the result equals ITK's linear interpolation of the field.
    """
    wz, wy, wx = (_interpolation_matrix(shape[2 - d], origin[d], spacing, deformation, d) for d in (2, 1, 0))
    g = np.tensordot(wz, deformation.field, axes=(1, 0))  # (nz, Ly, Lx, 3)
    g = np.einsum("yj,zjlk->zylk", wy, g)  # (nz, ny, Lx, 3)
    inv = 1.0 / deformation.scale
    g *= inv  # the displacement in template units; the scaling adds (p - c)(1/s - 1) per component
    axes = [origin[k] + np.arange(shape[2 - k]) * spacing - deformation.centre[k] for k in range(3)]
    g[..., 1] += (axes[1] * (inv[1] - 1.0))[None, :, None]  # constant along x: added before the x product
    g[..., 2] += (axes[2] * (inv[2] - 1.0))[:, None, None]  # (interpolation weights along x sum to 1)
    out = np.matmul(wx, g)  # (nz, ny, nx, 3): one small product per row
    out[..., 0] += (axes[0] * (inv[0] - 1.0))[None, None, :]
    return np.asarray(out, dtype=np.float64)


def _warp(template: Template, names: tuple[str, ...], deformation: Deformation, grid: ModelGrid) -> list[F32]:
    """Template channels warped onto ``grid`` (linear interpolation), as float32 fractions in [0, 1].

    Works in slabs of slices so that the float64 displacement field never exists for the whole grid at once.
    """
    nz, ny, nx = grid.shape
    out = [np.empty(grid.shape, dtype=np.float32) for _ in names]
    images = [template.image(name) for name in names]
    slab = max(1, 2_000_000 // (ny * nx))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        origin = grid.origin + np.array([0.0, 0.0, z0 * grid.spacing])
        field = displacement_on_grid(deformation, origin, grid.spacing, (z1 - z0, ny, nx))
        vector = sitk.GetImageFromArray(field, isVector=True)
        vector.SetOrigin(tuple(float(v) for v in origin))
        vector.SetSpacing((grid.spacing,) * 3)
        for image, target in zip(images, out, strict=True):
            warped = sitk.Warp(
                image,
                vector,
                sitk.sitkLinear,
                outputSize=vector.GetSize(),
                outputOrigin=vector.GetOrigin(),
                outputSpacing=vector.GetSpacing(),
                outputDirection=vector.GetDirection(),
            )
            np.multiply(sitk.GetArrayViewFromImage(warped), np.float32(1.0 / 255.0), out=target[z0:z1])
    return out


def _warp_brain_box(template: Template, names: tuple[str, ...], deformation: Deformation, grid: ModelGrid) -> list[F32]:
    """Like _warp, but only over the part of the grid that can hold brain (the rest stays 0): the template brain's
    box, mapped to the subject and widened by the largest displacement, down to the bottom (the spinal cord)."""
    low, high = template.brain_box
    c, s = deformation.centre, deformation.scale
    reach = float(np.abs(deformation.field).max()) + 2.0 * grid.spacing
    low_s = c + s * (low - c) - reach
    high_s = c + s * (high - c) + reach
    lo = np.clip(np.floor((low_s - grid.origin) / grid.spacing).astype(int), 0, None)
    hi = np.minimum(np.ceil((high_s - grid.origin) / grid.spacing).astype(int) + 1, grid.shape[::-1])
    lo[2] = 0  # the cord runs down to the bottom of the model
    sub = ModelGrid(
        origin=grid.origin + lo * grid.spacing,
        spacing=grid.spacing,
        shape=(hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]),
    )
    out = []
    for part in _warp(template, names, deformation, sub):
        full = np.zeros(grid.shape, dtype=np.float32)
        full[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = part
        out.append(full)
    return out


def _smooth_random(rng: np.random.Generator, shape: tuple[int, ...], knots: int, low: float, high: float) -> F32:
    """Smooth random field of ``shape`` from a knots^3 uniform grid (cubic, then linear upsampling)."""
    coarse = rng.uniform(low, high, size=(knots,) * 3)
    mid = ndimage.zoom(coarse, 16.0 / knots, order=3, mode="nearest", grid_mode=True)
    factors = [n / m for n, m in zip(shape, mid.shape, strict=True)]
    return np.asarray(ndimage.zoom(mid, factors, order=1, mode="nearest", grid_mode=True), dtype=np.float32)


def _head_fields(
    template: Template, deformation: Deformation, grid: ModelGrid, rng: np.random.Generator
) -> tuple[F32, F32, F32]:
    """Brain fraction, head-depth coordinate q and depth below the skin: built on a coarse grid, then upsampled."""
    coarse_spacing = max(2.0, grid.spacing)
    factor = grid.spacing / coarse_spacing
    coarse = ModelGrid(
        origin=grid.origin,
        spacing=coarse_spacing,
        shape=tuple(int(np.ceil(n * factor)) + 1 for n in grid.shape),  # type: ignore[arg-type]
    )
    (brain,) = _warp(template, ("brain",), deformation, coarse)
    hull = _closed_hull(ndimage.gaussian_filter(brain, 2.0 / coarse_spacing) > 0.4, coarse, radius_mm=12.0)
    sd = _signed_distance(hull, coarse)
    # Smooth per-subject thickness factor (0.8-1.25) of the layers outside the hull.
    thickness = np.exp(_smooth_random(rng, sd.shape, 5, np.log(0.8), np.log(1.25)))
    q = np.where(sd > 0, sd / thickness, sd).astype(np.float32)
    neck, face = _lower_head_depths(coarse, deformation)
    depth_out = _smooth_max(_smooth_max(SKIN_Q_MM - q, neck, 12.0), face, 12.0)
    return _upsample(brain, coarse, grid), _upsample(q, coarse, grid), _upsample(depth_out, coarse, grid)


def _signed_distance(mask: npt.NDArray[np.bool_], grid: ModelGrid) -> F32:
    """Signed distance (mm) to the mask surface: positive outside, negative inside."""
    image = grid.image(mask.astype(np.uint8))
    signed = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.asarray(sitk.GetArrayFromImage(signed), dtype=np.float32)


def _closed_hull(mask: npt.NDArray[np.bool_], grid: ModelGrid, *, radius_mm: float) -> npt.NDArray[np.bool_]:
    """Morphological closing with a ball (dilate, then erode, by distance), holes filled: the skull's inner surface
    follows the brain's convex outline and bridges fissures and notches narrower than twice the radius."""
    dilated = _signed_distance(mask, grid) <= radius_mm
    closed = _signed_distance(dilated, grid) <= -radius_mm
    return np.asarray(ndimage.binary_fill_holes(closed | mask), dtype=np.bool_)


def _smooth_max(a: F32, b: F32, k: float) -> F32:
    """max(a, b) rounded over a band of width k where the two are close (a fillet where surfaces meet)."""
    h = np.clip(k - np.abs(a - b), 0.0, None)
    return np.asarray(np.maximum(a, b) + h * h / (4.0 * k), dtype=np.float32)


def _lower_head_depths(grid: ModelGrid, deformation: Deformation) -> tuple[F32, F32]:
    """Depth (mm, negative outside) inside the neck and inside the lower face, from template-relative shapes.

    Neck: elliptic cylinder (semi-axes 52 mm LR, 58 mm AP) centred 15 mm behind the brain centre, up to 40 mm below
    it. Face: ellipsoid (55 LR, 48 AP, 50 SI mm) in front of and below the brain centre (LPS: -y is anterior).
    """
    x, y, z = (grid.axis(d) - deformation.centre[d] for d in range(3))
    s = deformation.scale
    mean = float(np.mean(s))
    ex = (x / (52.0 * s[0]))[None, None, :]
    ey = ((y - 15.0 * s[1]) / (58.0 * s[1]))[None, :, None]
    radial = (1.0 - np.sqrt(ex**2 + ey**2)) * 52.0 * mean
    neck = np.minimum(radial, (-40.0 * s[2] - z)[:, None, None])
    fx = (x / (55.0 * s[0]))[None, None, :]
    fy = ((y + 60.0 * s[1]) / (48.0 * s[1]))[None, :, None]
    fz = ((z + 50.0 * s[2]) / (50.0 * s[2]))[:, None, None]
    face = (1.0 - np.sqrt(fx**2 + fy**2 + fz**2)) * 48.0 * mean
    return np.asarray(neck, dtype=np.float32), np.asarray(face, dtype=np.float32)


def _upsample(array: F32, coarse: ModelGrid, grid: ModelGrid) -> F32:
    """Linear interpolation of a coarse-grid map onto the model grid (same origin)."""
    if coarse.spacing == grid.spacing and coarse.shape == grid.shape:
        return array
    if coarse.spacing == 2.0 * grid.spacing and np.allclose(coarse.origin, grid.origin):
        return _upsample_by_two(array, grid.shape)
    image = sitk.Resample(
        coarse.image(array), grid.reference(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)


def _upsample_by_two(array: F32, shape: tuple[int, int, int]) -> F32:
    """Separable linear upsampling by exactly 2 (out[2i] = a[i], out[2i+1] = (a[i] + a[i+1]) / 2), cropped."""
    for axis in range(3):
        n = array.shape[axis]
        size = list(array.shape)
        size[axis] = 2 * n - 1
        out = np.empty(size, dtype=np.float32)

        def along(part: slice, axis: int = axis) -> tuple[slice, ...]:
            index = [slice(None)] * 3
            index[axis] = part
            return tuple(index)

        out[along(slice(0, None, 2))] = array
        odd = out[along(slice(1, None, 2))]
        np.add(array[along(slice(0, -1))], array[along(slice(1, None))], out=odd)
        odd *= np.float32(0.5)
        array = out
    return np.ascontiguousarray(array[: shape[0], : shape[1], : shape[2]])


def build_anatomy(rng: np.random.Generator, *, spacing: float, deformation: bool) -> Anatomy:
    """Warp the template into one subject and build its head on a model grid of the given spacing (mm)."""
    template = load_template()
    deform = _random_deformation(rng, template, enabled=deformation)
    grid = _model_grid(template, deform.scale, spacing)
    brain, q, depth_out = _head_fields(template, deform, grid, rng)
    gm, wm = _warp_brain_box(template, ("gm", "wm"), deform, grid)
    np.minimum(gm, brain, out=gm)
    np.minimum(wm, brain - gm, out=wm)
    csf = np.maximum(brain - gm - wm, 0.0).astype(np.float32)
    logger.debug("Model grid %s at %.1f mm, scale %s", grid.shape, spacing, np.round(deform.scale, 3))
    return Anatomy(
        grid=grid,
        deformation=deform,
        centre=template.centre.copy(),
        brain=brain,
        gm=gm,
        wm=wm,
        csf=csf,
        q=q,
        depth_out=depth_out,
    )
