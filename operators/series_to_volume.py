"""Series to volume: every selected series -> a float32 SimpleITK image in LPS, classic and enhanced MR alike."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword

from operators.errors import InconsistentGeometryError
from operators.fast_header import raw_text
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
#: ImageOrientationPatient: row and column cosines must be unit vectors and orthogonal to within this.
_UNIT_TOLERANCE = 1e-2
_ORTHOGONALITY_TOLERANCE = 1e-2
#: Limits on what a series may claim before any pixel is read: a 1024 x 1024 x 1024 MR is already extreme.
MAX_MATRIX = 2048
MAX_FRAMES = 4096
MAX_PIXEL_SPACING_MM = 50.0


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


def _functional(series: Series, ds: Dataset, index: int, sequence: str, keyword: str, where: str) -> Any:
    """Value of `keyword` in functional group `sequence` for frame `index` (per-frame first, then shared)."""
    try:
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
                raw = getattr(macro[0].get_item(tag_for_keyword(keyword)), "value", None)
                return raw if isinstance(raw, bytes) else macro[0][keyword].value
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        _geometry_error(series, f"{sequence}/{keyword}", "a readable value", f"{type(exc).__name__}: {exc} in {where}")
    return None


def _floats(value: Any, count: int, what: str, series: Series, where: str = "") -> np.ndarray:
    """``count`` finite numbers from a DS value (text, number or list); an input error names what was found."""
    place = f" in {where}" if where else ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None or (isinstance(value, str) and not value.strip("\x00 ")):
        raise InconsistentGeometryError(
            f"{series.label}: {what} is missing{place}; cannot place the slices in space.",
            series_instance_uid=series.series_instance_uid,
            attribute=what,
            expected=f"{count} numbers",
            found=f"nothing{place}",
        )
    items = value.split("\\") if isinstance(value, str) else list(value) if _is_sequence_value(value) else [value]
    try:
        arr = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        _geometry_error(series, what, f"{count} numbers", f"{_shown(value)}{place}")
    if arr.size != count:
        _geometry_error(series, what, f"{count} numbers", f"{arr.size} values {_shown(value)}{place}")
    if not np.all(np.isfinite(arr)):
        _geometry_error(series, what, f"{count} finite numbers", f"{_shown(value)}{place}")
    return arr


def _is_sequence_value(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _shown(value: Any) -> str:
    text = "\\".join(str(v) for v in value) if _is_sequence_value(value) else str(value)
    return "'" + (text if len(text) <= 60 else text[:57] + "...") + "'"


def _scalar(value: Any, default: float, what: str, series: Series, where: str) -> float:
    """An optional finite number (RescaleSlope, RescaleIntercept): ``default`` when absent."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None or (isinstance(value, str) and not value.strip("\x00 ")):
        return default
    if _is_sequence_value(value):
        value = value[0] if len(value) else None
        if value is None:
            return default
    return float(_floats(value, 1, what, series, where)[0])


def _raw(ds: Dataset, tag: int) -> Any:
    """The value of a top-level attribute without converting it (the raw text for a raw element)."""
    element = ds.get_item(tag)
    return None if element is None else element.value


def _check_frame(series: Series, frame: FrameGeometry) -> None:
    """Values one frame must have to be placed in space and read: positive spacing, a valid orientation, a
    non-zero rescale slope, a matrix inside the limits."""
    where = _frame_label(frame)
    if min(frame.pixel_spacing) <= 0 or max(frame.pixel_spacing) > MAX_PIXEL_SPACING_MM:
        _geometry_error(
            series,
            "PixelSpacing",
            f"two positive spacings up to {MAX_PIXEL_SPACING_MM:g} mm",
            f"{list(frame.pixel_spacing)} in {where}",
        )
    row, col = frame.orientation[:3], frame.orientation[3:]
    norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if min(norms) < 1e-6 or abs(float(np.dot(row, col))) > _ORTHOGONALITY_TOLERANCE * norms[0] * norms[1]:
        _geometry_error(
            series,
            "ImageOrientationPatient",
            "two orthogonal direction cosines (row and column)",
            f"{list(np.round(frame.orientation, 4))} in {where}",
        )
    if any(abs(n - 1.0) > _UNIT_TOLERANCE for n in norms):
        _geometry_error(
            series,
            "ImageOrientationPatient",
            "unit direction cosines",
            f"lengths {round(norms[0], 4)} and {round(norms[1], 4)} in {where}",
        )
    if frame.slope == 0.0:
        _geometry_error(series, "RescaleSlope", "a non-zero number", f"0 in {where}")
    if not (1 <= frame.rows <= MAX_MATRIX and 1 <= frame.columns <= MAX_MATRIX):
        _geometry_error(
            series,
            "Rows/Columns",
            f"1 to {MAX_MATRIX} pixels each",
            f"{frame.rows} x {frame.columns} in {where}",
        )


