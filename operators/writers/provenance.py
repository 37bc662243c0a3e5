"""Which instances of the series a model consumed each synthetic slice comes from (Source Image Sequence).

A synthetic slice is computed from the ``t1_pre`` slice at the same place and from the other inputs of the model
(e.g. the low-dose T1) after registration onto the ``t1_pre`` grid. The Source Image Sequence of the General Image
module (PS3.3 C.7.6.1) identifies "the set of Image SOP Class/Instance pairs of the Images that were used to derive
this Image", so each slice references the ``t1_pre`` slice it replaces and, for every other input, the slices whose
slab overlaps the ``t1_pre`` slice's slab once registration is undone; the Referenced Series Sequence (Common
Instance Reference, PS3.3 C.12.2) lists the same instances by series.

The overlap is measured along the line through the centre of the ``t1_pre`` slice, perpendicular to it: the
``t1_pre`` slab (its position plus or minus half the slice spacing) is mapped into the other series' space by the
registration transform and compared with that series' own slabs along its normal. A slice thus names at most
``ceil(t_pre / t_other) + 1`` instances of each other series, whatever the size of the series, instead of all of
them. What it leaves out, on purpose: the in-plane extent of a slice tilted against the other stack (a sagittal
``t1_pre`` slice crosses every slice of an axial low-dose series; only those at its centre are named) and the
wider neighbourhood the model's local statistics look at (a 16-voxel Gaussian). The Derivation Description names
every series the model used, so nothing used goes unmentioned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from operators.errors import InconsistentGeometryError
from operators.roles import Role
from operators.study import Series, SliceRef

if TYPE_CHECKING:
    from operators.registration import RegisteredStudy
    from operators.study import Volume

logger = logging.getLogger(__name__)

__all__ = ["InputSeries", "as_input_series", "input_series", "overlapping_slices", "series_labels"]

#: Slabs that only touch (within this fraction of the smaller slice spacing) do not overlap.
_TOUCH = 1e-3


@dataclass(frozen=True)
class InputSeries:
    """A series the model consumed besides the ``t1_pre``: its role and how registration aligned it.

    ``transform`` maps points of the ``t1_pre`` space (LPS, mm) to points of this series' space, the SimpleITK
    resampling convention of :class:`operators.registration.RegistrationResult`; None means the series was not
    moved (its scanner coordinates are taken as they are).
    """

    series: Series
    role: Role | None = None
    transform: sitk.Transform | None = None

    @property
    def label(self) -> str:
        """``<SeriesInstanceUID> (<role>)``, or the UID alone when the role is unknown."""
        uid = self.series.series_instance_uid
        return f"{uid} ({self.role.value})" if self.role is not None else uid


def as_input_series(sources: Sequence[Series | InputSeries]) -> list[InputSeries]:
    """Accept plain series (not moved, role unknown) beside :class:`InputSeries`, at the writers' boundary.

    Raises
    ------
    TypeError
        When an item is neither a ``Series`` nor an ``InputSeries``.
    """
    converted: list[InputSeries] = []
    for source in sources:
        if isinstance(source, InputSeries):
            converted.append(source)
        elif isinstance(source, Series):
            converted.append(InputSeries(source))
        else:
            raise TypeError(f"other_sources must hold Series or InputSeries items. Found {type(source).__name__}.")
    return converted


def input_series(registered: RegisteredStudy, roles: Iterable[Role]) -> list[InputSeries]:
    """The series a model consumed besides the ``t1_pre``: exactly ``roles`` (the manifest's ``required_roles``).

    Series registered for other reasons (the acquired standard dose that training registers as its target, a T2
    the model ignores) are left out, so that no output claims to derive from them.
    """
    inputs: list[InputSeries] = []
    for role in roles:
        if role == Role.T1_PRE or role not in registered.volumes:
            continue
        result = registered.results.get(role)
        transform = result.transform if result is not None else None
        inputs.append(InputSeries(registered.volumes[role].series, role=role, transform=transform))
    return inputs


def series_labels(source: Volume, others: Sequence[InputSeries]) -> list[str]:
    """``UID (role)`` of the ``t1_pre`` and of every other input, for Derivation Description and reports."""
    role = source.role.value if source.role is not None else Role.T1_PRE.value
    return [f"{source.series.series_instance_uid} ({role})", *(other.label for other in others)]


@dataclass(frozen=True)
class _Stack:
    """The slices of a series sorted along its normal: references, depth of each slice centre, slab half-width."""

    refs: list[SliceRef]
    depths: np.ndarray
    normal: np.ndarray
    half: float


def _stack(series: Series) -> _Stack | None:
    from operators.series_to_volume import frame_geometry, sort_frames

    try:
        frames, spacing = sort_frames(series, frame_geometry(series))
    except InconsistentGeometryError as exc:
        logger.warning("%s is not one stack; no slice of it is named per synthetic slice: %s", series.label, exc)
        return None
    row, column = frames[0].orientation[:3], frames[0].orientation[3:]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    refs = [
        SliceRef(f.instance.sop_class_uid, f.instance.sop_instance_uid, f.frame_number, f.instance.dataset)
        for f in frames
    ]
    depths = np.array([float(np.dot(f.position, normal)) for f in frames])
    return _Stack(refs=refs, depths=depths, normal=normal, half=spacing / 2.0)


def overlapping_slices(source: Volume, other: InputSeries) -> list[list[SliceRef]]:
    """For each slice of ``source`` (the ``t1_pre``), the slices of ``other`` that overlap it after registration.

    See the module docstring for what "overlap" means here. A ``t1_pre`` slice outside the other series'
    coverage gets an empty list (the model saw no data of that series there).
    """
    stack = _stack(other.series)
    n_slices = source.image.GetSize()[2]
    if stack is None:
        return [[] for _ in range(n_slices)]
    image = source.image
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    half_pre = image.GetSpacing()[2] / 2.0
    offset = direction[:, 2] * half_pre
    centre_x, centre_y = (image.GetSize()[0] - 1) / 2.0, (image.GetSize()[1] - 1) / 2.0
    tolerance = _TOUCH * min(half_pre, stack.half) * 2.0
    starts, ends = stack.depths - stack.half, stack.depths + stack.half
    overlaps: list[list[SliceRef]] = []
    for k in range(n_slices):
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((centre_x, centre_y, float(k))))
        ends_mapped = [centre - offset, centre + offset]
        if other.transform is not None:
            ends_mapped = [np.asarray(other.transform.TransformPoint(tuple(float(v) for v in p))) for p in ends_mapped]
        low, high = sorted(float(np.dot(p, stack.normal)) for p in ends_mapped)
        if high - low > 2.0 * tolerance:
            low, high = low + tolerance, high - tolerance  # slabs that only touch do not overlap
        else:  # the slab is seen edge-on: the slices that contain its centre
            low = high = (low + high) / 2.0
        selected = np.nonzero((starts <= high) & (ends >= low))[0]
        overlaps.append([stack.refs[int(j)] for j in selected])
    return overlaps
