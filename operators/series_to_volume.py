"""Series to volume: every selected series -> a float32 SimpleITK image in LPS, classic and enhanced MR alike."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset

from operators.errors import InconsistentGeometryError
from operators.fast_header import raw_numbers, raw_text
from operators.pixel_reader import check_decodable, native_dtype, number_of_frames, read_pixels, rows_columns
from operators.roles import Role
from operators.study import Instance, Selection, Series, SliceRef, Volume

__all__ = [
    "MAX_TILT_DEGREES",
    "SPACING_TOLERANCE",
    "build_volume",
    "build_volumes",
    "frame_geometry",
]

logger = logging.getLogger(__name__)

#: Largest relative deviation of one slice gap from the mean gap before a slice counts as missing.
SPACING_TOLERANCE = 0.05
#: Largest angle (degrees) between the slice stacking direction and the slice normal (gantry tilt / shear).
MAX_TILT_DEGREES = 0.1
_ORIENTATION_TOLERANCE = 1e-3


@dataclass
class FrameGeometry:
    """Where one 2D frame of a series lies: source instance and frame, position, orientation, pixel layout."""

    instance: Instance
    frame_number: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float


def _functional(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """Value of `keyword` in functional group `sequence` for frame `index` (per-frame first, then shared)."""
    for groups_keyword, item_index in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if not groups or len(groups) <= item_index:
            continue
        group = groups[item_index]
        macro = group.get(sequence)
        if macro and keyword in macro[0]:
            return macro[0][keyword].value
    return None


def _floats(value: Any, count: int, what: str, series: Series) -> np.ndarray:
    if value is None:
        raise InconsistentGeometryError(
            f"{series.label}: {what} is missing; cannot place the slices in space.",
            series_instance_uid=series.series_instance_uid,
            attribute=what,
            expected=f"{count} numbers",
            found="nothing",
        )
    arr = np.asarray([float(v) for v in value], dtype=np.float64)
    if arr.size != count:
        raise InconsistentGeometryError(
            f"{series.label}: {what} has {arr.size} values, expected {count}.",
            series_instance_uid=series.series_instance_uid,
            attribute=what,
            expected=f"{count} numbers",
            found=str(list(arr)),
        )
    return arr


def frame_geometry(series: Series) -> list[FrameGeometry]:
    """Geometry of every frame of every instance of a series, in file order.

    Raises
    ------
    InconsistentGeometryError
        When an instance lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.
    """
    frames: list[FrameGeometry] = []
    for instance in series.instances:
        ds = instance.dataset
        rows, columns = rows_columns(ds)
        if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
            for index in range(number_of_frames(ds)):
                slope = _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
                intercept = _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
                spacing = _floats(
                    _functional(ds, index, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", series
                )
                frames.append(
                    FrameGeometry(
                        instance=instance,
                        frame_number=index + 1,
                        position=_floats(
                            _functional(ds, index, "PlanePositionSequence", "ImagePositionPatient"),
                            3,
                            "ImagePositionPatient",
                            series,
                        ),
                        orientation=_floats(
                            _functional(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"),
                            6,
                            "ImageOrientationPatient",
                            series,
                        ),
                        pixel_spacing=(float(spacing[0]), float(spacing[1])),
                        rows=rows,
                        columns=columns,
                        slope=float(slope) if slope not in (None, "") else 1.0,
                        intercept=float(intercept) if intercept not in (None, "") else 0.0,
                    )
                )
            continue
        spacing = _floats(raw_numbers(ds, 0x00280030), 2, "PixelSpacing", series)
        slope, intercept = raw_numbers(ds, 0x00281053), raw_numbers(ds, 0x00281052)
        frames.append(
            FrameGeometry(
                instance=instance,
                frame_number=None,
                position=_floats(raw_numbers(ds, 0x00200032), 3, "ImagePositionPatient", series),
                orientation=_floats(raw_numbers(ds, 0x00200037), 6, "ImageOrientationPatient", series),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=rows,
                columns=columns,
                slope=slope[0] if slope else 1.0,
                intercept=intercept[0] if intercept else 0.0,
            )
        )
    return frames


def _geometry_error(series: Series, attribute: str, expected: str, found: str, hint: str = "") -> None:
    message = f"{series.label}: {attribute}: expected {expected}, found {found}." + (f" {hint}" if hint else "")
    raise InconsistentGeometryError(
        message,
        series_instance_uid=series.series_instance_uid,
        attribute=attribute,
        expected=expected,
        found=found,
    )


def _check_uniform(series: Series, frames: list[FrameGeometry]) -> None:
    sizes = sorted({(f.rows, f.columns) for f in frames})
    if len(sizes) > 1:
        _geometry_error(series, "Rows/Columns", f"one size for all slices ({sizes[0]})", f"sizes {sizes}")
    first = frames[0]
    orientations = np.array([f.orientation for f in frames])
    _check_same(
        series,
        frames,
        np.any(np.abs(orientations - first.orientation) > _ORIENTATION_TOLERANCE, axis=1),
        "ImageOrientationPatient",
        f"the same orientation for all slices ({list(np.round(first.orientation, 4))})",
        lambda frame: list(np.round(frame.orientation, 4)),
        "The series mixes orientations (e.g. a 3-plane localizer).",
    )
    spacings = np.array([f.pixel_spacing for f in frames])
    _check_same(
        series,
        frames,
        np.any(np.abs(spacings - spacings[0]) > 1e-4 * np.abs(spacings[0]) + 1e-6, axis=1),
        "PixelSpacing",
        f"the same pixel spacing for all slices ({list(first.pixel_spacing)})",
        lambda frame: list(frame.pixel_spacing),
    )


def _check_same(
    series: Series,
    frames: list[FrameGeometry],
    differs: np.ndarray,
    attribute: str,
    expected: str,
    value: Callable[[FrameGeometry], Any],
    hint: str = "",
) -> None:
    """Raise the geometry error for the first frame whose ``attribute`` differs from the first frame's."""
    bad = np.flatnonzero(differs)
    if bad.size:
        frame = frames[int(bad[0])]
        _geometry_error(series, attribute, expected, f"{value(frame)} in {_frame_label(frame)}", hint)


