"""Lesions: solid and ring-enhancing metastases, glioblastoma with necrosis and oedema, non-enhancing lesions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from training.phantom.anatomy import Anatomy
from training.phantom.composition import Box, Component
from training.phantom.options import DIAMETER_RANGE_MM, LesionSpec
from training.phantom.structures import soft_inside

__all__ = ["LESION_PART_CODES", "Lesion", "lesion_components", "place_lesions"]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: Codes of truth/lesion_parts.nii.gz.
LESION_PART_CODES: dict[str, int] = {"enhancing": 1, "necrosis": 2, "oedema": 3, "nonenhancing": 4}

# Enhancing tumour concentration at the standard dose (mM): extracellular volume fraction 0.3-0.5 of a leaky
# tumour times ~1 mM plasma (Tofts & Kermode 1991), drawn per lesion.
_CONCENTRATION_MM = {"metastasis": (0.25, 0.5), "ring_metastasis": (0.3, 0.5), "glioblastoma": (0.3, 0.55)}


@dataclass(frozen=True)
class Lesion:
    """One lesion in subject space; shapes are ellipsoids with a smooth, seeded irregular boundary.

    Normalized radius rho = |axes^-1 R^T (p - centre)| / radius * (1 + irregularity(p)): the lesion is rho <= 1,
    necrosis rho <= necrosis_ratio, oedema (white matter only) rho <= oedema_ratio.
    """

    id: int
    kind: str
    centre: F64
    radius_mm: float
    axes: F64
    rotation: F64
    necrosis_ratio: float
    oedema_ratio: float
    concentration_mm: float
    irregularity: float
    frequencies: F64
    phases: F64

    @property
    def enhancing(self) -> bool:
        return self.kind != "nonenhancing"

    @property
    def outer_radius_mm(self) -> float:
        return self.radius_mm * float(self.axes.max()) * max(1.0, self.oedema_ratio) * (1.0 + self.irregularity)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for params.json (centre in subject coordinates; the caller adds scanner coordinates)."""
        return {
            "id": self.id,
            "type": self.kind,
            "centre_subject_mm": self.centre.tolist(),
            "radius_mm": self.radius_mm,
            "diameter_mm": 2.0 * self.radius_mm,
            "axes": self.axes.tolist(),
            "enhancing": self.enhancing,
            "necrosis_ratio": self.necrosis_ratio,
            "oedema_radius_mm": self.radius_mm * self.oedema_ratio if self.oedema_ratio > 1.0 else 0.0,
            "concentration_mM_standard_dose": self.concentration_mm,
            "tissues": {
                "enhancing": "tumour",
                "necrosis": "necrosis",
                "oedema": "oedema",
                "nonenhancing": "nonenhancing",
            },
        }


def _draw_kinds(rng: np.random.Generator, count: int | None, kinds: tuple[str, ...]) -> list[LesionSpec]:
    n = int(rng.integers(0, 4)) if count is None else count
    return [LesionSpec(kinds[int(rng.integers(len(kinds)))]) for _ in range(n)]  # type: ignore[arg-type]


def place_lesions(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    specs: tuple[LesionSpec, ...] | None,
    count: int | None,
    kinds: tuple[str, ...],
    avoid: list[Component] | None = None,
) -> list[Lesion]:
    """Draw lesion sizes, shapes and positions (non-overlapping, inside the parenchyma) from the seed.

    Metastases favour the grey-white junction, glioblastoma and non-enhancing lesions the white matter. Lesions
    keep clear of the ``avoid`` compartments (the normally enhancing structures), so that every voxel labelled as a
    lesion shows that lesion's own enhancement, or none.
    """
    requested = list(specs) if specs is not None else _draw_kinds(rng, count, kinds)
    gm, wm, q = anatomy.gm.ravel(), anatomy.wm.ravel(), anatomy.q.ravel()
    tissue = gm + wm
    junction = np.flatnonzero((tissue > 0.9) & (gm > 0.25) & (gm < 0.75))
    white = np.flatnonzero((wm > 0.8) & (tissue > 0.95))
    depth = -q
    obstacles = _obstacle_tree(anatomy, avoid or [])
    lesions: list[Lesion] = []
    for number, spec in enumerate(requested, start=1):
        low, high = DIAMETER_RANGE_MM[spec.kind]
        radius = (spec.diameter_mm if spec.diameter_mm is not None else float(rng.uniform(low, high))) / 2.0
        axes = np.concatenate([[1.0], np.sort(rng.uniform(0.8, 1.0, size=2))[::-1]])
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        necrosis = float(rng.uniform(0.4, 0.7)) if spec.kind in ("ring_metastasis", "glioblastoma") else 0.0
        if spec.kind == "glioblastoma":
            oedema = float(rng.uniform(1.5, 2.2))
        elif spec.kind in ("metastasis", "ring_metastasis") and radius >= 2.0:
            oedema = 1.0 + float(rng.uniform(0.3, 1.5))
        else:
            oedema = 0.0
        conc_range = _CONCENTRATION_MM.get(spec.kind)
        concentration = float(rng.uniform(*conc_range)) if conc_range else 0.0
        irregularity = {"glioblastoma": 0.15, "nonenhancing": 0.1}.get(spec.kind, 0.05)
        frequencies = rng.normal(0.0, 2.0, size=(4, 3))
        phases = rng.uniform(0.0, 2.0 * np.pi, size=4)
        pool = junction if spec.kind in ("metastasis", "ring_metastasis") else white
        centre = _pick_centre(anatomy, rng, pool, depth, radius, oedema, lesions, obstacles)
        if centre is None:
            logger.warning("No room for lesion %d (%s, %.1f mm); left out", number, spec.kind, 2 * radius)
            continue
        lesions.append(
            Lesion(
                id=len(lesions) + 1,
                kind=spec.kind,
                centre=centre,
                radius_mm=radius,
                axes=axes,
                rotation=rotation,
                necrosis_ratio=necrosis,
                oedema_ratio=oedema,
                concentration_mm=concentration,
                irregularity=irregularity,
                frequencies=frequencies,
                phases=phases,
            )
        )
    return lesions


