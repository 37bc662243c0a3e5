"""Voxel composition of a subject (tissue fractions plus sparse compartments) and rendering of any per-tissue value."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from training.phantom.anatomy import HEAD_LAYERS, OUTER_LAYERS, SKULL_Q_MM, Anatomy
from training.phantom.tissues import STANDARD_DOSE_CONCENTRATION_MM

__all__ = ["Component", "Composition", "ValueOf"]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Box = tuple[slice, slice, slice]
#: value(tissue name, gadolinium concentration in mM) -> per-voxel quantity of a pure voxel of that tissue.
ValueOf = Callable[[str, float], float]


@dataclass
class Component:
    """A sparse compartment inside a box of the model grid: a lesion part, a vessel, the choroid plexus...

    ``concentration_mm`` is its gadolinium concentration at the standard dose (scaled by the dose when rendered).
    A ``replacing`` component displaces whatever the voxel held before (fractions of everything else shrink by
    its fraction); a non-replacing one (oedema) was already carved out of white matter by its builder.
    """

    name: str
    tissue: str
    concentration_mm: float
    box: Box
    fraction: F32
    replacing: bool = True
    lesion_id: int = 0


@dataclass
class Composition:
    """Everything needed to render a subject-space map of any tissue property on the model grid."""

    anatomy: Anatomy
    components: list[Component] = field(default_factory=list)
    _brain_idx: npt.NDArray[np.intp] | None = None
    _brain_fracs: tuple[F32, F32, F32] | None = None
    _inner: tuple[npt.NDArray[np.intp], F32, F32] | None = None
    _outer: tuple[npt.NDArray[np.intp], F32, F32] | None = None
    _keep: tuple[Box, F32] | None = None

    def finalize(self) -> None:
        """Precompute compact index sets and the displacement factor once all components are added."""
        a = self.anatomy
        brain = a.brain.ravel()
        self._brain_idx = np.flatnonzero(brain > 0)
        self._brain_fracs = tuple(m.ravel()[self._brain_idx] for m in (a.gm, a.wm, a.csf))  # type: ignore[assignment]
        outside = 1.0 - brain
        q = a.q.ravel()
        depth = a.depth_out.ravel()
        ramp = a.grid.spacing
        inner = np.flatnonzero((outside > 0) & (q < SKULL_Q_MM))
        outer = np.flatnonzero((outside > 0) & (q >= SKULL_Q_MM) & (depth > -ramp))
        self._inner = (inner, q[inner], outside[inner])
        self._outer = (outer, depth[outer], outside[outer])
        replacing = [c for c in self.components if c.replacing]
        if replacing:
            low = np.min([[s.start for s in c.box] for c in replacing], axis=0)
            high = np.max([[s.stop for s in c.box] for c in replacing], axis=0)
            union = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
            occupancy = np.zeros(tuple(hi - lo for lo, hi in zip(low, high, strict=True)), dtype=np.float32)
            for c in replacing:
                occupancy[_shift(c.box, low)] += c.fraction
            over = occupancy > 1.0
            if over.any():  # overlapping compartments: share the voxel in proportion
                for c in replacing:
                    local = occupancy[_shift(c.box, low)]
                    c.fraction = np.where(local > 1.0, c.fraction / np.maximum(local, 1e-6), c.fraction).astype(
                        np.float32
                    )
                np.minimum(occupancy, 1.0, out=occupancy)
            self._keep = (union, (1.0 - occupancy).astype(np.float32))  # type: ignore[assignment]

    def render(self, value_of: ValueOf, *, dose: float = 1.0) -> F32:
        """Map on the model grid of ``value_of(tissue, concentration)``, mixed by partial-volume fractions.

        Component concentrations are multiplied by ``dose`` (relative to standard); background tissues have none.
        Values are cached per (tissue, concentration) so each is evaluated once.
        """
        if self._brain_idx is None or self._brain_fracs is None or self._inner is None or self._outer is None:
            raise RuntimeError("Composition.finalize() must run before render().")
        cache: dict[tuple[str, float], float] = {}

        def value(tissue: str, concentration: float = 0.0) -> float:
            key = (tissue, concentration)
            if key not in cache:
                cache[key] = float(value_of(tissue, concentration))
            return cache[key]

        a = self.anatomy
        out = np.zeros(a.grid.shape, dtype=np.float32)
        flat = out.reshape(-1)
        gm, wm, csf = self._brain_fracs
        flat[self._brain_idx] = gm * value("gm") + wm * value("wm") + csf * value("csf")
        knots, values = self._layer_table(HEAD_LAYERS, value, dose, inner=True)
        idx, coord, weight = self._inner
        flat[idx] += weight * np.interp(coord, knots, values).astype(np.float32)
        knots, values = self._layer_table(OUTER_LAYERS, value, dose, inner=False)
        idx, coord, weight = self._outer
        flat[idx] += weight * np.interp(coord, knots, values).astype(np.float32)
        for c in self.components:
            if not c.replacing:
                out[c.box] += c.fraction * np.float32(value(c.tissue, c.concentration_mm * dose))
        if self._keep is not None:
            box, keep = self._keep
            out[box] *= keep
        for c in self.components:
            if c.replacing:
                out[c.box] += c.fraction * np.float32(value(c.tissue, c.concentration_mm * dose))
        return out

    def _layer_table(
        self, layers: tuple[tuple[str, float], ...], value: Callable[[str, float], float], dose: float, *, inner: bool
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Piecewise-linear value of the layered head versus depth, box-filtered over one model voxel.

        Inner layers run outward in q from the brain hull (CSF first); outer layers run inward in depth below the
        skin (air before 0). Averaging each layer over a window of one voxel gives the partial-volume mixture.
        """
        width = self.anatomy.grid.spacing
        bounds = [-1e6 if inner else 0.0] + [b for _, b in layers]
        vals = [value(t, STANDARD_DOSE_CONCENTRATION_MM.get(t, 0.0) * dose) for t, _ in layers]
        if not inner:  # air outside the skin
            bounds = [-1e6, *bounds]
            vals = [0.0, *vals]
        edges = np.array(bounds[1:-1])
        knots = np.unique(np.concatenate([edges - width / 2, edges + width / 2, [bounds[1] - 50.0, bounds[-2] + 50.0]]))
        lo, hi = knots - width / 2, knots + width / 2
        table = np.zeros_like(knots)
        for (start, stop), v in zip(itertools.pairwise(bounds), vals, strict=True):
            table += v * np.clip(np.minimum(hi, stop) - np.maximum(lo, start), 0.0, None) / width
        return knots, table


def _shift(box: Box, low: npt.NDArray[np.int_]) -> Box:
    return tuple(slice(s.start - int(o), s.stop - int(o)) for s, o in zip(box, low, strict=True))  # type: ignore[return-value]