def _frame_label(frame: FrameGeometry) -> str:
    label = f"instance {frame.instance.sop_instance_uid}"
    return label + (f" frame {frame.frame_number}" if frame.frame_number is not None else "")


def _axes(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal row direction, column direction and slice normal from ImageOrientationPatient."""
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    col = orientation[3:] - np.dot(orientation[3:], row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def sort_frames(series: Series, frames: list[FrameGeometry]) -> tuple[list[FrameGeometry], float]:
    """Sort frames along the slice normal and check that they form one regular 3D stack.

    Returns
    -------
    tuple
        The sorted frames and the slice spacing (mm).

    Raises
    ------
    InconsistentGeometryError
        When there is a single slice, mixed sizes or orientations, several frames at one position (more than one
        volume), a missing slice (non-uniform spacing) or a tilted / sheared stack.
    """
    if not frames:
        _geometry_error(series, "NumberOfFrames", "at least 2 slices", "no image")
    if len(frames) == 1:
        _geometry_error(
            series,
            "NumberOfFrames",
            "at least 2 slices for a 3D volume",
            "a single slice",
            "A 2D image is not a volume.",
        )
    _check_uniform(series, frames)
    _, _, normal = _axes(frames[0].orientation)
    distances = np.array([f.position for f in frames]) @ normal
    order = np.argsort(distances, kind="stable")
    frames = [frames[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        positions = len(np.unique(np.round(distances, 3)))
        _geometry_error(
            series,
            "ImagePositionPatient",
            "one slice per position",
            f"{len(frames)} slices at {positions} positions",
            "The series holds more than one volume (echoes, time points or diffusion directions).",
        )
    spacing = float((distances[-1] - distances[0]) / (len(frames) - 1))
    worst = int(np.argmax(np.abs(gaps - spacing)))
    if abs(gaps[worst] - spacing) > SPACING_TOLERANCE * spacing:
        _geometry_error(
            series,
            "ImagePositionPatient",
            f"uniform slice spacing ({float(np.median(gaps)):.3f} mm)",
            f"a gap of {gaps[worst]:.3f} mm between slices {worst} and {worst + 1} of {len(frames)}",
            "A slice is missing or the series holds several stacks.",
        )
    stack = frames[-1].position - frames[0].position
    along = float(np.dot(stack, normal))
    lateral = float(np.linalg.norm(stack - along * normal))
    tilt = float(np.degrees(np.arctan2(lateral, abs(along))))
    if tilt > MAX_TILT_DEGREES:
        tag = frames[0].instance.dataset.get("GantryDetectorTilt")
        _geometry_error(
            series,
            "ImagePositionPatient",
            "slices stacked along the slice normal (no gantry tilt)",
            f"a stack tilted by {tilt:.2f} degrees" + (f" (GantryDetectorTilt {tag})" if tag not in (None, "") else ""),
            "Tilted or sheared stacks are not supported: resample the series first.",
        )
    return frames, spacing


def _direction(frames: list[FrameGeometry]) -> np.ndarray:
    row, col, normal = _axes(frames[0].orientation)
    return np.column_stack([row, col, normal])


def _stored_stack(series: Series, frames: list[FrameGeometry]) -> np.ndarray | None:
    """Stored values of all frames in slice order, read straight into one integer array; None if not possible."""
    dtypes = {native_dtype(i.dataset) for i in series.instances}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    if dtype is None:
        return None
    rows, columns = frames[0].rows, frames[0].columns
    stack = np.empty((len(frames), rows, columns), dtype=dtype)
    slots: dict[str, list[tuple[int, int]]] = {}
    for k, frame in enumerate(frames):
        slots.setdefault(frame.instance.sop_instance_uid, []).append((k, (frame.frame_number or 1) - 1))
    for instance in series.instances:
        targets = slots.get(instance.sop_instance_uid, [])
        direct = stack[targets[0][0]] if len(targets) == 1 and number_of_frames(instance.dataset) == 1 else None
        pixels = read_pixels(series, instance, direct)
        if pixels.dtype != dtype:
            return None
        if direct is None or not np.shares_memory(pixels, direct):
            for k, index in targets:
                stack[k] = pixels[index]
    return stack


def _voxels(series: Series, frames: list[FrameGeometry]) -> sitk.Image:
    """The float32 image of the sorted frames, rescale slope and intercept applied (geometry not yet set)."""
    rescales = {(f.slope, f.intercept) for f in frames}
    uniform = len(rescales) == 1 and next(iter(rescales))[0] != 0.0
    stack = _stored_stack(series, frames) if uniform else None
    if stack is not None:
        slope, intercept = rescales.pop()
        stored = sitk.GetImageFromArray(stack)
        if slope == 1.0 and intercept == 0.0:
            return sitk.Cast(stored, sitk.sitkFloat32)
        rescale = sitk.ShiftScaleImageFilter()
        rescale.SetShift(intercept / slope)
        rescale.SetScale(slope)
        rescale.SetOutputPixelType(sitk.sitkFloat32)
        return rescale.Execute(stored)
    rows, columns = frames[0].rows, frames[0].columns
    voxels = np.empty((len(frames), rows, columns), dtype=np.float32)
    by_instance: dict[str, np.ndarray] = {}
    for k, frame in enumerate(frames):
        uid = frame.instance.sop_instance_uid
        if uid not in by_instance:
            by_instance.clear()
            by_instance[uid] = read_pixels(series, frame.instance)
        source = by_instance[uid][(frame.frame_number or 1) - 1]
        if frame.slope != 1.0 or frame.intercept != 0.0:
            voxels[k] = source.astype(np.float64) * frame.slope + frame.intercept
        else:
            voxels[k] = source
    return sitk.GetImageFromArray(voxels)


def build_volume(series: Series, role: Role | None = None) -> Volume:
    """Rebuild one series as a 3D float32 image with its geometry (LPS), rescale slope / intercept applied.

    Slices are sorted along the slice normal; index k of the image's third axis is ``Volume.slices[k]``.

    Parameters
    ----------
    series:
        A series from the study loader (classic single-frame or Enhanced MR multi-frame, one or many files).
    role:
        The role the series plays, recorded in the volume.

    Raises
    ------
    InconsistentGeometryError
        When the series is not one regular 3D stack: a single slice, mixed orientations or sizes, several
        volumes at the same positions, a missing slice (non-uniform spacing) or a tilted stack.
    UnsupportedTransferSyntaxError
        When no installed decoder handles the transfer syntax of one of its instances.
    UnsupportedImageError
        When the series holds colour images.
    CorruptFileError
        When a file is truncated or its pixel data cannot be decoded.
    """
    frames, spacing = sort_frames(series, frame_geometry(series))
    for instance in series.instances:
        check_decodable(series, instance)
    image = _voxels(series, frames)
    if raw_text(frames[0].instance.dataset, 0x00280004) == "MONOCHROME1":
        logger.warning("%s is MONOCHROME1; values are kept as stored (not inverted)", series.label)
    image.SetOrigin(tuple(float(v) for v in frames[0].position))
    image.SetSpacing((frames[0].pixel_spacing[1], frames[0].pixel_spacing[0], spacing))
    image.SetDirection(tuple(float(v) for v in _direction(frames).ravel()))
    slices = [
        SliceRef(
            sop_class_uid=f.instance.sop_class_uid,
            sop_instance_uid=f.instance.sop_instance_uid,
            frame_number=f.frame_number,
            dataset=f.instance.dataset,
        )
        for f in frames
    ]
    logger.info(
        "Built %s%s: %dx%dx%d, spacing %.3f x %.3f x %.3f mm",
        series.label,
        f" as {role.value}" if role else "",
        frames[0].columns,
        frames[0].rows,
        len(frames),
        frames[0].pixel_spacing[1],
        frames[0].pixel_spacing[0],
        spacing,
    )
    return Volume(role=role, series=series, image=image, slices=slices)


def build_volumes(selection: Selection, roles: Iterable[Role] | None = None) -> dict[Role, Volume]:
    """Build the volume of every selected role (or of the roles named).

    Raises
    ------
    InconsistentGeometryError, UnsupportedTransferSyntaxError, UnsupportedImageError, CorruptFileError
        As `build_volume`, for the first series that fails.
    """
    wanted = list(roles) if roles is not None else list(selection.roles)
    return {role: build_volume(selection.roles[role], role) for role in wanted if role in selection.roles}