def _pick_centre(
    anatomy: Anatomy,
    rng: np.random.Generator,
    pool: npt.NDArray[np.intp],
    depth: npt.NDArray[np.float32],
    radius: float,
    oedema: float,
    placed: list[Lesion],
    obstacles: cKDTree | None,
) -> F64 | None:
    """Rejection-sample a centre deep enough for the lesion, clear of the lesions already placed and of the
    enhancing structures."""
    grid = anatomy.grid
    if pool.size == 0:
        return None
    for _ in range(400):
        flat = int(pool[int(rng.integers(pool.size))])
        if depth[flat] < radius + 3.0:
            continue
        index = np.array(np.unravel_index(flat, grid.shape))[None, :]
        centre: F64 = grid.coordinates(index)[0]
        outer = radius * max(1.0, oedema) * 1.15
        if obstacles is not None and obstacles.query(centre)[0] < radius * 1.2 + 2.0 * grid.spacing + 2.0:
            continue
        if all(np.linalg.norm(centre - other.centre) > outer + other.outer_radius_mm + 2.0 for other in placed):
            return centre
    return None


def _obstacle_tree(anatomy: Anatomy, components: list[Component]) -> cKDTree | None:
    """Nearest-neighbour index of every model voxel that holds part of a component."""
    points = []
    for c in components:
        index = np.argwhere(c.fraction > 0.01) + np.array([s.start for s in c.box])
        points.append(anatomy.grid.coordinates(index))
    if not points or not sum(len(p) for p in points):
        return None
    return cKDTree(np.concatenate(points))


def _rho(lesion: Lesion, points: F64, *, phase_shift: float = 0.0) -> F64:
    local = (points - lesion.centre) @ lesion.rotation / lesion.axes
    radius = np.linalg.norm(local, axis=1) / lesion.radius_mm
    bumps = np.sin(local @ lesion.frequencies.T / lesion.radius_mm + lesion.phases + phase_shift).mean(axis=1)
    return np.asarray(radius * (1.0 + lesion.irregularity * bumps), dtype=np.float64)


def lesion_components(anatomy: Anatomy, lesion: Lesion) -> list[Component]:
    """Rasterize one lesion on the model grid; oedema is carved out of white matter (``anatomy.wm`` changes)."""
    grid = anatomy.grid
    h = grid.spacing
    reach = lesion.outer_radius_mm + 2.0 * h
    lo = np.floor((lesion.centre - reach - grid.origin) / h).astype(int)
    hi = np.ceil((lesion.centre + reach - grid.origin) / h).astype(int) + 1
    shape_xyz = np.array(grid.shape[::-1])
    lo, hi = np.clip(lo, 0, shape_xyz), np.clip(hi, 0, shape_xyz)
    box: Box = (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    shape = tuple(s.stop - s.start for s in box)
    zz, yy, xx = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    points = grid.coordinates(np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1))
    rho = _rho(lesion, points)
    r = lesion.radius_mm

    def inside(limit: float, rho_: F64 = rho, edge: float = h) -> F32:
        return soft_inside((limit - rho_) * r, edge).reshape(shape)

    name = f"lesion{lesion.id}"
    parts: list[Component] = []
    if lesion.kind == "nonenhancing":
        core = inside(1.0, edge=max(h, 2.0))  # infiltrative: a softer edge
        parts.append(Component(f"{name}_nonenhancing", "nonenhancing", 0.0, box, core, lesion_id=lesion.id))
    else:
        whole = inside(1.0)
        necrosis = np.zeros(shape, dtype=np.float32)
        if lesion.necrosis_ratio > 0:
            rho_core = _rho(lesion, points, phase_shift=1.7) if lesion.kind == "glioblastoma" else rho
            necrosis = np.minimum(inside(lesion.necrosis_ratio, rho_core), whole)
            parts.append(Component(f"{name}_necrosis", "necrosis", 0.0, box, necrosis, lesion_id=lesion.id))
        enhancing = np.clip(whole - necrosis, 0.0, 1.0).astype(np.float32)
        parts.append(
            Component(f"{name}_enhancing", "tumour", lesion.concentration_mm, box, enhancing, lesion_id=lesion.id)
        )
        core = whole
    if lesion.oedema_ratio > 1.0:
        wm = anatomy.wm[box]
        oedema = (wm * np.clip(inside(lesion.oedema_ratio) - core, 0.0, 1.0)).astype(np.float32)
        wm -= oedema
        parts.append(Component(f"{name}_oedema", "oedema", 0.0, box, oedema, replacing=False, lesion_id=lesion.id))
    return parts