def frame_geometry(series: Series) -> list[FrameGeometry]:
    """Geometry of every frame of every instance of a series, in file order, each checked (see `_check_frame`).

    Raises
    ------
    InconsistentGeometryError
        When an instance lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing, or holds a value
        that is not a finite number, a non-positive spacing, an invalid orientation, a zero rescale slope or a
        matrix beyond the limits.
    """
    frames: list[FrameGeometry] = []
    for instance in series.instances:
        ds = instance.dataset
        rows, columns = _matrix(series, instance)
        label = f"instance {instance.sop_instance_uid}"
        if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
            count = _frame_count(series, instance)
            if not 1 <= count <= MAX_FRAMES:
                _geometry_error(series, "NumberOfFrames", f"1 to {MAX_FRAMES} frames", f"{count} in {label}")
            for index in range(count):
                frames.append(_enhanced_frame(series, instance, index, rows, columns))
                _check_frame(series, frames[-1])
            continue
        count = _frame_count(series, instance)
        if count != 1:
            _geometry_error(series, "NumberOfFrames", "1 in a single-frame MR image", f"{count} in {label}")
        spacing = _floats(_raw(ds, 0x00280030), 2, "PixelSpacing", series, label)
        frames.append(
            FrameGeometry(
                instance=instance,
                frame_number=None,
                position=_floats(_raw(ds, 0x00200032), 3, "ImagePositionPatient", series, label),
                orientation=_floats(_raw(ds, 0x00200037), 6, "ImageOrientationPatient", series, label),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=rows,
                columns=columns,
                slope=_scalar(_raw(ds, 0x00281053), 1.0, "RescaleSlope", series, label),
                intercept=_scalar(_raw(ds, 0x00281052), 0.0, "RescaleIntercept", series, label),
            )
        )
        _check_frame(series, frames[-1])
    return frames


def _enhanced_frame(series: Series, instance: Instance, index: int, rows: int, columns: int) -> FrameGeometry:
    """One frame of an Enhanced MR instance, from its functional groups."""
    where = f"instance {instance.sop_instance_uid} frame {index + 1}"

    def functional(sequence: str, keyword: str) -> Any:
        return _functional(series, instance.dataset, index, sequence, keyword, where)

    spacing = _floats(functional("PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", series, where)
    position = functional("PlanePositionSequence", "ImagePositionPatient")
    orientation = functional("PlaneOrientationSequence", "ImageOrientationPatient")
    transform = "PixelValueTransformationSequence"
    return FrameGeometry(
        instance=instance,
        frame_number=index + 1,
        position=_floats(position, 3, "ImagePositionPatient", series, where),
        orientation=_floats(orientation, 6, "ImageOrientationPatient", series, where),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=rows,
        columns=columns,
        slope=_scalar(functional(transform, "RescaleSlope"), 1.0, "RescaleSlope", series, where),
        intercept=_scalar(functional(transform, "RescaleIntercept"), 0.0, "RescaleIntercept", series, where),
    )


def _frame_count(series: Series, instance: Instance) -> int:
    """NumberOfFrames of an instance, read as an integer (an input error when it is not one)."""
    try:
        return number_of_frames(instance.dataset)
    except (TypeError, ValueError):
        _geometry_error(
            series,
            "NumberOfFrames",
            "an integer",
            f"{_shown(_raw(instance.dataset, 0x00280008))} in instance {instance.sop_instance_uid}",
        )


def _matrix(series: Series, instance: Instance) -> tuple[int, int]:
    """Rows and Columns of an instance, read as integers (an input error when they are not)."""
    try:
        return rows_columns(instance.dataset)
    except (TypeError, ValueError):
        _geometry_error(
            series,
            "Rows/Columns",
            "two integers",
            f"{_shown(_raw(instance.dataset, 0x00280010))} x {_shown(_raw(instance.dataset, 0x00280011))} "
            f"in instance {instance.sop_instance_uid}",
        )


def _geometry_error(series: Series, attribute: str, expected: str, found: str, hint: str = "") -> NoReturn:
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
