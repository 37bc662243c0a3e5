"""Normally enhancing structures: dural venous sinuses, falx, choroid plexus and pituitary, placed from the template."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from training.phantom.anatomy import Anatomy, displacement_on_grid
from training.phantom.composition import Box, Component
from training.phantom.tissues import STANDARD_DOSE_CONCENTRATION_MM

__all__ = ["normal_structures", "soft_inside"]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

# Landmarks in MNI152 2009a template coordinates (LPS mm: +x left, +y posterior, +z superior), read off the
# template: the torcula (confluence of sinuses) behind the tentorium, the vein of Galen under the splenium, the
# atria of the lateral ventricles, the sella turcica under the hypothalamus.
_STRAIGHT_SINUS = (np.array([0.0, 46.0, 8.0]), np.array([0.0, 98.0, -2.0]))
_CHOROID_CENTRES = (np.array([28.0, 40.0, 12.0]), np.array([-28.0, 40.0, 12.0]))
_CHOROID_AXES = np.array([5.0, 9.0, 5.0])
_PITUITARY_CENTRE = np.array([0.0, 2.0, -34.0])
_PITUITARY_AXES = np.array([6.0, 5.0, 4.0])
# Eyes (vitreous: water-like, CSF values) in the orbits below the frontal lobes, wrapped in orbital fat.
_EYE_CENTRES = (np.array([32.0, -58.0, -40.0]), np.array([-32.0, -58.0, -40.0]))
_EYE_RADIUS = 11.5
_ORBIT_CENTRES = (np.array([30.0, -47.0, -40.0]), np.array([-30.0, -47.0, -40.0]))
_ORBIT_AXES = np.array([15.0, 22.0, 14.0])


def soft_inside(distance_inside_mm: F64, spacing: float) -> npt.NDArray[np.float32]:
    """Partial-volume fraction from a signed distance (positive inside): a linear ramp one voxel wide."""
    return np.clip(distance_inside_mm / spacing + 0.5, 0.0, 1.0).astype(np.float32)


def _box(anatomy: Anatomy, low_t: F64, high_t: F64, margin: float = 8.0) -> tuple[Box, F64, F64]:
    """Model-grid box covering a template-space box; returns it with the template coordinates of its voxels.

    Returns
    -------
    (box, template points (N, 3), subject points (N, 3)); N = number of voxels of the box, in C order.
    """
    grid, d = anatomy.grid, anatomy.deformation
    corners = np.array(
        [[x, y, z] for x in (low_t[0], high_t[0]) for y in (low_t[1], high_t[1]) for z in (low_t[2], high_t[2])]
    )
    subject = d.centre + d.scale * (corners - d.centre)
    lo = np.floor((subject.min(axis=0) - margin - grid.origin) / grid.spacing).astype(int)
    hi = np.ceil((subject.max(axis=0) + margin - grid.origin) / grid.spacing).astype(int) + 1
    shape_xyz = np.array(grid.shape[::-1])
    lo, hi = np.clip(lo, 0, shape_xyz), np.clip(hi, 0, shape_xyz)
    box: Box = (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    shape = tuple(s.stop - s.start for s in box)
    origin = grid.origin + np.array([box[2].start, box[1].start, box[0].start]) * grid.spacing
    displacement = displacement_on_grid(d, origin, grid.spacing, shape)
    axes = [origin[k] + np.arange(shape[2 - k]) * grid.spacing for k in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    return box, points + displacement.reshape(-1, 3), points


def _component(
    anatomy: Anatomy,
    name: str,
    tissue: str,
    low_t: F64,
    high_t: F64,
    fraction_of: Callable[[F64, Box], npt.NDArray[np.float32]],
) -> Component | None:
    box, template_points, _ = _box(anatomy, low_t, high_t)
    shape = tuple(s.stop - s.start for s in box)
    if 0 in shape:
        return None
    fraction = fraction_of(template_points, box).reshape(shape).astype(np.float32)
    if not fraction.any():
        logger.warning("Structure %s fell outside the model grid; left out", name)
        return None
    conc = STANDARD_DOSE_CONCENTRATION_MM.get(tissue, 0.0)
    return Component(name=name, tissue=tissue, concentration_mm=conc, box=box, fraction=fraction)


def normal_structures(anatomy: Anatomy) -> list[Component]:
    """Venous sinuses (superior sagittal, transverse, straight), falx, choroid plexus and pituitary.

    Sinuses sit in the dural shell found by the head-depth coordinate q of the subject, so they follow its skull;
    their course along the head comes from template landmarks mapped through the subject's deformation.
    """
    h = anatomy.grid.spacing
    q = anatomy.q

    def sss(p: F64, box: Box) -> npt.NDArray[np.float32]:
        qq = q[box].ravel().astype(np.float64)
        half_width = 0.8 + 0.55 * np.clip(qq - 0.5, 0.0, None)  # triangular cross-section, base at the skull
        along = (p[:, 2] > 0.0) | (p[:, 1] > 80.0)
        shell = soft_inside(np.minimum(qq - 0.5, 6.0 - qq), h)
        return np.where(along & (p[:, 1] > -62.0), soft_inside(half_width - np.abs(p[:, 0]), h) * shell, 0.0)

    def transverse(p: F64, box: Box) -> npt.NDArray[np.float32]:
        qq = q[box].ravel().astype(np.float64)
        centre_z = -0.2 * np.abs(p[:, 0])
        shell = soft_inside(np.minimum(qq - 0.5, 5.5 - qq), h)
        course = soft_inside(np.minimum(3.5 - np.abs(p[:, 2] - centre_z), 60.0 - np.abs(p[:, 0])), h)
        return np.where(p[:, 1] > 55.0, shell * course, 0.0)

    def straight(p: F64, box: Box) -> npt.NDArray[np.float32]:
        a, b = _STRAIGHT_SINUS
        t = np.clip((p - a) @ (b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        distance = np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)
        return soft_inside(2.5 - distance, h)

    def falx(p: F64, box: Box) -> npt.NDArray[np.float32]:
        tissue_free = 1.0 - (anatomy.gm[box] + anatomy.wm[box]).ravel()
        lower_edge = 33.0 - 0.006 * (p[:, 1] - 3.0) ** 2
        sheet = soft_inside(np.minimum(0.6 - np.abs(p[:, 0]), p[:, 2] - lower_edge), h)
        inside = q[box].ravel() < 1.5
        return np.where(inside, sheet * np.clip(tissue_free, 0.0, 1.0), 0.0)

    def ellipsoids(
        centres: tuple[F64, ...], axes: F64, deep_only: bool
    ) -> Callable[[F64, Box], npt.NDArray[np.float32]]:
        def fraction(p: F64, box: Box) -> npt.NDArray[np.float32]:
            total = np.zeros(len(p), dtype=np.float32)
            for c in centres:
                rho = np.linalg.norm((p - c) / axes, axis=1)
                total += soft_inside((1.0 - rho) * axes.min(), h)
            if deep_only:  # choroid plexus floats in ventricular CSF only
                total *= np.clip(anatomy.csf[box].ravel(), 0.0, 1.0) * (q[box].ravel() < -8.0)
            return np.minimum(total, 1.0)

        return fraction

    def eyes(p: F64, box: Box) -> npt.NDArray[np.float32]:
        total = np.zeros(len(p), dtype=np.float32)
        for c in _EYE_CENTRES:
            total += soft_inside(_EYE_RADIUS - np.linalg.norm(p - c, axis=1), h)
        return np.asarray(np.minimum(total, 1.0), dtype=np.float32)

    def orbital_fat(p: F64, box: Box) -> npt.NDArray[np.float32]:
        orbit = ellipsoids(_ORBIT_CENTRES, _ORBIT_AXES, False)(p, box)
        return np.asarray(np.clip(orbit - eyes(p, box), 0.0, 1.0), dtype=np.float32)

    eye_low = np.array([-46.0, -72.0, -54.0])
    eye_high = np.array([46.0, -22.0, -25.0])
    specs: list[tuple[str, str, F64, F64, Callable[[F64, Box], npt.NDArray[np.float32]]]] = [
        ("eyes", "csf", eye_low, eye_high, eyes),
        ("orbital_fat", "fat", eye_low, eye_high, orbital_fat),
        ("superior_sagittal_sinus", "blood", np.array([-9.0, -72.0, -15.0]), np.array([9.0, 115.0, 100.0]), sss),
        ("transverse_sinuses", "blood", np.array([-64.0, 50.0, -32.0]), np.array([64.0, 118.0, 12.0]), transverse),
        ("straight_sinus", "blood", np.array([-5.0, 40.0, -7.0]), np.array([5.0, 103.0, 13.0]), straight),
        ("falx", "dura", np.array([-3.0, -72.0, -10.0]), np.array([3.0, 110.0, 95.0]), falx),
        (
            "choroid_plexus",
            "choroid_plexus",
            np.array([-36.0, 28.0, 4.0]),
            np.array([36.0, 52.0, 20.0]),
            ellipsoids(_CHOROID_CENTRES, _CHOROID_AXES, True),
        ),
        (
            "pituitary",
            "pituitary",
            _PITUITARY_CENTRE - _PITUITARY_AXES - 2,
            _PITUITARY_CENTRE + _PITUITARY_AXES + 2,
            ellipsoids((_PITUITARY_CENTRE,), _PITUITARY_AXES, False),
        ),
    ]
    out = []
    for name, tissue, low, high, fraction_of in specs:
        component = _component(anatomy, name, tissue, low, high, fraction_of)
        if component is not None:
            out.append(component)
    return out
